"""The fused thermal input (preprocess.thermal_input, issue 16): the raw image warped once and
windowed through a table, against the earlier order (window the whole frame, then warp); the
saturation monitor read on raw values; the one-pass finite check."""
from __future__ import annotations

import numpy as np
import pytest

from ms_perception.core.frames import Frame
from ms_perception.core.postprocess import ModelOutputError, check_finite
from ms_perception.core.preprocess import (
    Letterbox,
    SaturationMonitor,
    ThermalNormalization,
    thermal_input,
    thermal_to_unit,
    warp_thermal,
)


def _old(frame, norm, m, lb, out_hw):
    """The earlier order: window the whole frame to [0, 1] floats, warp, then 8 bits."""
    return np.clip(np.rint(warp_thermal(thermal_to_unit(frame, norm), m, lb, out_hw) * 255), 0, 255).astype(np.uint8)


def test_window_table_equals_the_float_window_on_every_count():
    """Without a warp the table path is the float arithmetic exactly, for all 65536 counts (below,
    inside and above the window), at both common radiometric scales."""
    counts = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    lb = Letterbox.fit((256, 256), (256, 256))
    for norm in (ThermalNormalization(), ThermalNormalization(kelvin_per_count=0.04),
                 ThermalNormalization(raw_min=1000, raw_max=1255)):
        f = Frame(counts, 0, "mono16")
        got = thermal_input(f, norm, np.eye(3), lb, (256, 256))
        np.testing.assert_array_equal(got, _old(f, norm, np.eye(3), lb, (256, 256)))
    # hand values, window 1000..1255 counts: 1000 -> 0, 1128 -> 128, 1255 -> 255, 999 -> 0, 2000 -> 255
    n = ThermalNormalization(raw_min=1000, raw_max=1255)
    assert [int(n.lut16()[c]) for c in (999, 1000, 1128, 1255, 2000)] == [0, 0, 128, 255, 255]


def test_warping_the_raw_counts_first_changes_only_the_window_ends():
    """Camera 640x512 -> model grid 320x256 with a small homography (the synthetic rig's). Inside the
    window the two orders agree within one level (interpolating integer counts rounds them); where
    a pixel's neighbours straddle a window end, windowing after the interpolation differs, as a
    camera with fewer pixels would."""
    rng = np.random.default_rng(0)
    norm = ThermalNormalization()
    inside = rng.integers(int(norm.raw_min) + 50, int(norm.raw_max) - 50, (512, 640)).astype(np.uint16)
    hom = np.array([[1.01, 0.002, 3.0], [-0.003, 0.99, -2.0], [0, 0, 1.0]])
    lb = Letterbox.fit((512, 640), (256, 320))
    f = Frame(inside, 0, "mono16")
    got, old = thermal_input(f, norm, hom, lb, (256, 320)), _old(f, norm, hom, lb, (256, 320))
    assert got.shape == (256, 320) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - old).max() <= 1
    # a hot object far above the window beside cold background: the edge pixels differ, the rest agree
    scene = np.full((512, 640), int(norm.counts(20.0)), np.uint16)
    scene[100:300, 200:400] = int(norm.counts(200.0))
    f = Frame(scene, 0, "mono16")
    got, old = thermal_input(f, norm, hom, lb, (256, 320)), _old(f, norm, hom, lb, (256, 320))
    diff = np.abs(got.astype(int) - old)
    assert diff.max() > 1                      # at the object's border
    assert (diff > 1).mean() < 0.02            # only there
    assert got[100, 150] == old[100, 150] == 255 and got[10, 10] == old[10, 10]


