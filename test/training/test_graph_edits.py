"""The in-graph cross-modality inconsistency means (training/export/graph_edits.py, issue 16).

The graph must give the numpy definition's numbers (core/inconsistency.py), on a hand-checkable
graph, on the embedded default model, and through `train export` and `train graph-edit`; the
runtime must read them and give the same score as before."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ms_perception.build import default_model
from ms_perception.core.anchors import AnchorLevel
from ms_perception.core.card import CARD_KEY, ModelCard, Normalization, TensorSpec, onnx_graph_sha256, read_card
from ms_perception.core.inconsistency import (
    INCONSISTENCY_OUTPUT,
    detection_inconsistency,
    inconsistency_from_level_class,
    level_class_means,
)
from ms_perception.core.postprocess import OUTPUT_STATS
from ms_perception_training.export.graph_edits import (
    GraphEditError,
    add_inconsistency_output,
    add_output_stats,
    edit_file,
    level_counts,
)


def _tiny(level_sizes=((1, 2), (1, 1)), k=1):
    """A graph whose mono outputs are its inputs: level 0 has 2 anchors, level 1 has 1."""
    a = sum(h * w for h, w in level_sizes)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, a, k]) for n in ("pv", "pt")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, a, k])
            for n in ("scores", "scores_visible", "scores_thermal")]
    nodes = [helper.make_node("Identity", ["pv"], ["scores_visible"]),
             helper.make_node("Identity", ["pt"], ["scores_thermal"]),
             helper.make_node("Max", ["pv", "pt"], ["scores"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", ins, outs), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec = [TensorSpec(n, [1, a, k], "float32") for n in ("scores", "scores_visible", "scores_thermal")]
    card = ModelCard("tiny", "detection", ["person"][:k] + [f"c{i}" for i in range(1, k)],
                     [TensorSpec("visible", [1, 3, 8, 8], "uint8")], spec, Normalization([0, 0, 0], [1, 1, 1]), None,
                     branches=["fused", "visible", "thermal"],
                     anchor_levels=[AnchorLevel(stride=8 * 2 ** j, sizes=[8.0], aspect_ratios=[1.0]) for j in range(len(level_sizes))],
                     level_sizes=[list(s) for s in level_sizes])
    return model, card


def _run(model, feeds, names):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


def test_the_graph_computes_the_papers_score_on_hand_values():
    """Level 0: anchor (p_v, p_t) = (1, 0) gives I = H(½) − ½(H(1) + H(0)) = 1 bit; (½, ½) gives 0;
    mean 0.5. Level 1: (0.3, 0.3) gives 0. Image score (scale-balanced) = (0.5 + 0) / 2 = 0.25."""
    model, card = _tiny()
    edited, new = add_inconsistency_output(model, card)
    pv = np.array([[[1.0], [0.5], [0.3]]], np.float32)
    pt = np.array([[[0.0], [0.5], [0.3]]], np.float32)
    (lc,) = _run(edited, {"pv": pv, "pt": pt}, [INCONSISTENCY_OUTPUT])
    assert lc.shape == (1, 2, 1)
    np.testing.assert_allclose(lc[0], [[0.5], [0.0]], atol=2e-6)      # the 1e-7 clip: |error| < 2e-6 bits
    s = inconsistency_from_level_class(lc[0])
    assert s.score == pytest.approx(0.25, abs=2e-6)
    assert s.per_level == pytest.approx([0.5, 0.0], abs=2e-6)
    # a one-sided disagreement: p_v = 0.9, p_t = 0.1 (I = 1 − H(0.9) = 0.531 bits) on the single level-1 anchor
    pv2 = np.array([[[0.5], [0.5], [0.9]]], np.float32)
    pt2 = np.array([[[0.5], [0.5], [0.1]]], np.float32)
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    (lc2,) = _run(edited, {"pv": pv2, "pt": pt2}, [INCONSISTENCY_OUTPUT])
    np.testing.assert_allclose(lc2[0], [[0.0], [1 - h]], atol=2e-6)
    # the card describes the new output and the graph it travels with
    assert new.output(INCONSISTENCY_OUTPUT).shape == [1, 2, 1]
    assert new.graph_sha256 == onnx_graph_sha256(edited.SerializeToString())
    assert json.loads(next(e.value for e in edited.metadata_props if e.key == CARD_KEY))["graph_sha256"] == new.graph_sha256
    assert "graph edit" in new.notes and card.output(INCONSISTENCY_OUTPUT) is None   # the input card is untouched


def test_the_graph_equals_the_numpy_definition_on_random_probabilities_and_empty_levels():
    model, card = _tiny(level_sizes=((3, 4), (0, 0), (2, 2)), k=3)
    edited, new = add_inconsistency_output(model, card)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pv = rng.random((1, 16, 3)).astype(np.float32) ** 3       # many near 0, some near 1
        pt = rng.random((1, 16, 3)).astype(np.float32)
        (lc,) = _run(edited, {"pv": pv, "pt": pt}, [INCONSISTENCY_OUTPUT])
        assert lc.shape == (1, 2, 3)      # the empty level is skipped, as the numpy score skips it
        want = level_class_means(pv[0], pt[0], level_counts(card))
        np.testing.assert_allclose(lc[0], want, atol=1e-6)
        a, b = inconsistency_from_level_class(lc[0]), detection_inconsistency(pv[0], pt[0], level_counts(card))
        assert a.score == pytest.approx(b.score, abs=1e-6)
        assert a.per_class == pytest.approx(b.per_class, abs=1e-6)


def test_the_graph_gives_each_output_s_sum_min_and_max_on_hand_values():
    """Three outputs of 3 anchors: scores_visible (1, .5, .3) -> sum 1.8, min .3, max 1; scores_thermal
    (0, .5, .3) -> .8, 0, .5; scores = max of the two (1, .5, .3) -> 1.8, .3, 1; rows in the card's
    order. After the means were added, their row comes too; a second edit is refused."""
    model, card = _tiny()
    edited, new = add_output_stats(model, card)
    assert [o.name for o in new.outputs] == ["scores", "scores_visible", "scores_thermal", OUTPUT_STATS]
    assert new.output(OUTPUT_STATS).shape == [3, 3]
    pv = np.array([[[1.0], [0.5], [0.3]]], np.float32)
    pt = np.array([[[0.0], [0.5], [0.3]]], np.float32)
    (st,) = _run(edited, {"pv": pv, "pt": pt}, [OUTPUT_STATS])
    np.testing.assert_allclose(st, [[1.8, 0.3, 1.0], [1.8, 0.3, 1.0], [0.8, 0.0, 0.5]], atol=1e-6)
    with pytest.raises(GraphEditError, match="already has"):
        add_output_stats(edited, new)
    with pytest.raises(GraphEditError, match="must stay the last edit"):
        add_inconsistency_output(edited, new)
    both, card2 = add_output_stats(*add_inconsistency_output(model, card))
    (st2,) = _run(both, {"pv": pv, "pt": pt}, [OUTPUT_STATS])
    assert st2.shape == (4, 3)     # level 0 mean I = 0.5, level 1: 0 -> sum 0.5, min 0, max 0.5
    np.testing.assert_allclose(st2[3], [0.5, 0.0, 0.5], atol=1e-5)   # p clipped to [1e-7, 1 - 1e-7]


def test_the_edit_refuses_what_it_cannot_do(tmp_path):
    model, card = _tiny()
    edited, new = add_inconsistency_output(model, card)
    with pytest.raises(GraphEditError, match="already has"):
        add_inconsistency_output(edited, new)
    card.level_sizes = [[1, 3], [1, 1]]
    with pytest.raises(GraphEditError, match="does not match the graph"):
        add_inconsistency_output(model, card)
    seg = ModelCard.from_dict({**new.to_dict(), "task": "segmentation"})
    with pytest.raises(GraphEditError, match="for detectors"):
        add_inconsistency_output(model, seg)
    # a file whose card does not hash its graph (edited by hand) is refused
    entry = edited.metadata_props.add()
    entry.key, entry.value = "other", "x"
    onnx.save(edited, str(tmp_path / "m.onnx"))
    with pytest.raises(GraphEditError, match="not the hash of this graph"):
        edit_file(tmp_path / "m.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_the_embedded_default_model_computes_the_means_in_its_graph():
    """The shipped model was edited (`train graph-edit`); on a real frame pair its in-graph means
    equal the numpy definition on its own mono outputs, and the pipeline uses them."""
    from ms_perception.build import build_pipeline, resolve
    from ms_perception.core.frames import Frame, FramePair
    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
    card = read_card(default_model())
    assert card.output(INCONSISTENCY_OUTPUT) is not None
    assert card.graph_sha256 == onnx_graph_sha256(default_model().read_bytes())
    pipe = build_pipeline(resolve({"capture_enabled": False}))
    gen = SyntheticGenerator(SynthConfig(width=640, height=512, night_fraction=0.5), seed=4)
    seen = []
    for sp in gen.pairs(3):
        pair = FramePair(Frame(sp.visible, sp.stamp_visible_ns, "rgb8"), Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16"))
        feeds, _, _ = pipe.preprocess(pair)
        out = pipe.engine.infer(feeds)
        want = detection_inconsistency(out["scores_visible"][0], out["scores_thermal"][0], pipe.level_counts)
        got = pipe.process(pair).inconsistency
        assert got.score == pytest.approx(want.score, rel=1e-5, abs=1e-7)
        assert got.per_level == pytest.approx(want.per_level, rel=1e-5, abs=1e-7)
        assert got.per_class == pytest.approx(want.per_class, rel=1e-5, abs=1e-7)
        seen.append(got.score)
    assert len(set(seen)) == 3 and min(seen) > 0


def test_export_adds_the_means_and_graph_edit_adds_them_to_an_old_export(tmp_path, capsys):
    import torch  # noqa: F401  (export needs the training stack)
    from ms_perception_training.cli import main
    from ms_perception_training.export.onnx_export import export_onnx
    from ms_perception_training.models.build import build_model
    from ms_perception_training.models.config import load_model_config
    from pathlib import Path
    cfg = load_model_config(Path(__file__).resolve().parents[2] / "config/models/default_gaff_three_branch.yaml")
    model = build_model(cfg).eval()
    res = export_onnx(model, tmp_path / "new.onnx")
    assert res.card.output(INCONSISTENCY_OUTPUT) is not None
    assert res.parity_max_abs[INCONSISTENCY_OUTPUT] < 1e-6
    assert res.parity_max_abs[OUTPUT_STATS] < 1e-5 and res.card.outputs[-1].name == OUTPUT_STATS
    old = export_onnx(model, tmp_path / "old.onnx", in_graph_inconsistency=False, output_stats=False)
    assert old.card.output(INCONSISTENCY_OUTPUT) is None and old.card.output(OUTPUT_STATS) is None
    assert main(["graph-edit", str(tmp_path / "old.onnx"), "--out", str(tmp_path / "edited.onnx"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["outputs"][-2:] == [INCONSISTENCY_OUTPUT, OUTPUT_STATS]
    edited = read_card(tmp_path / "edited.onnx")
    assert json.loads((tmp_path / "edited.card.json").read_text())["graph_sha256"] == edited.graph_sha256
    # the same graph as a fresh export: same outputs on the same inputs
    rng = np.random.default_rng(1)
    feeds = {"visible": rng.integers(0, 256, (1, 3, 256, 320)).astype(np.uint8),
             "thermal": rng.integers(0, 256, (1, 1, 256, 320)).astype(np.uint8)}
    a = _run(onnx.load(str(tmp_path / "new.onnx")), feeds, [INCONSISTENCY_OUTPUT, "scores", OUTPUT_STATS])
    b = _run(onnx.load(str(tmp_path / "edited.onnx")), feeds, [INCONSISTENCY_OUTPUT, "scores", OUTPUT_STATS])
    np.testing.assert_allclose(a[0], b[0], atol=1e-7)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[2], b[2], rtol=1e-5)
    # an export with the statistics but not the means cannot take the means (they would go unchecked)
    export_onnx(model, tmp_path / "stats_only.onnx", in_graph_inconsistency=False)
    code = main(["graph-edit", str(tmp_path / "stats_only.onnx"), "--out", str(tmp_path / "x.onnx")])
    assert code != 0 and "must stay the last edit" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    # a model without mono branches is refused with the reason, nothing written
    code = main(["graph-edit", str(default_model()), "--out", str(tmp_path / "twice.onnx")])
    assert code != 0 and "already has" in capsys.readouterr().err
    assert not (tmp_path / "twice.onnx").exists()
