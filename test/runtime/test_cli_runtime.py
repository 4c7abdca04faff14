"""`ms-perception replay`, `bench` and `build-engine` through the CLI (torch-free)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ms_perception.bench import run_bench
from ms_perception.cli import main
from ms_perception.core.inconsistency import prediction_inconsistency
from ms_perception.demo import DEFAULT_MODEL, make_demo_bag

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    bag, cal, _ = make_demo_bag(out, pairs=12, seed=3, sequence_length=6)
    return bag, cal


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_replay_cli_reports_pairs_latency_accuracy_and_captures(demo_bag, tmp_path, capsys):
    bag, cal = demo_bag
    report = tmp_path / "report.json"
    rc = main(["replay", str(bag), "--calibration", str(cal), "--slop", "0.02", "--capture-dir",
               str(tmp_path / "cap"), "--capture-threshold", "0", "--capture-min-interval", "0", "--out", str(report)])
    assert rc == 0
    out = last_json(capsys)
    assert out["pairs"] == 12 and out["pairing"]["unpaired"] == 0
    assert set(out["latency_ms"]) >= {"preprocess", "infer", "postprocess", "inconsistency", "total"}
    assert set(out["miss_rate"]) >= {"all"} and 0 <= out["miss_rate"]["all"] <= 100
    assert out["inconsistency_lift"]["n"] == 12 and out["inconsistency_lift"]["n_top"] == 2
    full = json.loads(report.read_text())
    assert full["visible_hw"] == [512, 640] and full["model"] == "default_gaff_three_branch"
    # threshold 0 and no interval: every pair that is not a near-duplicate scene is captured and written
    assert out["captured"] >= 1 and full["capture"]["written"] == out["captured"]
    assert len(list((tmp_path / "cap" / "replay").glob("*/visible.png"))) == out["captured"]


def test_replay_cli_errors_name_the_fix(demo_bag, tmp_path, capsys):
    bag, cal = demo_bag
    assert main(["replay", str(bag), "--calibration", str(cal), "--visible-topic", "/nope"]) == 2
    err = capsys.readouterr().err
    assert "no visible topic '/nope'" in err and "/camera/visible/image_raw" in err
    assert main(["replay", str(bag), "--calibration", str(cal), "--slop", "1e-7"]) == 2
    assert "no frame pairs" in capsys.readouterr().err
    assert main(["replay", str(bag), "--assume-same-fov", "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "model_path file not found" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "no_bag")]) == 2
    assert "no_bag" in capsys.readouterr().err


def test_bench_reports_both_ratios_without_torch():
    # the default model stands in for teacher and student here; the real comparison is
    # `ms-perception bench` with the exported presets (bench/RESULTS.md)
    r = run_bench({"teacher": DEFAULT_MODEL, "student": DEFAULT_MODEL}, size_wh=(320, 256), iterations=2, warmup=1)
    assert r["teacher"]["engine_ms"] > 0 and r["student"]["engine_ms"] > 0
    assert r["overhead_ratio"] == max(r["overhead_ratio_by_model"].values()) > 0
    # each model also runs alone, back to back (as a node runs it), with its own ratio
    assert set(r["alone"]) == {"teacher", "student"}
    a = r["alone"]["student"]
    assert a["overhead_ratio"] == pytest.approx(a["overhead_ms"] / a["engine_ms"], abs=2e-3)
    assert r["overhead_ratio_alone"] == max(x["overhead_ratio"] for x in r["alone"].values())
    assert abs(r["student_teacher_ratio"] - r["student"]["engine_ms"] / r["teacher"]["engine_ms"]) < 1e-3
    assert r["teacher"]["stages_ms"]["inconsistency"] > 0   # three-branch: the score is part of the overhead
    # in-process the flag reports this test process (other tests in it may have imported torch);
    # the torch-free claim is checked in a fresh process below
    assert r["peak_rss_mb"] > 0 and r["torch_imported"] == ("torch" in sys.modules)


def test_bench_cli_json_and_errors(capsys):
    proc = subprocess.run([sys.executable, "-m", "ms_perception.cli", "bench", "--teacher", str(DEFAULT_MODEL),
                           "--student", str(DEFAULT_MODEL), "--size", "320x256", "--iterations", "1", "--warmup", "0",
                           "--replay-pairs", "6", "--replay-rounds", "1", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"overhead_ratio", "student_teacher_ratio", "peak_rss_mb", "replay"} <= set(out)
    assert out["replay"]["pairs"] == 6
    assert out["torch_imported"] is False    # a fresh runtime process never loads torch
    assert main(["bench", "--teacher", str(DEFAULT_MODEL)]) == 2
    assert "both --teacher and --student" in capsys.readouterr().err


def test_build_engine_without_tensorrt_says_how_to_get_it(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: the build itself is exercised on the device")
    except ImportError:
        pass
    assert main(["build-engine", str(DEFAULT_MODEL), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "TensorRT Python bindings" in err and "onnxruntime" in err
    assert not list(tmp_path.iterdir())   # nothing half-built left behind


def test_float32_inconsistency_matches_float64():
    rng = np.random.default_rng(0)
    v = (rng.random((2000, 3)) ** 6).astype(np.float32)
    t = (rng.random((2000, 3)) ** 6).astype(np.float32)
    a32 = prediction_inconsistency(v, t)
    a64 = prediction_inconsistency(v.astype(np.float64), t.astype(np.float64))
    assert a32.dtype == np.float32 and a64.dtype == np.float64
    np.testing.assert_allclose(a32, a64, atol=3e-6)
    # hand-checkable: identical predictions agree (0), a certain disagreement is 1 bit
    np.testing.assert_allclose(prediction_inconsistency(np.float32([0.3, 1.0]), np.float32([0.3, 0.0])), [0, 1],
                               atol=3e-6)


def test_inconsistency_is_never_negative_in_float32():
    # found by the exported-model test: near-identical float32 predictions rounded to -1e-9
    rng = np.random.default_rng(1)
    v = np.full((5000, 3), 0.01, np.float32) + rng.normal(0, 1e-6, (5000, 3)).astype(np.float32)
    t = np.full((5000, 3), 0.01, np.float32) + rng.normal(0, 1e-6, (5000, 3)).astype(np.float32)
    assert prediction_inconsistency(v, t).min() >= 0


def test_bench_times_peers_and_the_paper_pair_side_by_side(tmp_path):
    """`bench --peer`: any ONNX detector (no card), timed bare beside ours; the paper pair's ratio
    and the default model's overhead are reported when those models are in the run."""
    from ms_perception.bench import BenchError
    r = run_bench({"teacher": DEFAULT_MODEL, "student": DEFAULT_MODEL, "paper_teacher": DEFAULT_MODEL,
                   "paper_student": DEFAULT_MODEL, "default": DEFAULT_MODEL}, size_wh=(320, 256), iterations=2,
                  warmup=1, peers={"other": DEFAULT_MODEL})
    peer = r["peers"]["other"]
    assert peer["engine_ms"] > 0 and peer["inputs"] == {"visible": [1, 3, 256, 320], "thermal": [1, 1, 256, 320],
                                                        "score_threshold": [1], "nms_iou": [1], "max_detections": [1]}
    assert set(r["peer_ratios"]["other"]) == {"student", "paper_student", "default"}
    assert r["peer_ratios"]["other"]["default"] == pytest.approx(r["default"]["engine_ms"] / peer["engine_ms"], rel=1e-3)
    assert r["paper_student_teacher_ratio"] == pytest.approx(
        r["paper_student"]["engine_ms"] / r["paper_teacher"]["engine_ms"], rel=1e-3)
    assert "default" in r["overhead_ratio_by_model"]
    # the default model also on its demo rig: a thermal camera with 4x fewer pixels than the visible
    # one (here 160x128 under 320x256), while the "default" role's thermal camera matches the visible one
    assert r["default"]["thermal_camera_hw"] == [256, 320]
    assert r["default_demo_rig"]["thermal_camera_hw"] == [128, 160]
    assert "default_demo_rig" in r["overhead_ratio_by_model"]
    # a model whose input has a free dimension bench cannot choose gets one line naming it
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"])])
    bad = tmp_path / "free.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), bad)
    with pytest.raises(BenchError, match=r"free.onnx: input 'x' has a free dimension 'k' at axis 1"):
        run_bench({"teacher": DEFAULT_MODEL, "student": DEFAULT_MODEL}, size_wh=(320, 256), iterations=1, warmup=0,
                  peers={"free": bad})
    with pytest.raises(BenchError, match="--peer .*missing.onnx: file not found"):
        run_bench({"teacher": DEFAULT_MODEL, "student": DEFAULT_MODEL}, iterations=1, warmup=0,
                  peers={"m": tmp_path / "missing.onnx"})