def test_percentile_32fc1_and_mono8_paths():
    rng = np.random.default_rng(1)
    lb = Letterbox.fit((128, 160), (64, 80))
    c = rng.normal(20, 10, (128, 160)).astype(np.float32)
    c[5, 5] = np.nan
    for frame, norm in ((Frame(c, 0, "32FC1"), ThermalNormalization()),
                        (Frame(c, 0, "32FC1"), ThermalNormalization("percentile")),
                        (Frame(rng.integers(0, 65535, (128, 160)).astype(np.uint16), 0, "mono16"),
                         ThermalNormalization("percentile"))):
        np.testing.assert_array_equal(thermal_input(frame, norm, np.eye(3), lb, (64, 80)),
                                      _old(frame, norm, np.eye(3), lb, (64, 80)))   # the earlier order, exactly
    m8 = Frame(rng.integers(0, 256, (128, 160)).astype(np.uint8), 0, "mono8")
    got, old = thermal_input(m8, ThermalNormalization(), np.eye(3), lb, (64, 80)), _old(m8, ThermalNormalization(),
                                                                                        np.eye(3), lb, (64, 80))
    assert np.abs(got.astype(int) - old).max() <= 1     # OpenCV's 8-bit fixed-point interpolation rounds
    same = Letterbox.fit((64, 80), (64, 80))
    small = Frame(m8.data[:64, :80].copy(), 0, "mono8")
    np.testing.assert_array_equal(thermal_input(small, ThermalNormalization(), np.eye(3), same, (64, 80)), small.data)


def test_saturation_read_on_raw_values_equals_reading_the_window_output():
    norm = ThermalNormalization()
    rng = np.random.default_rng(2)
    c = rng.normal(20, 40, (64, 80)).astype(np.float32)
    c[::7, ::3] = np.nan
    frames = [Frame((rng.integers(0, 3, (64, 80)) * 20000).astype(np.uint16), 0, "mono16"),   # many at both ends
              Frame(np.full((64, 80), 7500, np.uint16), 0, "mono16"),                         # all below the window
              Frame(rng.integers(26000, 33000, (64, 80)).astype(np.uint16), 0, "mono16"),
              Frame(c, 0, "32FC1")]
    for f in frames:
        a, b = SaturationMonitor(fraction=0.0, frames=1), SaturationMonitor(fraction=0.0, frames=1)
        wa, wb = a.update(f, thermal_to_unit(f, norm), norm), b.update(f, None, norm)
        assert wa == wb and a.saturated_frames == b.saturated_frames
    cold = frames[1]
    mon = SaturationMonitor(fraction=0.9, frames=2)
    assert mon.update(cold, None, norm) == "" and "low end" in mon.update(cold, None, norm)


def test_the_one_pass_finite_check_still_names_every_bad_value():
    check_finite("ok", np.ones((10, 4), np.float32))
    big = np.full((1000, 4), 3e38, np.float32)          # finite, but its float32 sum overflows
    check_finite("big", big)
    for bad, n in ((np.nan, 1), (np.inf, 1), (-np.inf, 1)):
        a = np.ones((10, 4), np.float32)
        a[3, 2] = bad
        with pytest.raises(ModelOutputError, match=f"holds {n} NaN/inf"):
            check_finite("x", a)
    a = np.ones(8, np.float32)
    a[[1, 2]] = [np.inf, -np.inf]                       # their sum is NaN: still two bad values
    with pytest.raises(ModelOutputError, match="holds 2 NaN/inf"):
        check_finite("x", a)


def test_the_two_pass_range_check_finds_nan_inf_and_out_of_range_values():
    from ms_perception.core.postprocess import check_output
    check_output("p", np.array([0.0, 0.5, 1.0], np.float32), 0.0, 1.0)
    for bad, what in ((np.nan, "1 NaN/inf"), (np.inf, "1 NaN/inf"), (-np.inf, "1 NaN/inf"), (1.5, r"\[0, 1.5\]"),
                      (-0.25, r"\[-0.25, 1\]")):
        a = np.array([0.0, 0.5, 1.0], np.float32)
        a[1] = bad
        with pytest.raises(ModelOutputError, match=what):
            check_output("p", a, 0.0, 1.0)


