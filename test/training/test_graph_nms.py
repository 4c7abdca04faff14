"""The in-graph class-aware NMS (training/export/graph_edits.add_nms, issue 16).

The graph's ONNX NonMaxSuppression must keep exactly what the runtime's NMS keeps
(postprocess.select_detections): on hand-checkable boxes, on random ones, and through the
pipeline on the embedded default model; the thresholds stay runtime parameters; a TensorRT
build takes it out again, leaving the graph as it was before the edit."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ms_perception.build import default_model
from ms_perception.core.card import ModelCard, Normalization, TensorSpec, onnx_graph_sha256, read_card
from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.pipeline import Pipeline, PipelineConfig
from ms_perception.core.postprocess import (
    NMS_OUTPUT,
    ModelOutputError,
    detections_from_index,
    select_detections,
)
from ms_perception.engines import create_engine
from ms_perception.engines.nms_strip import strip_nms
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
from ms_perception_training.export.graph_edits import GraphEditError, add_nms


def _tiny(a: int, k: int):
    """A 'detector' whose scores and boxes are its inputs (so the test chooses them)."""
    ins = [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, a, k]),
           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, a, 4])]
    outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, a, k]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, a, 4])]
    nodes = [helper.make_node("Identity", ["s"], ["scores"]), helper.make_node("Identity", ["b"], ["boxes"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", ins, outs), opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    card = ModelCard("tiny", "detection", [f"c{i}" for i in range(k)], [TensorSpec("visible", [1, 3, 8, 8], "uint8")],
                     [TensorSpec("scores", [1, a, k], "float32"), TensorSpec("boxes", [1, a, 4], "float32")],
                     Normalization([0, 0, 0], [1, 1, 1]), None, box_decoding="in_graph")
    return model, card


def _graph_nms(model, scores, boxes, thr, iou, max_det):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    index, = sess.run([NMS_OUTPUT], {"s": scores[None].astype(np.float32), "b": boxes[None].astype(np.float32),
                                     "score_threshold": np.array([thr], np.float32),
                                     "nms_iou": np.array([iou], np.float32),
                                     "max_detections": np.array([max_det], np.int64)})
    return detections_from_index(index, scores.astype(np.float32), boxes.astype(np.float32), max_det)


def test_graph_nms_keeps_what_the_rule_keeps_on_hand_values():
    model, card = _tiny(4, 2)
    m, new = add_nms(model, card)
    # A and B overlap: IoU = (10*10 - 1*10) / (100 + 100 - 90) = 90 / 110 = 0.818; C is apart; D is below 0.3
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.6], [0.7, 0.0], [0.2, 0.25]], np.float32)
    d = _graph_nms(m, scores, boxes, 0.3, 0.5, 100)
    # class 0: A kept, B suppressed by A (0.818 > 0.5), C kept; class 1: B kept (per class); D below threshold
    assert d.anchor_index.tolist() == [0, 2, 1] and d.labels.tolist() == [0, 0, 1]
    assert d.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    np.testing.assert_array_equal(d.boxes, boxes[[0, 2, 1]])
    # the thresholds are inputs: IoU 0.9 keeps B in class 0 as well; a 0.65 score threshold drops B (class 1)
    assert _graph_nms(m, scores, boxes, 0.3, 0.9, 100).anchor_index.tolist() == [0, 1, 2, 1]
    assert _graph_nms(m, scores, boxes, 0.65, 0.5, 100).anchor_index.tolist() == [0, 2]
    # max_detections: per class in the graph, overall in the runtime
    assert _graph_nms(m, scores, boxes, 0.3, 0.5, 1).anchor_index.tolist() == [0]
    # the card: three runtime inputs and the index output; no statistics over the indices
    assert [s.name for s in new.inputs][-3:] == ["score_threshold", "nms_iou", "max_detections"]
    assert new.output(NMS_OUTPUT).dtype == "int64" and new.graph_sha256 == onnx_graph_sha256(m.SerializeToString())


def test_graph_nms_equals_the_runtime_nms_on_random_boxes():
    model, card = _tiny(600, 3)
    m, _ = add_nms(model, card)
    rng = np.random.default_rng(0)
    for trial in range(20):
        xy = rng.uniform(0, 300, (600, 2))
        wh = rng.uniform(5, 80, (600, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        scores = rng.random((600, 3)).astype(np.float32)
        thr, iou, max_det = [(0.3, 0.5, 100), (0.05, 0.45, 300), (0.7, 0.3, 10)][trial % 3]
        got = _graph_nms(m, scores, boxes, thr, iou, max_det)
        want = select_detections(scores, boxes, thr, iou, max_det, pre_nms_top_k=10 ** 6)
        assert len(want) > 5
        np.testing.assert_array_equal(got.anchor_index, want.anchor_index)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.boxes, want.boxes)


def test_index_rows_outside_the_outputs_are_refused():
    scores, boxes = np.full((5, 2), 0.5, np.float32), np.zeros((5, 4), np.float32)
    assert len(detections_from_index(np.zeros((0, 3), np.int64), scores, boxes)) == 0
    for bad in ([[0, 2, 0]], [[0, 0, 5]], [[1, 0, 0]], [[0, -1, 0]]):
        with pytest.raises(ModelOutputError, match="indexes outside"):
            detections_from_index(np.array(bad, np.int64), scores, boxes)
    with pytest.raises(ModelOutputError, match=r"expected \(N, 3\)"):
        detections_from_index(np.zeros((2, 2), np.int64), scores, boxes)


def test_refusals_name_the_reason():
    model, card = _tiny(4, 1)
    m, new = add_nms(model, card)
    with pytest.raises(GraphEditError, match="already has the in-graph NMS"):
        add_nms(m, new)
    card.box_decoding = "anchors"
    with pytest.raises(GraphEditError, match="decodes its boxes"):
        add_nms(model, card)


# the shipped default model's graph before `train graph-edit --nms` (its card's hash then)
SHIPPED_BEFORE_NMS = "4ebad1e7505a33622c9a9e6e98293c6749ede380da32defa20da1a0c88b08a47"


@pytest.fixture(scope="module")
def plain_default(tmp_path_factory):
    """The embedded default model (which carries the in-graph NMS) with the NMS taken out."""
    graph, card = strip_nms(default_model().read_bytes(), read_card(default_model()))
    out = tmp_path_factory.mktemp("nms") / "default_plain.onnx"
    out.write_bytes(graph)
    return out


def test_the_default_model_with_its_graph_nms_gives_the_same_results_and_follows_its_parameters(plain_default):
    plain, edited = create_engine("onnxruntime", plain_default), create_engine("onnxruntime", default_model())
    gen = SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4), seed=3)
    pairs = [FramePair(Frame(sp.visible, sp.stamp_visible_ns, "rgb8"), Frame(sp.thermal_raw, sp.stamp_thermal_ns,
                                                                             "mono16")) for sp in gen.pairs(6)]
    cfg_a, cfg_b = PipelineConfig(assume_same_fov=True), PipelineConfig(assume_same_fov=True)
    a, b = Pipeline(plain, cfg_a), Pipeline(edited, cfg_b)
    assert b.graph_nms and not a.graph_nms
    counts = []
    for thr in (0.3, 0.05):     # a parameter change (as the node's on_set_parameters does) reaches the graph
        cfg_a.score_threshold = cfg_b.score_threshold = thr
        n = 0
        for pair in pairs:
            ra, rb = a.process(pair), b.process(pair)
            for f in ("boxes", "scores", "labels", "anchor_index"):
                np.testing.assert_array_equal(getattr(ra.detections, f), getattr(rb.detections, f))
            assert ra.inconsistency.score == rb.inconsistency.score
            assert {k: v.tolist() for k, v in ra.branch_scores.items()} == \
                {k: v.tolist() for k, v in rb.branch_scores.items()}
            n += len(rb.detections)
        counts.append(n)
    assert 0 < counts[0] < counts[1]


def test_a_tensorrt_build_takes_the_nms_out_exactly_and_graph_edit_puts_it_back(plain_default, tmp_path, capsys):
    from ms_perception_training.cli import main
    shipped = read_card(default_model())
    plain = read_card(plain_default)     # the card the stripped model carries
    # byte for byte the graph before the edit: the hash the shipped model had before `graph-edit --nms`
    assert onnx_graph_sha256(plain_default.read_bytes()) == plain.graph_sha256 == SHIPPED_BEFORE_NMS
    assert [s.name for s in plain.inputs] == ["visible", "thermal"] and plain.output(NMS_OUTPUT) is None
    assert [s.name for s in plain.outputs] == [s.name for s in shipped.outputs if s.name != NMS_OUTPUT]
    sess = ort.InferenceSession(str(plain_default), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["visible", "thermal"]
    # graph-edit without --nms has nothing to add and says how to get the NMS; with --nms it rebuilds the shipped graph
    code = main(["graph-edit", str(plain_default), "--out", str(tmp_path / "x.onnx")])
    assert code != 0 and "added with --nms" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert main(["graph-edit", str(plain_default), "--out", str(tmp_path / "y.onnx"), "--nms", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["outputs"][-1] == NMS_OUTPUT
    assert onnx_graph_sha256((tmp_path / "y.onnx").read_bytes()) == shipped.graph_sha256
    assert main(["graph-edit", str(default_model()), "--out", str(tmp_path / "z.onnx"), "--nms"]) != 0
    assert "already has every edit" in capsys.readouterr().err


def test_the_tensorrt_build_parses_the_graph_without_the_nms(tmp_path, monkeypatch):
    """TensorRT cannot be installed here: a stand-in for its builder records what build_engine hands
    the ONNX parser (the real parser and builder run on a Jetson; test/runtime/test_tensorrt_device.py)."""
    import types

    import ms_perception.engines.tensorrt_engine as te
    parsed = []

    class Any:
        WARNING = 2

        def __init__(self, *a, **k):
            pass

        def __getattr__(self, name):
            return lambda *a, **k: Any()

    class Parser(Any):
        num_errors = 0

        def parse(self, data):
            parsed.append(data)
            return True

    class Builder(Any):
        platform_has_fast_fp16 = True

        def build_serialized_network(self, network, config):
            return b"engine"

    trt = types.SimpleNamespace(__version__="10.0", Logger=Any, Builder=Builder, OnnxParser=Parser,
                                MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
                                BuilderFlag=types.SimpleNamespace(FP16=0, INT8=1))
    cudart = types.SimpleNamespace(cudaGetDeviceProperties=lambda d: (0, types.SimpleNamespace(major=8, minor=7)))
    monkeypatch.setattr(te, "_import_trt", lambda: (trt, cudart))
    monkeypatch.setattr(te, "_check", lambda r, what: r[1])
    path, card = te.build_engine(default_model(), tmp_path / "engines")
    assert len(parsed) == 1 and onnx_graph_sha256(parsed[0]) == SHIPPED_BEFORE_NMS
    assert card.output(NMS_OUTPUT) is None and [s.name for s in card.inputs] == ["visible", "thermal"]
    # the cached engine comes back with the card it was built with
    path2, card2 = te.build_engine(default_model(), tmp_path / "engines")
    assert path2 == path and card2.to_dict() == card.to_dict() and len(parsed) == 1


def test_export_puts_the_nms_in_the_graph_on_request(tmp_path):
    import torch
    from pathlib import Path

    from ms_perception.core.postprocess import OUTPUT_STATS
    from ms_perception_training.export.onnx_export import export_onnx
    from ms_perception_training.models.build import build_model
    from ms_perception_training.models.config import load_model_config
    cfg = load_model_config(Path(__file__).resolve().parents[2] / "config/models/default_gaff_three_branch.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():   # spread the scores as training does (untrained, all sit at the 0.01 prior and tie)
        for name, p in model.named_parameters():
            if "cls_logits" in name:
                p.normal_(0.0, 0.3)
    res = export_onnx(model, tmp_path / "nms.onnx", in_graph_nms=True)
    assert res.parity_max_abs[NMS_OUTPUT] == 0.0 and res.parity_max_abs[OUTPUT_STATS] < 1e-5
    assert res.card.output(NMS_OUTPUT) is not None and res.card.input("max_detections").dtype == "int64"
    # the pipeline runs it: its detections are the runtime NMS's on the same frame
    plain_res = export_onnx(model, tmp_path / "plain.onnx")
    gen = SyntheticGenerator(SynthConfig(width=320, height=256, thermal_factor=1), seed=2)
    sp = next(iter(gen.pairs(1)))
    pair = FramePair(Frame(sp.visible, sp.stamp_visible_ns, "rgb8"), Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16"))
    a = Pipeline(create_engine("onnxruntime", plain_res.path), PipelineConfig()).process(pair)
    b = Pipeline(create_engine("onnxruntime", res.path), PipelineConfig()).process(pair)
    assert len(a.detections) > 5
    np.testing.assert_array_equal(a.detections.anchor_index, b.detections.anchor_index)
    np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
    with pytest.raises(ValueError, match="batch-1 detector"):
        export_onnx(model, tmp_path / "dyn.onnx", in_graph_nms=True, dynamic_batch=True, check_parity=False)