def test_bench_cli_peer_names(capsys):
    assert main(["bench", "--teacher", str(DEFAULT_MODEL), "--student", str(DEFAULT_MODEL), "--peer", f"a={DEFAULT_MODEL}",
                 "--peer", f"a={DEFAULT_MODEL}"]) == 2
    assert "the name 'a' is given twice" in capsys.readouterr().err


def test_bench_replay_compares_capture_and_the_reader_thread_in_one_run():
    """The replay part of `bench`: six interleaved variants of one bag; the ratios are the ones
    printed, computed from the per-pair times and rates of the same run; the camera-rate variants
    really are paced (40 pairs at 30 fps take at least 39 frame intervals)."""
    from ms_perception.bench import FRAME_INTERVAL_MS, run_replay_bench
    r = run_replay_bench(DEFAULT_MODEL, pairs=40, rounds=2)   # two 20-pair scenes: the policy needs 10 scores first
    pp, ps = r["per_pair_ms"], r["pairs_per_s"]
    assert set(pp) == set(ps) == {"off", "capture", "sequential", "off_camera", "capture_camera",
                                    "off_camera_again"}
    assert r["captured_written"] > 0 and r["captured_written_camera"] > 0   # capture really wrote records to disk
    assert ps["off_camera"] <= 40 / (39 * FRAME_INTERVAL_MS / 1000) and ps["capture_camera"] <= 30.8
    assert r["capture_p99_ratio_camera"] == pytest.approx(pp["capture_camera"]["p99"] / pp["off_camera"]["p99"],
                                                          rel=1e-3)
    assert r["a_a_p99_ratio_camera"] == pytest.approx(pp["off_camera_again"]["p99"] / pp["off_camera"]["p99"],
                                                      rel=1e-3)
    assert 0 < pp["off"]["p50"] <= pp["off"]["p95"] <= pp["off"]["p99"]
    assert r["p95_over_frame_interval"] == pytest.approx(pp["off"]["p95"] / FRAME_INTERVAL_MS, rel=1e-3)
    assert r["capture_p99_ratio"] == pytest.approx(pp["capture"]["p99"] / pp["off"]["p99"], rel=1e-3)
    assert r["reader_thread_speedup"] == pytest.approx(ps["off"] / ps["sequential"], rel=1e-3)
    from ms_perception.bench import BenchError
    with pytest.raises(BenchError, match="pairs >= 1"):
        run_replay_bench(DEFAULT_MODEL, pairs=0)


