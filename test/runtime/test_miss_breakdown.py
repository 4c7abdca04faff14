"""bench/miss_breakdown.py: the demo's person miss rate split into slices, each evaluated with the
persons outside it as ignore regions (hand-checked values), and the per-modality visibility of
persons measured from the generator's masks."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("miss_breakdown", REPO / "bench" / "miss_breakdown.py")
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    return mb


def _result(boxes, scores, labels):
    return SimpleNamespace(detections=SimpleNamespace(boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
                                                      scores=np.asarray(scores, np.float64),
                                                      labels=np.asarray(labels, np.int64)))


def test_slices_ignore_the_persons_outside_them_and_count_misses_at_the_operating_point():
    mb = _module()
    p1 = {"box": [100, 100, 140, 200], "class_id": 1, "occlusion": 0, "crossover": True}
    p2 = {"box": [300, 100, 340, 200], "class_id": 1, "occlusion": 0, "crossover": False}
    p3 = {"box": [100, 100, 140, 200], "class_id": 1, "occlusion": 0, "crossover": False}
    car = {"box": [400, 300, 500, 360], "class_id": 3, "occlusion": 0}
    anns = [{"stamp_ns": 1, "condition": "night", "objects": [p1, p2, car]},
            {"stamp_ns": 2, "condition": "day", "objects": [p3]}]
    # label 0 = person in the model's own class list; the car detection (label 2) is not a person
    results = [(1, _result([[300, 100, 340, 200], [400, 300, 500, 360]], [0.9, 0.95], [0, 2])),
               (2, _result([[100, 100, 140, 200], [400, 300, 440, 400]], [0.8, 0.5], [0, 0])),
               (3, _result([[0, 0, 50, 100]], [0.99], [0]))]          # no annotation: not evaluated
    recs = mb.person_records(results, anns, person_label=0)
    assert [len(r[0]) for r in recs] == [2, 1] and [r[1] for r in recs] == ["night", "day"]
    slices = {"all": (None, None),
              "night, crossover": (("night",), lambda o, cond: o["crossover"]),
              "no crossover": (None, lambda o, cond: not o["crossover"]),
              "not night-and-crossover": (None, lambda o, cond: not (cond == "night" and o["crossover"])),
              "day": (("day",), None),
              "fog": (("fog",), None)}
    rows = {r["slice"]: r for r in mb.breakdown(recs, (512, 640), slices)}
    # all: by score 0.9 hit, 0.8 hit, 0.5 false alarm (1 FP in 2 images = 0.5 FPPI); p1 is never
    # found, so the miss rate is 1/3 at every reference FPPI: log-average 33.33 %
    assert rows["all"] == {"slice": "all", "images": 2, "persons": 3, "miss_rate": 33.33, "misses": 1,
                           "miss_share": 1.0}
    # only p1 counts; the detection on p2 (now an ignore region) is no false alarm
    assert rows["night, crossover"] == {"slice": "night, crossover", "images": 1, "persons": 1,
                                        "miss_rate": 100.0, "misses": 1, "miss_share": 1.0}
    # p2 and p3 both found before any false alarm: miss rate 0 at every FPPI point
    assert rows["no crossover"]["persons"] == 2 and rows["no crossover"]["miss_rate"] == 0.0
    assert rows["no crossover"]["misses"] == 0 and rows["no crossover"]["miss_share"] == 0.0
    # the filter sees the image's condition: p1 (night, crossover) ignored, p2 and p3 found
    assert rows["not night-and-crossover"]["persons"] == 2 and rows["not night-and-crossover"]["miss_rate"] == 0.0
    assert rows["day"]["images"] == 1 and rows["day"]["persons"] == 1 and rows["day"]["miss_rate"] == 0.0
    assert rows["fog"] == {"slice": "fog", "images": 0, "persons": 0, "miss_rate": None, "misses": 0,
                           "miss_share": None}


def test_the_unseeable_group_is_night_scene_crossover_only():
    """Dusk has street light enough to see a person the thermal image loses; an unlit night scene
    does not (the --contrast measurement in bench/RESULTS.md)."""
    mb = _module()
    assert mb._seeable({"crossover": True}, "night") is False
    assert mb._seeable({"crossover": True}, "dusk") and mb._seeable({"crossover": True}, "day")
    assert mb._seeable({"crossover": False}, "night")
    assert mb.SLICES["all but night-scene crossover"] == (None, mb._seeable)


def test_a_person_below_the_height_floor_is_no_regular_person_in_any_slice():
    mb = _module()
    small = {"box": [100, 100, 120, 140], "class_id": 1, "occlusion": 0, "crossover": False}   # 40 px
    recs = mb.person_records([(1, _result([], [], []))],
                             [{"stamp_ns": 1, "condition": "day", "objects": [small]}], person_label=0)
    row = mb.breakdown(recs, (512, 640), {"all": (None, None)})[0]
    assert row["persons"] == 0 and row["miss_rate"] is None and row["misses"] == 0


def test_modality_contrast_sees_crossover_persons_vanish_in_thermal():
    """A person at the background's temperature has a thermal signal-to-noise ratio near 0; a warm
    one at night stands far above the noise in thermal and below it in the dark visible image."""
    mb = _module()
    from ms_perception.synth.generator import SynthConfig
    rows = {}
    for cross in (0.0, 1.0):
        cfg = SynthConfig(width=320, height=256, night_fraction=1.0, dusk_fraction=0.0, fog_fraction=0.0,
                          crossover_fraction=cross, thermal_factor=1, sequence_length=4)
        for r in mb.modality_contrast(cfg, seed=3, pairs=4, height_floor=25.0):
            rows[(r["condition"], r["crossover"])] = r
    warm, cold = rows[("night", False)], rows[("night", True)]
    assert warm["persons"] > 0 and cold["persons"] > 0
    assert cold["thermal_snr_p10_p50_p90"][1] < 1.0 < warm["thermal_snr_p10_p50_p90"][1]
    assert warm["visible_snr_p10_p50_p90"][1] < 1.0   # the unlit scene: near the sensor noise
    assert cold["thermal_snr_p10_p50_p90"][0] <= cold["thermal_snr_p10_p50_p90"][1] <= cold["thermal_snr_p10_p50_p90"][2]
    # integrated over the person (Rose): every warm person stands out in thermal, none is below 5 in both
    assert warm["thermal_rose_k_p10_p50_p90"][0] > 5 and warm["below_rose_in_both"] == 0
    assert 0 <= cold["below_rose_in_both"] <= cold["persons"]


def test_the_script_names_a_missing_model_and_exits_2(tmp_path, capsys):
    mb = _module()
    assert mb.main(["--model", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx: no such model file" in capsys.readouterr().err


def test_the_demo_slices_reproduce_the_demos_own_miss_rates(tmp_path):
    """The 'all', day and night slices are the demo's own all / day / night figures (same bag,
    same pipeline); 40 pairs of seed 1 (a day scene and a night scene) keep it quick."""
    mb, seed, pairs = _module(), 1, 40
    from ms_perception.build import build_pipeline, default_model
    from ms_perception.demo import THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
    from ms_perception.replay.run import evaluate_persons, load_annotations, replay_bag
    recs, cfg = mb.replay_demo(default_model(), pairs, seed, tmp_path / "a")
    rows = {r["slice"]: r for r in mb.breakdown(recs, (cfg.height, cfg.width))}
    bag, cal, _ = make_demo_bag(tmp_path / "b", pairs, seed)
    pipe = build_pipeline({"model_path": str(default_model()), "score_threshold": 0.3, "calibration_file": str(cal),
                           "capture_enabled": False})
    _, results = replay_bag(bag, pipe, VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.02, queue_size=10, keep=True)
    mr = evaluate_persons(results, load_annotations(bag), pipe.engine.card.class_names.index("person"), (512, 640))
    assert set(mr) == {"all", "day", "night"} and mr["all"] > 1.0     # errors to tell apart
    assert rows["all"]["miss_rate"] == pytest.approx(mr["all"], abs=0.01)
    assert rows["day (day + fog)"]["miss_rate"] == pytest.approx(mr["day"], abs=0.01)
    assert rows["night (night + dusk)"]["miss_rate"] == pytest.approx(mr["night"], abs=0.01)


def test_rose_k_integrates_the_contrast_over_the_cameras_own_pixels():
    mb = _module()
    # 1,600 visible pixels at SNR 0.25: k = 0.25 * 40 = 10; the same person in a thermal image of half
    # the resolution covers 400 thermal pixels: k = 0.25 * 20 = 5, on Rose's threshold
    assert mb.rose_k(0.25, 1600) == pytest.approx(10.0)
    assert mb.rose_k(0.25, 1600, lin=2.0) == pytest.approx(5.0)
    assert mb.rose_k([0.1, 1.0], [100, 400]).tolist() == pytest.approx([1.0, 20.0])
    assert mb.ROSE_K == 5.0


def _found_and_faint(mb):
    """One night image: a person the detector finds and a faint one at (100, 100, 140, 200) it misses."""
    seen = {"box": [300.0, 100.0, 340.0, 200.0], "class_id": 1, "occlusion": 0, "crossover": False}
    faint = {"box": [100.0, 100.0, 140.0, 200.0], "class_id": 1, "occlusion": 0, "crossover": True}
    return mb.person_records([(1, _result([[300, 100, 340, 200]], [0.9], [0]))],
                             [{"stamp_ns": 1, "condition": "night", "objects": [seen, faint]}], person_label=0)


def test_persons_below_rose_in_both_cameras_become_ignore_regions_in_their_slices():
    mb = _module()
    recs = _found_and_faint(mb)
    assert mb.mark_below_rose(recs, {(100.0, 100.0, 140.0, 200.0)}) == 1
    rows = {r["slice"]: r for r in mb.breakdown(recs, (512, 640), {"all": (None, None), **mb.ROSE_SLICES})}
    # all: one of two found, never the faint one: 50 % at every FPPI; without it: 0 %; it alone: 100 %
    assert rows["all"]["miss_rate"] == 50.0
    assert rows["all but mean contrast below Rose in both"]["persons"] == 1
    assert rows["all but mean contrast below Rose in both"]["miss_rate"] == 0.0
    assert rows["night but mean contrast below Rose in both"]["miss_rate"] == 0.0
    assert rows["mean contrast below Rose in both"]["miss_rate"] == 100.0


def test_modality_visibility_rates_persons_by_the_frame_rendered_without_them():
    """The ideal observer (the frame against the same frame without the person, same noise): by day a
    warm person stands far out in both cameras; at night the visible image shows it barely, thermal
    plainly; a person at the background's temperature keeps a signal (its colour, its outline in the
    background's texture), so nobody here is below k = 5 in both cameras."""
    mb = _module()
    from ms_perception.synth.generator import SynthConfig
    rows, unseen = {}, set()
    for cond, cross in (("day", 0.0), ("night", 0.0), ("night", 1.0)):
        night = 1.0 if cond == "night" else 0.0
        cfg = SynthConfig(width=320, height=256, night_fraction=night, dusk_fraction=0.0, fog_fraction=0.0,
                          crossover_fraction=cross, thermal_factor=4, sequence_length=3)
        for r in mb.modality_visibility(cfg, seed=3, pairs=3, height_floor=25.0, unseeable=unseen):
            rows[(r["condition"], r["crossover"])] = r
    day, warm, cold = rows[("day", False)], rows[("night", False)], rows[("night", True)]
    assert min(day["persons"], warm["persons"], cold["persons"]) > 0
    assert day["visible_k_p10_p50_p90"][0] > warm["visible_k_p10_p50_p90"][2]     # night darkens the visible image
    assert warm["thermal_k_p10_p50_p90"][0] > cold["thermal_k_p10_p50_p90"][1]    # crossover: far less in thermal
    assert cold["thermal_k_p10_p50_p90"][0] > 0 and cold["below_5_in_both"] == len(unseen) == 0
    for r in (day, warm, cold):
        assert r["visible_k_p10_p50_p90"] == sorted(r["visible_k_p10_p50_p90"])


