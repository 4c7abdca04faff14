"""Pipeline on ONNX Runtime with the embedded default model, engines, replay of real rosbag2 files."""
from pathlib import Path

import numpy as np
import pytest

from ms_perception.core.capture import CapturePolicy, CapturePolicyConfig, CaptureWriter
from ms_perception.core.card import read_card
from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.pipeline import Pipeline, PipelineConfig
from ms_perception.core.postprocess import ModelOutputError
from ms_perception.core.preprocess import InputError
from ms_perception.demo import DEFAULT_MODEL, THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
from ms_perception.engines import EngineError, create_engine
from ms_perception.engines.tensorrt_engine import cache_key
from ms_perception.replay.bag import BagError, read_frames, write_bag
from ms_perception.replay.run import evaluate_persons, load_annotations, replay_bag
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator


@pytest.fixture(scope="module")
def engine():
    return create_engine("onnxruntime", DEFAULT_MODEL)


@pytest.fixture(scope="module")
def synth_pair():
    gen = SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4, misregistration_px=0.0), seed=5)
    return next(iter(gen.pairs(1)))


def pair_of(sp, enc="rgb8"):
    vis = sp.visible if enc == "rgb8" else sp.visible[..., ::-1].copy()
    return FramePair(Frame(vis, sp.stamp_visible_ns, enc), Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16"))


def test_default_model_card(engine):
    card = engine.card
    assert card.name == "default_gaff_three_branch" and card.branches == ["fused", "visible", "thermal"]
    assert card.class_names == ["person", "bicycle", "car"] and card.visible_hw == (256, 320)
    assert DEFAULT_MODEL.stat().st_size < 4e6   # "a few MB"


def test_pipeline_runs_and_encodings_agree(engine, synth_pair):
    p = Pipeline(engine, PipelineConfig(score_threshold=0.05, assume_same_fov=True))
    a = p.process(pair_of(synth_pair, "rgb8"))
    b = p.process(pair_of(synth_pair, "bgr8"))
    np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
    assert set(a.timings_ms) == {"preprocess", "infer", "postprocess", "inconsistency", "capture"}
    assert a.inconsistency is not None and 0 <= a.inconsistency.score <= 1
    assert len(a.inconsistency.per_level) == len(engine.card.anchor_levels)
    d = a.detections
    if len(d):  # boxes are in visible-image pixels (640x512), inside the image
        assert d.boxes[:, [0, 2]].max() <= 640 and d.boxes[:, [1, 3]].max() <= 512
        assert set(a.branch_scores) == {"visible", "thermal"} and len(a.branch_scores["visible"]) == len(d)


def test_pipeline_bad_input(engine, synth_pair):
    p = Pipeline(engine, PipelineConfig())
    with pytest.raises(InputError, match="no calibration was given"):
        p.process(pair_of(synth_pair))  # thermal 320x256 vs visible 640x512
    with pytest.raises(InputError, match="needs a thermal image"):
        p.process(FramePair(Frame(synth_pair.visible, 0, "rgb8"), None))
    with pytest.raises(InputError, match="'bayer_rggb8' is not supported"):
        p.process(FramePair(Frame(synth_pair.visible, 0, "bayer_rggb8"), None))
    with pytest.raises(ValueError, match="score_threshold"):
        PipelineConfig(score_threshold=2)
    with pytest.raises(ValueError, match="opencv_threads"):
        PipelineConfig(opencv_threads=-1)


def test_pipeline_sets_opencv_threads_as_configured(engine):
    import cv2
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        Pipeline(engine, PipelineConfig(opencv_threads=None))
        assert cv2.getNumThreads() == 2            # None: OpenCV's setting stays
        Pipeline(engine, PipelineConfig())
        assert cv2.getNumThreads() == 1            # the default: no pool for the per-frame resizes
    finally:
        cv2.setNumThreads(before)


def test_nan_output_is_a_clear_error(engine, synth_pair):
    class NanEngine:
        card = engine.card

        def infer(self, feeds):
            out = engine.infer(feeds)
            out["scores"] = np.full_like(out["scores"], np.nan)
            if "output_stats" in out:     # the graph computes its statistics from the outputs it gives
                from ms_perception.core.postprocess import output_stats, stats_names
                out["output_stats"] = output_stats(out, stats_names(o.name for o in self.card.outputs))
            return out

    with pytest.raises(ModelOutputError, match="NaN"):
        Pipeline(NanEngine(), PipelineConfig(assume_same_fov=True)).process(pair_of(synth_pair))


def test_engine_errors(tmp_path, engine):
    with pytest.raises(EngineError, match="model file not found"):
        create_engine("onnxruntime", tmp_path / "none.onnx")
    with pytest.raises(EngineError, match="unknown backend"):
        create_engine("openvino", DEFAULT_MODEL)
    card = read_card(DEFAULT_MODEL)
    card.inputs[0].shape = [1, 3, 512, 640]
    card.outputs.append(type(card.outputs[0])("masks", [1], "float32"))
    with pytest.raises(EngineError, match=r"card does not match the model: input 'visible': model shape "
                                          r"\[1, 3, 256, 320\], card \[1, 3, 512, 640\]; output 'masks'"):
        create_engine("onnxruntime", DEFAULT_MODEL, card=card)
    with pytest.raises(EngineError, match="no CUDAExecutionProvider"):
        create_engine("onnxruntime-cuda", DEFAULT_MODEL)


def test_tensorrt_cache_key_and_missing_library(tmp_path):
    k = cache_key("ab" * 32, "10.3.0", (8, 7), "fp16")
    assert k == "abababababababab-trt10.3.0-sm87-fp16"
    assert cache_key("ab" * 32, "10.3.0", (8, 9), "fp16") != k  # another GPU -> another engine
    with pytest.raises(EngineError):
        cache_key("ab" * 32, "10.3.0", (8, 7), "int4")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EngineError, match="TensorRT Python bindings"):
            create_engine("tensorrt", DEFAULT_MODEL)
    else:  # a TensorRT machine: really build and compare with ONNX Runtime
        pytest.skip("TensorRT present: run test/runtime/test_tensorrt_device.py on the device")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_bag_with_capture_and_eval(tmp_path, engine, storage):
    bag, cal, _ = make_demo_bag(tmp_path, pairs=12, seed=2, sequence_length=6)
    if storage == "sqlite3":  # rewrite the same frames as .db3
        frames = [(VISIBLE_TOPIC if s == "visible" else THERMAL_TOPIC, f, f.stamp_ns + 1000)
                  for s, f in read_frames(bag, VISIBLE_TOPIC, THERMAL_TOPIC)]
        bag2 = write_bag(tmp_path / "bag_db3", sorted(frames, key=lambda r: r[2]), storage="sqlite3")
        (bag2 / "annotations.json").write_text((bag / "annotations.json").read_text())
        assert list(bag2.glob("*.db3"))
        bag = bag2
    writer = CaptureWriter(tmp_path / "cap", model_hash=engine.card.graph_sha256[:16])
    policy = CapturePolicy(CapturePolicyConfig(threshold=0.0, min_interval_s=0.0, duplicate_threshold=0.0))
    pipe = Pipeline(engine, PipelineConfig(score_threshold=0.05, calibration=str(cal)), policy, writer)
    summary, results = replay_bag(bag, pipe, VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.02, keep=True)
    assert summary.pairs == 12 and summary.pairing["unpaired"] == 0
    c = summary.capture
    # every capture decision is written or, when the writer falls behind, dropped and counted (never blocking)
    assert summary.captured == 12 and c["write_errors"] == 0
    assert c["written"] + c["dropped_queue_full"] + c["dropped_at_close"] + c["in_flight_at_close"] == 12
    assert c["written"] >= 8  # the queue holds 8
    assert {"p50", "p95"} <= set(summary.latency_ms["total"])
    mr = evaluate_persons(results, load_annotations(bag), 0, (512, 640))
    assert set(mr) >= {"all"} and 0 <= mr["all"] <= 100