def test_whole_factor_shrink_takes_resize_and_equals_the_warp():
    """640x512 -> 320x256 with the same field of view is a pure shrink: the warp hands it to
    cv2.resize, which must give what warpAffine gives (bit for bit on integer images)."""
    import cv2

    from ms_perception.core.preprocess import _integer_shrink, _is_identity, _warp
    rng = np.random.default_rng(3)
    c = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    for dtype, top in ((np.uint16, 65535), (np.uint8, 255), (np.float32, 1.0)):
        for kx, ky in ((2, 2), (3, 3), (4, 2), (8, 8)):
            dst = (24, 30)
            img = (rng.random((dst[0] * ky, dst[1] * kx)) * top).astype(dtype)
            m = np.diag([1 / kx, 1 / ky, 1.0])
            assert _integer_shrink(m, img.shape, dst)
            mc = np.linalg.inv(c) @ m @ c
            ref = cv2.warpAffine(img, mc[:2], (dst[1], dst[0]), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            got = _warp(img, m, dst, cv2.INTER_LINEAR)
            assert got.dtype == dtype and np.abs(got.astype(float) - ref.astype(float)).max() <= (1e-6 if dtype == np.float32 else 0)
    # not a whole-factor shrink: an offset, a 0.75 scale, an enlargement, a rotation, a size that does not match
    shifted = np.diag([0.5, 0.5, 1.0])
    shifted[0, 2] = 1.0
    rot = np.array([[0.5, 0.01, 0], [-0.01, 0.5, 0], [0, 0, 1]])
    assert not _integer_shrink(shifted, (48, 60), (24, 30))
    assert not _integer_shrink(np.diag([0.75, 0.75, 1]), (48, 60), (36, 45))
    assert not _integer_shrink(np.diag([2.0, 2.0, 1]), (24, 30), (48, 60))
    assert not _integer_shrink(rot, (48, 60), (24, 30))
    assert not _integer_shrink(np.diag([0.5, 0.5, 1]), (48, 60), (24, 29))
    for m in (np.eye(3), np.eye(3) + 1e-9, np.eye(3) + 1e-4, rot, shifted):
        assert _is_identity(m) == np.allclose(m, np.eye(3))


def test_registration_is_cached_per_calibration_not_served_stale():
    """thermal_input composes camera -> model once per (calibration, letterbox, sizes): a new
    homography (a recalibration at run time) gives its own warp, equal to the uncached order."""
    from ms_perception.core.preprocess import _registration
    rng = np.random.default_rng(3)
    f = Frame(rng.integers(20000, 40000, (48, 60), dtype=np.uint16), 0, "mono16")
    norm = ThermalNormalization(raw_min=20000, raw_max=40000)
    lb = Letterbox.fit((96, 120), (48, 64))       # letterboxed: 2 px of padding left and right
    shifted = np.array([[2.0, 0, 3.0], [0, 2.0, -2.0], [0, 0, 1]])
    outs = []
    for m in (np.diag([2.0, 2.0, 1.0]), shifted, np.diag([2.0, 2.0, 1.0])):
        got = thermal_input(f, norm, m, lb, (48, 64))      # the second diag: from the cache
        _registration.cache_clear()
        np.testing.assert_array_equal(got, thermal_input(f, norm, m.copy(), lb, (48, 64)))
        outs.append(got)
    assert not np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    key = np.diag([2.0, 2.0, 1.0]).tobytes()
    m, same, shrink = _registration(key, lb, (48, 64), (48, 60))
    assert not m.flags.writeable and not same and not shrink      # padded: not a plain shrink
    assert _registration(key, Letterbox.fit((96, 128), (48, 64)), (24, 32), (48, 64))[2]   # 64x48 -> 32x24: 2x
    # camera pixel (x 10, y 10) -> visible (20, 20) -> model (10 + 2 px padding on the left, 10)
    assert (m @ [10, 10, 1]).tolist() == [12.0, 10.0, 1.0]
