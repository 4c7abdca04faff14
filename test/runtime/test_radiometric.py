"""Radiometric thermal scale (K per count, offset) and the saturated-input warning (issue 13): a real
0.04 K/count FLIR frame read at the default 0.01 K/count became all zeros with no warning."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ms_perception.core.frames import Frame
from ms_perception.core.preprocess import SaturationMonitor, ThermalNormalization, thermal_to_unit
from ms_perception.demo import THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
from ms_perception.replay.bag import read_frames, write_bag

REPO = Path(__file__).resolve().parents[2]


def test_radiometric_window_by_hand():
    t = ThermalNormalization()                      # 0.01 K/count, -10..50 degC: the old count window
    assert t.raw_min == pytest.approx(26315.0) and t.raw_max == pytest.approx(32315.0)
    t4 = ThermalNormalization(kelvin_per_count=0.04)
    assert t4.raw_min == pytest.approx(263.15 / 0.04) and t4.raw_max == pytest.approx(323.15 / 0.04)   # 6578.75, 8078.75
    optris = ThermalNormalization(kelvin_per_count=0.1, offset_kelvin=173.15)   # (count - 1000) / 10 degC
    assert optris.counts(20.0) == pytest.approx(1200.0) and optris.counts(-100.0) == pytest.approx(0.0)
    assert ThermalNormalization(raw_min=100, raw_max=200, kelvin_per_count=0.04).raw_min == 100   # explicit counts win
    frame = Frame(np.full((4, 4), 7500, np.uint16), 0, "mono16")    # 300 K at 0.04 K/count = 26.85 degC
    assert thermal_to_unit(frame, t).max() == 0.0                    # read at 0.01 K: -198 degC, clipped
    assert thermal_to_unit(frame, t4)[0, 0] == pytest.approx((7500 - 6578.75) / 1500)   # 0.61417
    with pytest.raises(ValueError, match="kelvin_per_count must be > 0"):
        ThermalNormalization(kelvin_per_count=0.0)


def test_saturation_warns_once_after_a_run_of_clipped_frames_and_names_the_fix():
    norm = ThermalNormalization()
    mon = SaturationMonitor(fraction=0.9, frames=5)
    cold = Frame(np.full((64, 80), 7500, np.uint16), 0, "mono16")
    fine = Frame(np.full((64, 80), 29315, np.uint16), 0, "mono16")   # 20 degC
    unit_cold, unit_fine = thermal_to_unit(cold, norm), thermal_to_unit(fine, norm)
    assert [mon.update(cold, unit_cold, norm) for _ in range(4)] == [""] * 4
    assert mon.update(fine, unit_fine, norm) == ""                   # the run is broken: start again
    out = [mon.update(cold, unit_cold, norm) for _ in range(7)]
    assert out[:4] == [""] * 4 and out[5:] == ["", ""]               # the 5th frame of a run, once
    w = out[4]
    assert "100% of the pixels at the low end" in w and "median count 7500 = -198.1 degC at 0.01 K/count" in w
    assert "26.9 degC at 0.04" in w and "thermal_kelvin_per_count" in w
    assert mon.saturated_frames == 11
    pct = ThermalNormalization(mode="percentile")                    # a per-frame stretch cannot saturate
    assert SaturationMonitor(frames=1).update(cold, thermal_to_unit(cold, pct), pct) == ""


@pytest.fixture(scope="module")
def bag_0_04(tmp_path_factory):
    """The demo's recording with its thermal camera in a 0.04 K/count mode (the same scene)."""
    out = tmp_path_factory.mktemp("radiometric")
    bag, cal, _ = make_demo_bag(out, pairs=8, seed=4, sequence_length=4)
    records = []
    for stream, f in read_frames(bag, VISIBLE_TOPIC, THERMAL_TOPIC):
        if stream == "thermal":
            f = Frame(np.round(f.data.astype(np.float64) / 4).astype(np.uint16), f.stamp_ns, f.encoding, f.frame_id)
        records.append((VISIBLE_TOPIC if stream == "visible" else THERMAL_TOPIC, f, f.stamp_ns + 1000))
    return bag, write_bag(out / "bag004", sorted(records, key=lambda r: r[2]), storage="mcap"), cal


def replay(bag, cal, *extra):
    r = subprocess.run([sys.executable, "-m", "ms_perception.cli", "replay", str(bag), "--calibration", str(cal),
                        "--json", *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_replay_warns_on_a_wrong_scale_and_the_scale_option_fixes_it(bag_0_04):
    original, bag, cal = bag_0_04
    rep, err = replay(bag, cal)
    assert rep["pairs"] == 8 and rep["thermal_saturated_pairs"] == 8
    assert err.count("warning: thermal input saturated") == 1 and "thermal_kelvin_per_count" in err
    assert len(rep["warnings"]) == 1
    fixed, err = replay(bag, cal, "--thermal-kelvin-per-count", "0.04")
    assert fixed["thermal_saturated_pairs"] == 0 and fixed["warnings"] == [] and "warning" not in err
    ref, _ = replay(original, cal)
    # the same scene at 0.04 instead of 0.01 K/count: the detector sees (almost) the same thermal image
    assert abs(fixed["detections"] - ref["detections"]) <= max(1, ref["detections"] // 10)


def test_saturation_reads_about_5000_pixels_of_any_camera():
    """Every k-th row and column with k = max(4, sqrt(pixels / 5120)): 80x64 of a 320x256 and of a
    640x512 frame. A 640x512 frame whose left 92.5 % of columns sit below the window (592 of 640)
    is saturated (74 of the 80 sampled columns), one with 85 % (544 columns: 68 of 80) is not."""
    from ms_perception.core.preprocess import _sample_stride
    assert [_sample_stride(s) for s in ((256, 320), (512, 640), (1024, 1280), (24, 32))] == [4, 8, 16, 4]
    norm = ThermalNormalization()
    for cold_cols, want in ((592, 1), (544, 0)):
        a = np.full((512, 640), 29315, np.uint16)
        a[:, :cold_cols] = 7500
        mon = SaturationMonitor(fraction=0.9, frames=1)
        mon.update(Frame(a, 0, "mono16"), None, norm)
        assert mon.saturated_frames == want
