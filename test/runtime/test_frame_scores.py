"""The per-frame scores a capture policy can rank by (``capture_score``): the paper's image
inconsistency, the detection-level inconsistency and the detections' entropy. Hand-checked
formulas, the pipeline computing them for a real model, the policy deciding on the chosen one,
the parameter, and the lift of each score over replay results (issue [evidence])."""
import json
import math

import numpy as np
import pytest

from ms_perception.core.capture import CAPTURE_SCORES, CapturePolicy, CapturePolicyConfig, CaptureWriter
from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.inconsistency import detections_entropy, detections_inconsistency
from ms_perception.core.pipeline import Pipeline, PipelineConfig, Result
from ms_perception.core.postprocess import Detections
from ms_perception.demo import DEFAULT_MODEL
from ms_perception.engines import create_engine
from ms_perception.replay.run import frame_score_lifts, inconsistency_lift
from ms_perception.ros.params import DEFAULTS, capture_config, check_value
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

H09 = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))   # binary entropy of 0.9: 0.46900 bits


def test_detection_scores_by_hand():
    # I(0.9, 0.1) = H(0.5) - (H(0.9) + H(0.1)) / 2 = 1 - H(0.9); I(0.5, 0.5) = 0
    assert detections_inconsistency([0.9, 0.5], [0.1, 0.5]) == pytest.approx(1 - H09, abs=1e-9)
    assert 1 - H09 == pytest.approx(0.53100, abs=1e-5)
    # agreeing branches add nothing, whatever their confidence
    assert detections_inconsistency([0.99, 0.3], [0.99, 0.3]) == pytest.approx(0.0, abs=1e-9)
    assert detections_inconsistency([], []) == 0.0
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        detections_inconsistency([0.5, 0.5], [0.5])
    # H(0.5) + H(0.9) = 1.46900; a frame without detections scores 0
    assert detections_entropy([0.5, 0.9]) == pytest.approx(1 + H09, abs=1e-9)
    assert detections_entropy(np.zeros(0)) == 0.0


@pytest.fixture(scope="module")
def engine():
    return create_engine("onnxruntime", DEFAULT_MODEL)


@pytest.fixture(scope="module")
def pair():
    sp = next(iter(SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4, misregistration_px=0.0),
                                      seed=5).pairs(1)))
    return FramePair(Frame(sp.visible, sp.stamp_visible_ns, "rgb8"), Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16"))


def _policy(**kw):
    return CapturePolicy(CapturePolicyConfig(mode="threshold", min_interval_s=0.0, duplicate_threshold=0.0, **kw))


def test_the_pipeline_gives_every_score_and_the_policy_decides_on_the_chosen_one(engine, pair, tmp_path):
    cfg = PipelineConfig(score_threshold=0.05, assume_same_fov=True)
    res = Pipeline(engine, cfg).process(pair)
    fs = res.frame_scores
    assert set(fs) == set(CAPTURE_SCORES)
    assert len(res.detections) >= 2                       # something to sum over
    assert fs["inconsistency"] == res.inconsistency.score
    assert fs["detection_inconsistency"] == pytest.approx(
        detections_inconsistency(res.branch_scores["visible"], res.branch_scores["thermal"]), rel=1e-12)
    assert fs["detection_entropy"] == pytest.approx(detections_entropy(res.detections.scores), rel=1e-12)
    inc, ent = fs["inconsistency"], fs["detection_entropy"]
    assert inc < ent                                      # a threshold between them tells which one decided
    mid = (inc + ent) / 2
    for score, captured in (("detection_entropy", True), ("inconsistency", False)):
        r = Pipeline(engine, cfg, _policy(threshold=mid, score=score)).process(pair)
        assert (r.captured, r.capture_reason) == (captured, "captured" if captured else "below_threshold")
    # the record says which score chose it and holds all of them; its "score" stays the image
    # inconsistency (the fleet pool's "inconsistency" strategy reads it), its "rank" is the chosen one
    writer = CaptureWriter(tmp_path / "cap", model_hash="m")
    Pipeline(engine, cfg, _policy(threshold=mid, score="detection_entropy"), writer).process(pair)
    writer.close()
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "cap").rglob("record.json")]
    assert rec["predictions"]["capture_score"] == "detection_entropy"
    assert rec["predictions"]["frame_scores"]["detection_entropy"] == pytest.approx(ent, rel=1e-12)
    assert rec["score"] == pytest.approx(inc, rel=1e-9)
    assert rec["rank"] == pytest.approx(ent, rel=1e-9)          # the quota evicts by the capture score