def test_persons_the_ideal_observer_cannot_see_become_ignore_regions_in_their_slices():
    mb = _module()
    recs = _found_and_faint(mb)
    assert mb.mark_below_rose(recs, {(100.0, 100.0, 140.0, 200.0)}, key="unseeable") == 1
    assert not any(o.get("below_rose") for o in recs[0][0])        # the other measure's flag is untouched
    rows = {r["slice"]: r for r in mb.breakdown(recs, (512, 640), {"all": (None, None), **mb.IDEAL_SLICES})}
    assert rows["all"]["miss_rate"] == 50.0
    assert rows["all but ideal observer below 5 in both"]["miss_rate"] == 0.0
    assert rows["night but ideal observer below 5 in both"]["persons"] == 1
    assert rows["ideal observer below 5 in both"]["miss_rate"] == 100.0


def test_visibility_in_the_models_input_through_the_pipelines_own_preprocessing(tmp_path):
    """``model_input_fn`` feeds a synthetic pair through the pipeline's own letterbox, registration
    and thermal window: the visible input is the letterboxed image, the thermal one the 8-bit window
    of the registered counts. In the embedded model's input (0.24 K a step, half the pixels) a
    night-scene crossover person keeps a thermal signal of the camera's order (here 68 of 91)."""
    mb = _module()
    from ms_perception.build import build_pipeline, default_model
    from ms_perception.core.frames import Frame
    from ms_perception.core.preprocess import Letterbox, thermal_input
    from ms_perception.demo import make_demo_bag
    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
    _, cal, cfg = make_demo_bag(tmp_path, 2, 0)
    pipe = build_pipeline({"model_path": str(default_model()), "calibration_file": str(cal),
                           "capture_enabled": False})
    to_input = mb.model_input_fn(pipe)
    sp = next(SyntheticGenerator(cfg, 0).pairs(1))
    v, t = to_input(sp.visible, sp.thermal_raw)
    lb = Letterbox.fit(sp.visible.shape[:2], pipe.model_hw)
    assert v.dtype == t.dtype == np.uint8 and v.shape == (*pipe.model_hw, 3) and t.shape == tuple(pipe.thermal_hw)
    assert np.array_equal(v, lb.apply(sp.visible))
    assert np.array_equal(t, thermal_input(Frame(sp.thermal_raw, 0, "mono16"), pipe.cfg.thermal, sp.homography, lb,
                                           pipe.thermal_hw))
    night = SynthConfig(width=640, height=512, night_fraction=1.0, dusk_fraction=0.0, fog_fraction=0.0,
                        crossover_fraction=1.0, thermal_factor=4, sequence_length=2, misregistration_px=0.0)
    rows = mb.modality_visibility(night, seed=2, pairs=2, height_floor=25.0, to_input=to_input)
    cold = [r for r in rows if r["crossover"]]
    assert cold and all(r["persons"] > 0 for r in cold)
    for r in cold:
        cam, inp = r["thermal_k_p10_p50_p90"][1], r["thermal_input_k_p10_p50_p90"][1]
        assert 0.3 * cam < inp < cam and r["below_5_in_both_inputs"] == 0