def test_engine_ratio_feeds_images_and_the_pipelines_nms_settings(tmp_path):
    """bench/engine_ratio.py: random uint8 images at the model's own input shapes, and an in-graph
    NMS fed the pipeline's defaults (a change of those defaults must reach the bench); the report
    names each model with its times and its ratio to the first (the first's is 1 by construction)."""
    import importlib.util

    import onnxruntime as ort

    from ms_perception.core.pipeline import PipelineConfig
    spec = importlib.util.spec_from_file_location("engine_ratio", REPO / "bench" / "engine_ratio.py")
    er = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(er)
    s = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    f = er.feeds_for(s, np.random.default_rng(0))
    cfg = PipelineConfig()
    assert f["visible"].shape == (1, 3, 256, 320) and f["visible"].dtype == np.uint8
    assert f["thermal"].shape == (1, 1, 256, 320) and f["thermal"].dtype == np.uint8
    assert float(f["score_threshold"][0]) == pytest.approx(cfg.score_threshold)
    assert float(f["nms_iou"][0]) == pytest.approx(cfg.nms_iou) and int(f["max_detections"][0]) == cfg.max_detections
    rep = er.measure([str(DEFAULT_MODEL), str(DEFAULT_MODEL)], rounds=3, warmup=1, threads=1)
    first, second = rep["models"]
    assert first["ratio_to_first"] == 1.0 and first["median_ms"] > 0 and second["median_ms"] > 0
    assert first["p90_ms"] >= first["median_ms"] and rep["rounds"] == 3