def test_a_policy_on_a_score_the_model_does_not_give_warns_and_records_only_forced(engine, pair):
    pipe = Pipeline(engine, PipelineConfig(assume_same_fov=True, inconsistency=False),
                    _policy(threshold=0.0, score="detection_inconsistency"))
    assert pipe.frame_score_names() == ["detection_entropy"]
    assert any("capture_score 'detection_inconsistency'" in w and "only forced captures" in w for w in pipe.warnings)
    r = pipe.process(pair)
    assert set(r.frame_scores) == {"detection_entropy"} and (r.captured, r.capture_reason) == (False, "")
    pipe.policy.set_mode(2, 1)                           # an operator's force still records
    assert pipe.process(pair).capture_reason == "forced"
    # the default score on a model that gives it: no warning
    assert not [w for w in Pipeline(engine, PipelineConfig(), _policy()).warnings if "capture_score" in w]


def test_the_capture_score_parameter():
    assert DEFAULTS["capture_score"] == "inconsistency"
    assert check_value("capture_score", "detection_entropy") is None
    assert "must be one of" in check_value("capture_score", "entropy")
    assert capture_config({**DEFAULTS, "capture_score": "detection_inconsistency"}).score == "detection_inconsistency"
    # the detection scores are sums over detections: a threshold above 1 is allowed
    assert check_value("capture_threshold", 2.5) is None and check_value("capture_threshold", -0.1) is not None
    with pytest.raises(ValueError, match="capture score must be one of"):
        CapturePolicyConfig(score="entropy")


def _result(stamp, scores: dict, boxes):
    det = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.8, np.float32),
                     np.zeros(len(boxes), np.int64), np.zeros(len(boxes), np.int64))
    r = Result(stamp, det)
    r.frame_scores = dict(scores)
    return stamp, r


def test_each_score_gets_its_own_lift():
    person = {"box": [100, 100, 140, 200], "class_id": 1, "occlusion": 0}
    anns, results = [], []
    for i in range(10):
        anns.append({"stamp_ns": i, "condition": "day", "objects": [person]})
        wrong = i in (2, 6)                   # these frames miss the person
        # "a" ranks frame 2 first (wrong), "b" ranks frame 9 first (right)
        results.append(_result(i, {"a": 1.0 if i == 2 else 0.0, "b": 1.0 if i == 9 else 0.0},
                               [] if wrong else [[100, 100, 140, 200]]))
    got = frame_score_lifts(results, anns, 0, (512, 640))
    assert set(got) == {"a", "b"}
    # top 10 % = 1 frame; 2 of 10 frames hold an error: a 1.0 / 0.2 = 5x, b 0 / 0.2 = 0x
    assert got["a"]["ratio"] == pytest.approx(5.0) and got["b"]["ratio"] == 0.0
    assert got["a"]["pairs_with_miss"] == 2 and got["a"]["pairs_with_false_alarm"] == 0
    # a score some frame lacks is not ranked; without the image inconsistency there is no inconsistency lift
    del results[4][1].frame_scores["b"]
    assert set(frame_score_lifts(results, anns, 0, (512, 640))) == {"a"}
    assert inconsistency_lift(results, anns, 0, (512, 640)) is None


def _bench():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("frame_scores", Path(__file__).resolve().parents[2] / "bench" / "frame_scores.py")
    fs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fs)
    return fs


