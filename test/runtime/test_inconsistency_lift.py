"""Does the inconsistency score point at the frames the model gets wrong? The per-frame error
count, the top-fraction lift, and the demo's side-by-side overlays (issue [evidence])."""
import math

import numpy as np
import pytest

from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.inconsistency import InconsistencyScore
from ms_perception.core.overlay import palette, side_by_side, thermal_view
from ms_perception.core.pipeline import Pipeline, PipelineConfig, Result
from ms_perception.core.postprocess import Detections, select_detections
from ms_perception.metrics.kaist import frame_errors, top_fraction_lift
from ms_perception.replay.run import inconsistency_lift


def test_top_fraction_lift_by_hand():
    scores = [0.9, 0.8, 0.1, 0.2, 0.3, 0.05, 0.4, 0.0, 0.15, 0.25]
    flags = [1, 0, 1, 0, 1, 0, 0, 0, 0, 0]
    got = top_fraction_lift(scores, flags, 0.2)
    # top 2 by score: items 0 (error) and 1 (none) -> 1/2; all: 3/10 -> ratio 0.5 / 0.3
    assert got["n_top"] == 2 and got["top_rate"] == 0.5 and got["random_rate"] == 0.3
    assert got["ratio"] == pytest.approx(5 / 3, abs=1e-4)
    # 10 % of 11 items is 1.1 -> the top 2 are taken (ceil), never fewer than asked
    assert top_fraction_lift(list(range(11)), [0] * 9 + [1, 1], 0.1) == {
        "fraction": 0.1, "n": 11, "n_top": 2, "top_rate": 1.0, "random_rate": round(2 / 11, 4),
        "ratio": 5.5}
    assert top_fraction_lift([1, 2, 3], [0, 0, 0])["ratio"] is None
    with pytest.raises(ValueError, match="as many scores as flags"):
        top_fraction_lift([1, 2], [1], 0.1)


def test_frame_errors_by_hand():
    regular = [100, 100, 140, 200]           # 100 px tall: counts
    small = [300, 300, 310, 330]             # 30 px tall: below the 55 px floor, ignored
    images = [
        # hit on the regular person, a detection on the ignored one (not a false alarm), one on nothing
        ([regular, small], [0, 0], "day", np.array([[101, 102, 141, 198], [300, 300, 310, 331],
                                                     [500, 50, 540, 150]], float), np.array([0.9, 0.8, 0.7])),
        # nothing detected: one miss
        ([regular], [0], "night", np.zeros((0, 4)), np.zeros(0)),
        # a heavily occluded person (occlusion 2) is ignored: no miss; the box 10 px off still hits it
        ([regular], [2], "day", np.array([[110, 100, 150, 200]], float), np.array([0.5])),
        # two detections on one person: the second is a false alarm (duplicate)
        ([regular], [1], "day", np.array([[100, 100, 140, 200], [102, 100, 142, 200]], float), np.array([0.9, 0.6])),
    ]
    assert frame_errors(images, (512, 640)).tolist() == [[0, 1], [1, 0], [0, 0], [0, 1]]


def _result(stamp, score, boxes, scores):
    det = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                     np.zeros(len(scores), np.int64), np.zeros(len(scores), np.int64))
    return stamp, Result(stamp, det, inconsistency=InconsistencyScore(score, [score], [score]))


def test_inconsistency_lift_over_replay_results():
    person = {"box": [100, 100, 140, 200], "class_id": 1, "occlusion": 0}
    anns, results = [], []
    for i in range(20):
        anns.append({"stamp_ns": i, "condition": "day", "objects": [person]})
        wrong = i in (3, 7, 15)          # these frames miss the person
        results.append(_result(i, 0.9 - i / 100 if i in (3, 15) else 0.1 + i / 1000,
                               np.zeros((0, 4)) if wrong else [[100, 100, 140, 200]], [] if wrong else [0.8]))
    got = inconsistency_lift(results, anns, 0, (512, 640))
    # the top 10 % (2 frames) are 3 and 15, both wrong; 3 of 20 frames are wrong
    assert got["top_rate"] == 1.0 and got["random_rate"] == 0.15 and got["ratio"] == pytest.approx(1 / 0.15, abs=1e-3)
    assert got["pairs_with_miss"] == 3 and got["pairs_with_false_alarm"] == 0
    # without a score (a fused-only model) there is nothing to rank
    results[0][1].inconsistency = None
    assert inconsistency_lift(results, anns, 0, (512, 640)) is None


def test_side_by_side_shows_each_branch_on_its_image():
    rgb = np.full((120, 160, 3), 40, np.uint8)
    th = thermal_view(np.full((120, 160), 128, np.uint8))
    fused = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    res = Result(0, fused, inconsistency=InconsistencyScore(0.5, [0.5], [0.5]))
    res.branch_detections = {
        "visible": Detections(np.array([[20, 30, 60, 100]], np.float32), np.array([0.9], np.float32),
                              np.array([0], np.int64)),
        "thermal": Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))}
    img = side_by_side(rgb, th, res, ["person", "bicycle", "car"], "pair 0")
    assert img.shape == (120 + 28, 320, 3)
    person = palette(4)[1]
    left_edge = img[28 + 60, 20]              # the visible box's left edge, in the left panel
    right_same = img[28 + 60, 160 + 20]       # the same place on the thermal panel: no thermal detection
    assert left_edge.tolist() == person.tolist() and right_same.tolist() != person.tolist()


def test_branch_detections_are_each_branch_scores_over_the_fused_boxes():
    from ms_perception.demo import DEFAULT_MODEL
    from ms_perception.engines import create_engine
    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
    sp = next(iter(SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4), 5).pairs(1)))
    pair = FramePair(Frame(sp.visible, 1, "rgb8", "v"), Frame(sp.thermal_raw, 1, "mono16", "t"))
    engine = create_engine("onnxruntime", DEFAULT_MODEL, threads=1)
    pipe = Pipeline(engine, PipelineConfig(assume_same_fov=True, branch_detections=True, score_threshold=0.1))
    res = pipe.process(pair)
    feeds, lb, _ = pipe.preprocess(pair)
    out = engine.infer(feeds)
    for b in ("visible", "thermal"):
        want = select_detections(out[f"scores_{b}"][0], out["boxes"][0], 0.1, pipe.cfg.nms_iou, pipe.cfg.max_detections)
        got = res.branch_detections[b]
        assert np.array_equal(got.scores, want.scores) and np.allclose(got.boxes, lb.boxes_to_image(want.boxes))
    # off by default: the node pays for no extra NMS
    assert Pipeline(engine, PipelineConfig(assume_same_fov=True)).process(pair).branch_detections == {}
    # the registered thermal view has the visible image's size and, shrunk to the model's grid, is its input
    view = pipe.registered_thermal(pair)
    assert view.shape == (512, 640) and view.dtype == np.uint8
    import cv2
    small = cv2.resize(view, (feeds["thermal"].shape[3], feeds["thermal"].shape[2]), interpolation=cv2.INTER_AREA)
    diff = np.abs(small.astype(int) - feeds["thermal"][0, 0].astype(int))
    assert math.isfinite(diff.mean()) and diff.mean() < 3.0