def test_replay_pairs_with_a_tight_slop_drop_frames(tmp_path, engine):
    bag, cal, _ = make_demo_bag(tmp_path, pairs=8, seed=3, sequence_length=8)
    pipe = Pipeline(engine, PipelineConfig(calibration=str(cal)))
    summary, _ = replay_bag(bag, pipe, VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.0005)  # thermal is ~4 ms late
    assert summary.pairs < 8 and summary.pairing["unpaired"] == 2 * (8 - summary.pairs)


def test_bag_errors(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        list(read_frames(tmp_path / "nope", "/a", "/b"))
    bag, _, _ = make_demo_bag(tmp_path, pairs=2, seed=0, sequence_length=2)
    with pytest.raises(BagError, match=r"no thermal topic '/thermal' in the bag \(set --thermal-topic\); the bag's "
                                       r"topics: /camera/thermal/image_raw \[sensor_msgs/msg/Image\], /camera/visible"):
        list(read_frames(bag, VISIBLE_TOPIC, "/thermal"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 8\n")
    with pytest.raises(BagError, match="not a readable rosbag2 recording"):
        list(read_frames(broken, VISIBLE_TOPIC, THERMAL_TOPIC))
    mcap = next(Path(bag).glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])  # truncated recording
    with pytest.raises(BagError, match=r"the .mcap file is truncated .*mcap recover IN.mcap -o OUT.mcap"):
        list(read_frames(bag, VISIBLE_TOPIC, THERMAL_TOPIC))