def test_the_bench_lifts_by_hand_with_scene_resamples():
    fs = _bench()
    flags0 = dict.fromkeys(fs.FLAGS, False)
    # 10 pairs in 5 scenes of 2; score "s" puts pair 0 on top (a miss); pairs 0 and 5 hold a miss
    rows = [{"scene": f"c{i // 2}", "scores": {"s": 1.0 if i == 0 else i / 100, fs.REFERENCE: 1.0},
             "flags": {**flags0, "miss": i in (0, 5), "error": i in (0, 5), "night": i < 4}} for i in range(10)]
    t = fs.lifts(rows, 0.1)
    assert t["s"]["miss"] == {"ratio": 5.0, "top_rate": 1.0, "random_rate": 0.2}
    assert t["s"]["night"]["ratio"] == pytest.approx(1 / 0.4, abs=1e-3)
    assert t["s"]["hot_distractor"]["ratio"] is None                 # never flagged: no ratio
    # equal counts rank in order (stable): pair 0 first, so the reference scores the same here
    assert t[fs.REFERENCE]["miss"]["ratio"] == 5.0
    r = fs.lifts(rows, 0.1, resamples=200)["s"]["miss"]
    # a resample holds 0, 1 or 2 pairs of pair 0's scene on top, so the lift ranges from 0 upward
    assert r["ratio"] == 5.0 and 0.0 <= r["p5"] <= 5.0 <= r["p95"]


def test_the_bench_rows_follow_the_demo_annotations(tmp_path):
    """40 pairs of seed 1 (a day and a night scene): the flags are the annotations' and the frame
    errors', the scores the pipeline's, and the scenes the generator's sequences."""
    fs = _bench()
    from ms_perception.replay.run import load_annotations
    rows = fs.replay_demo(DEFAULT_MODEL, 40, 1, tmp_path)
    anns = load_annotations(tmp_path / "bag")
    assert len(rows) == 40 and {r["scene"] for r in rows} == {"s1/0", "s1/1"}
    assert set(rows[0]["scores"]) == {*CAPTURE_SCORES, fs.REFERENCE}
    assert [r["flags"]["night"] for r in rows] == [a["condition"] in ("night", "dusk") for a in anns]
    assert [r["flags"]["crossover_person"] for r in rows] == [
        any(o["class_id"] == 1 and o["crossover"] for o in a["objects"]) for a in anns]
    assert [r["flags"]["hot_distractor"] for r in rows] == [any(d["kind"] == "hot" for d in a["distractors"]) for a in anns]
    assert any(r["flags"]["error"] for r in rows)
    t = fs.lifts(rows, 0.1)
    assert set(t) == {*CAPTURE_SCORES, fs.REFERENCE} and set(t["inconsistency"]) == set(fs.FLAGS)


def test_the_bench_names_a_missing_model_and_exits_2(tmp_path, capsys):
    assert _bench().main(["--model", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx: no such model file" in capsys.readouterr().err


def test_the_short_loop_and_the_numpy_path_agree():
    """Frames with few detections take a plain float loop (cheaper than numpy's calls); both paths
    give the same sums, at every length around the switch and with probabilities at 0 and 1."""
    from ms_perception.core import inconsistency as inc
    from ms_perception.core.inconsistency import binary_entropy, prediction_inconsistency
    rng = np.random.default_rng(0)
    for n in (1, inc.SMALL - 1, inc.SMALL, inc.SMALL + 1, 40):
        v, t = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
        v[0], t[0] = 1.0, 0.0
        ref_i = float(prediction_inconsistency(v.astype(np.float64), t.astype(np.float64)).sum())
        ref_h = float(binary_entropy(v.astype(np.float64)).sum())
        assert detections_inconsistency(v, t) == pytest.approx(ref_i, rel=1e-12, abs=1e-12)
        assert detections_entropy(v) == pytest.approx(ref_h, rel=1e-12, abs=1e-12)


def test_branch_only_counts_what_a_branch_reports_and_the_fusion_dropped():
    fs = _bench()

    def dets(boxes):
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        return Detections(b, np.full(len(b), 0.5, np.float32), np.zeros(len(b), np.int64))
    res = Result(0, dets([[0, 0, 10, 10]]))
    # visible: one on the fused box (IoU 0.81), one far from it; thermal: one far from it, one
    # overlapping the fused box at IoU 50 / 150 = 1/3
    res.branch_detections = {"visible": dets([[1, 1, 10, 10], [50, 50, 60, 60]]),
                             "thermal": dets([[80, 0, 90, 10], [5, 0, 15, 10]])}
    assert fs.branch_only(res) == 2                # the two far ones
    assert fs.branch_only(res, iou=0.4) == 3       # 1/3 < 0.4: the fusion "dropped" that one too
    alone = Result(0, dets([]), branch_detections=res.branch_detections)
    assert fs.branch_only(alone) == 4              # no fused detection: every branch detection counts
