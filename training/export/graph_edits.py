"""Edits of an exported ONNX graph that move exact runtime work into the engine (issue 16).

``add_inconsistency_output`` appends the cross-modality inconsistency of a three-branch
detector (active-learning paper §3.2–3.3; :mod:`ms_perception.core.inconsistency`) to the graph:
per anchor and class

    I = ½ (S(p_v) + S(p_t)) − S(p̄),   S(p) = p ln p + (1 − p) ln(1 − p),   p̄ = (p_v + p_t) / 2

in bits (÷ ln 2), clamped at 0, with p clipped to [1e-7, 1 − 1e-7] — the float32 form of
``prediction_inconsistency`` — then its mean over each pyramid level's anchors, per class:
the output ``inconsistency_level_class`` (N, L, K). The runtime reads those L × K means and
finishes the scale-balanced score exactly as ``detection_inconsistency`` does
(``inconsistency_from_level_class``), instead of reading two (A, K) outputs and computing the
per-anchor entropies in numpy (0.8–1.0 ms per frame for the default model on this CPU). The
numpy function stays the one definition; a test checks the graph against it.

It works on any exported graph, so a deployed model gets it without its checkpoint
(``ms-perception train graph-edit MODEL.onnx --out NEW.onnx``; the embedded default model was
edited this way), and ``train export`` applies it to every three-branch detector. The card gets
the new output and the new graph hash; the weights are untouched (the lineage is kept).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ms_perception.core.card import CARD_KEY, ModelCard, TensorSpec, onnx_graph_sha256
from ms_perception.core.inconsistency import EPS32, INCONSISTENCY_OUTPUT
from ms_perception.core.postprocess import NMS_INPUTS, NMS_OUTPUT, OUTPUT_STATS, stats_names


class GraphEditError(ValueError):
    """The graph cannot take the edit; the message says why."""


def level_counts(card: ModelCard) -> list[int]:
    return [lv.num_anchors * h * w for lv, (h, w) in zip(card.anchor_levels, card.level_sizes)]


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def add_inconsistency_output(model, card: ModelCard):
    """``model`` (onnx.ModelProto of a detector with ``scores_visible`` and ``scores_thermal``)
    gains the output ``inconsistency_level_class``; returns (model, card), both edited copies."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    if card.task != "detection":
        raise GraphEditError(f"{card.name}: in-graph inconsistency is for detectors (task {card.task!r}); "
                             "a segmentation model's score is one pixel mean, computed by the runtime")
    outs = {o.name: o for o in model.graph.output}
    if not {"scores_visible", "scores_thermal"} <= set(outs):
        raise GraphEditError(f"{card.name}: the graph has no scores_visible and scores_thermal outputs (outputs "
                             f"{sorted(outs)}); only a three-branch or decision-level model has an inconsistency score")
    if INCONSISTENCY_OUTPUT in outs:
        raise GraphEditError(f"{card.name}: the graph already has the {INCONSISTENCY_OUTPUT} output")
    if OUTPUT_STATS in outs:
        raise GraphEditError(f"{card.name}: the graph has the {OUTPUT_STATS} output, which must stay the last edit "
                             "(it covers the outputs before it); edit the file that `train export` wrote")
    counts = level_counts(card)
    spec = card.output("scores_visible")
    if spec is None or len(spec.shape) != 3 or sum(counts) != spec.shape[1]:
        raise GraphEditError(f"{card.name}: the card's anchor levels give {sum(counts)} anchors, but scores_visible "
                             f"is {spec.shape if spec else None}; the card does not match the graph")
    opset = _opset(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    p = "ms_inc/"

    def const(name: str, value) -> str:
        arr = np.asarray(value)
        g.initializer.append(numpy_helper.from_array(arr, p + name))
        return p + name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        g.node.append(helper.make_node(op, inputs, [p + out], name=p + out, **attrs))
        return p + out

    lo, hi = const("lo", np.float32(EPS32)), const("hi", np.float32(1 - EPS32))
    one, half = const("one", np.float32(1.0)), const("half", np.float32(0.5))
    inv_ln2 = const("inv_ln2", np.float32(1 / math.log(2.0)))

    def neg_entropy(x: str, tag: str) -> str:
        """p ln p + (1 − p) ln(1 − p) of Clip(x)."""
        c = node("Clip", [x, lo, hi], f"{tag}_clip")
        q = node("Sub", [one, c], f"{tag}_q")
        a = node("Mul", [c, node("Log", [c], f"{tag}_logp")], f"{tag}_plogp")
        b = node("Mul", [q, node("Log", [q], f"{tag}_logq")], f"{tag}_qlogq")
        return node("Add", [a, b], f"{tag}_s")

    mean = node("Mul", [node("Add", ["scores_visible", "scores_thermal"], "sum"), half], "mean")
    s_both = node("Mul", [node("Add", [neg_entropy("scores_visible", "v"), neg_entropy("scores_thermal", "t")],
                               "s_vt"), half], "s_half")
    inc = node("Relu", [node("Mul", [node("Sub", [s_both, neg_entropy(mean, "m")], "js_nats"), inv_ln2], "js")],
               "inc")
    parts, start = [], 0
    axis1 = const("axis1", np.array([1], np.int64))
    for j, n in enumerate(counts):
        if n == 0:
            start += n
            continue
        sl = node("Slice", [inc, const(f"s{j}", np.array([start], np.int64)),
                            const(f"e{j}", np.array([start + n], np.int64)), axis1], f"level{j}")
        if opset >= 18:
            parts.append(node("ReduceMean", [sl, axis1], f"level{j}_mean", keepdims=1))
        else:
            parts.append(node("ReduceMean", [sl], f"level{j}_mean", axes=[1], keepdims=1))
        start += n
    g.node.append(helper.make_node("Concat", parts, [INCONSISTENCY_OUTPUT], axis=1, name=p + "concat"))
    batch = spec.shape[0]
    k = spec.shape[2]
    n_levels = len(parts)
    batch_dim = outs["scores_visible"].type.tensor_type.shape.dim[0]
    out_vi = helper.make_tensor_value_info(INCONSISTENCY_OUTPUT, TensorProto.FLOAT, [None, n_levels, k])
    out_vi.type.tensor_type.shape.dim[0].CopyFrom(batch_dim)
    g.output.append(out_vi)
    return _with_card(m, card, TensorSpec(INCONSISTENCY_OUTPUT, [batch, n_levels, k], "float32",
                                          "mean cross-modality inconsistency (bits) per pyramid level and class "
                                          "(N, L, K)"))


def add_output_stats(model, card: ModelCard):
    """``model`` gains the output ``output_stats`` (T, 3): the sum, min and max of each of the card's
    T outputs, in the card's order. The runtime checks every output from these 3T numbers instead of
    reading each (A, K) output twice after the engine (0.2 ms per frame for the default model):
    a finite sum means every element is finite (a NaN or inf anywhere makes any sum NaN or inf), and
    then min and max are exact; a sum that is not finite sends the runtime to the full check of that
    output, which names what is wrong. Applied last (a later edit would leave an output unchecked:
    refused). Returns (model, card), both edited copies."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    outs = [o.name for o in model.graph.output if o.name != NMS_OUTPUT]   # row indices: checked by the runtime
    if OUTPUT_STATS in outs:
        raise GraphEditError(f"{card.name}: the graph already has the {OUTPUT_STATS} output")
    names = stats_names(o.name for o in card.outputs)
    if sorted(names) != sorted(outs):
        raise GraphEditError(f"{card.name}: the card's outputs {names} are not the graph's {outs}; the card does "
                             "not match the graph")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    p = "ms_stats/"
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), p + "one"))
    g.initializer.append(numpy_helper.from_array(np.array([len(names), 3], np.int64), p + "shape"))
    parts = []
    for n in names:
        src = n
        if card.output(n).dtype != "float32":
            src = p + n + "/float"
            g.node.append(helper.make_node("Cast", [n], [src], name=src, to=TensorProto.FLOAT))
        for op in ("ReduceSum", "ReduceMin", "ReduceMax"):   # no axes: every axis, in every opset
            r = f"{p}{n}/{op}"
            g.node.append(helper.make_node(op, [src], [r], name=r, keepdims=0))
            g.node.append(helper.make_node("Reshape", [r, p + "one"], [r + "/1"], name=r + "/1"))
            parts.append(r + "/1")
    g.node.append(helper.make_node("Concat", parts, [p + "flat"], axis=0, name=p + "flat"))
    g.node.append(helper.make_node("Reshape", [p + "flat", p + "shape"], [OUTPUT_STATS], name=p + "stats"))
    g.output.append(helper.make_tensor_value_info(OUTPUT_STATS, TensorProto.FLOAT, [len(names), 3]))
    return _with_card(m, card, TensorSpec(OUTPUT_STATS, [len(names), 3], "float32",
                                          "sum, min, max of each output, in the card's order: " + ", ".join(names)))


NMS_PREFIX = "ms_nms/"


def add_nms(model, card: ModelCard):
    """``model`` (a detector whose graph decodes its boxes: outputs ``scores`` (1, A, K) and
    ``boxes`` (1, A, 4) xyxy) gains ONNX NonMaxSuppression over the fused scores: class-aware (per
    class), keeping a box when its score is above ``score_threshold`` and dropping one whose IoU with
    a kept box of its class is above ``nms_iou`` — the rule of ``postprocess.select_detections``,
    which the runtime otherwise runs after the engine (0.25 ms per frame for the default model on
    this CPU, cold caches; the graph's NMS costs less than the noise of the engine time). The three
    thresholds are graph inputs the runtime feeds from its parameters (``score_threshold``,
    ``nms_iou``: float32 (1,); ``max_detections``: int64 (1,), the most kept per class), so a
    parameter change needs no new model; the output ``detections_index`` (N, 3) int64 holds the
    kept [batch, class, anchor] rows (``postprocess.detections_from_index`` reads them). Unlike the
    runtime path there is no pre-NMS top-1000 cut (every candidate takes part).

    TensorRT cannot give a data-dependent output shape to this runtime's engine, so
    ``strip_nms`` (ms_perception.engines.nms_strip) removes exactly these nodes before an engine is
    built, and that engine uses the runtime's NMS. Returns (model, card), both edited copies."""
    import onnx
    from onnx import TensorProto, helper
    if card.task != "detection" or card.box_decoding != "in_graph":
        raise GraphEditError(f"{card.name}: in-graph NMS needs a detector whose graph decodes its boxes (task "
                             f"{card.task!r}, box_decoding {card.box_decoding!r}); re-export with decoded boxes")
    outs = {o.name for o in model.graph.output}
    if not {"scores", "boxes"} <= outs:
        raise GraphEditError(f"{card.name}: the graph has no scores and boxes outputs (outputs {sorted(outs)})")
    if NMS_OUTPUT in outs or any(i.name in NMS_INPUTS for i in model.graph.input):
        raise GraphEditError(f"{card.name}: the graph already has the in-graph NMS ({NMS_OUTPUT})")
    spec = card.output("scores")
    if spec is None or spec.shape[0] != 1:
        raise GraphEditError(f"{card.name}: in-graph NMS is for a batch-1 model (scores {spec.shape if spec else None}); "
                             "the runtime reads batch item 0")
    if _opset(model) < 11:
        raise GraphEditError(f"{card.name}: NonMaxSuppression with these inputs needs opset >= 11 (graph opset "
                             f"{_opset(model)}); re-export")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    p = NMS_PREFIX
    g.node.append(helper.make_node("Transpose", ["scores"], [p + "scores_ka"], name=p + "scores_ka", perm=[0, 2, 1]))
    g.node.append(helper.make_node("NonMaxSuppression", ["boxes", p + "scores_ka", "max_detections", "nms_iou",
                                                         "score_threshold"], [NMS_OUTPUT], name=p + "nms",
                                   center_point_box=0))
    g.input.extend([helper.make_tensor_value_info("score_threshold", TensorProto.FLOAT, [1]),
                    helper.make_tensor_value_info("nms_iou", TensorProto.FLOAT, [1]),
                    helper.make_tensor_value_info("max_detections", TensorProto.INT64, [1])])
    g.output.append(helper.make_tensor_value_info(NMS_OUTPUT, TensorProto.INT64, ["detections", 3]))
    m, new = _with_card(m, card, TensorSpec(NMS_OUTPUT, [0, 3], "int64",
                                            "class-aware NMS survivors, rows [batch, class, anchor] (N, 3); N varies "
                                            "(the shape's 0)"))
    new.inputs += [TensorSpec("score_threshold", [1], "float32", "keep scores above this (runtime parameter)"),
                   TensorSpec("nms_iou", [1], "float32", "suppress IoU above this within a class (runtime parameter)"),
                   TensorSpec("max_detections", [1], "int64", "the most kept per class (runtime parameter)")]
    return _embed(m, new), new


def _embed(m, card: ModelCard):
    kept = [e for e in m.metadata_props if e.key != CARD_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    entry = m.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    return m


def _with_card(m, card: ModelCard, spec: TensorSpec):
    """Check the edited graph; the card gains ``spec`` and the new graph hash (the card's own metadata
    entry is not hashed) and is embedded."""
    import onnx
    onnx.checker.check_model(m)
    new = ModelCard.from_dict(card.to_dict())
    new.notes = (new.notes + "; " if new.notes else "") + (
        f"graph edit: {spec.name} output added (training/export/graph_edits.py)")
    new.outputs.append(spec)
    kept = [e for e in m.metadata_props if e.key != CARD_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    new.graph_sha256 = onnx_graph_sha256(m.SerializeToString())
    entry = m.metadata_props.add()
    entry.key, entry.value = CARD_KEY, new.to_json()
    return m, new


def edit_file(src: str | Path, out: str | Path, nms: bool = False) -> ModelCard:
    """Read an exported model, add what it lacks (the in-graph inconsistency of a three-branch
    detector, then the output statistics; with ``nms`` also the in-graph NMS, which needs no
    statistics and so may follow them), write ``out`` and its ``.card.json`` (atomically).
    Refuses a graph whose card hash does not match it (edited elsewhere) and one with every edit."""
    import onnx

    from ms_perception.core.atomic import atomic_write
    from ms_perception.core.card import read_card
    src, out = Path(src), Path(out)
    card = read_card(src)
    actual = onnx_graph_sha256(src.read_bytes())
    if actual != card.graph_sha256:
        raise GraphEditError(f"{src}: the card's graph_sha256 is not the hash of this graph; edit the file that "
                             "`train export` wrote, or re-export it")
    model = onnx.load(str(src))
    outs = {o.name for o in model.graph.output}
    todo = []
    if card.task == "detection" and INCONSISTENCY_OUTPUT not in outs and {"scores_visible", "scores_thermal"} <= outs:
        todo.append(add_inconsistency_output)    # refuses a graph with output_stats already, naming why
    if nms and NMS_OUTPUT not in outs:
        todo.append(add_nms)
    if OUTPUT_STATS not in outs:
        todo.append(add_output_stats)
    if not todo:
        have = ', '.join(sorted(outs & {INCONSISTENCY_OUTPUT, OUTPUT_STATS, NMS_OUTPUT}))
        raise GraphEditError(f"{src}: the graph already has every edit asked for ({have}); nothing to add"
                             + ("" if nms or NMS_OUTPUT in outs else " (the in-graph NMS is added with --nms)"))
    new = card
    for edit in todo:
        model, new = edit(model, new)
    from ms_perception_training.export.onnx_export import card_json
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, model.SerializeToString())
    atomic_write(out.with_suffix(".card.json"), card_json(new))
    return new
