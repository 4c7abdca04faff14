"""ONNX export with the model card (DESIGN.md "The seam").

The exported graph:
  inputs   visible (N, 3, H, W) and, if the model uses it, thermal (N, 1, h, w) at the
           thermal camera's resolution (h = H / sqrt(thermal_factor)); uint8 by default,
           normalized in the graph ((x / 255 - mean) / std), or float32 already normalized.
  outputs  detection: ``scores`` (N, A, K) class probabilities (sigmoid; SSD: softmax
           without the background column) and ``boxes`` (N, A, 4) xyxy input pixels
           (in-graph decoding, default) or ``deltas`` (N, A, 4) with the anchor layout in
           the card; segmentation: ``probs`` (N, K, H, W). Each extra branch adds
           ``scores_<branch>`` / ``probs_<branch>`` (visible, thermal) for the
           cross-modality inconsistency score.
Static shapes by default; ``dynamic_batch`` makes N symbolic. BatchNorm is folded first.
Export-only code (normalization, flattening, decoding) lives here, not in the models.
"""
from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ms_perception_training.assign import decode_boxes_torch  # noqa: F401 (re-exported)
from ms_perception.core import jsonio
from ms_perception_training.models.bn_fold import fold_batchnorm, fold_thermal_repeat
from ms_perception_training.models.config import ModelConfig
from ms_perception_training.models.multispectral import MultispectralModel, flatten_levels
from torch import nn

from ms_perception.core.anchors import BoxCoder, grid_anchors
from ms_perception.core.atomic import atomic_write
from ms_perception.core.card import CARD_KEY, ModelCard, Normalization, TensorSpec
from ms_perception.core.inconsistency import INCONSISTENCY_OUTPUT, level_class_means
from ms_perception.core.postprocess import (
    NMS_OUTPUT,
    OUTPUT_STATS,
    detections_from_index,
    output_stats,
    select_detections,
    stats_names,
)
from ms_perception_training.export.graph_edits import add_inconsistency_output, add_nms, add_output_stats, level_counts

OPSET = 17
OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")


class ExportWrapper(nn.Module):
    """Normalization + model + flattening/activation/decoding, with plain tensor outputs."""

    def __init__(self, model: MultispectralModel, uint8_input: bool = True, decode: bool = True,
                 anchors: np.ndarray | None = None):
        super().__init__()
        cfg = model.cfg
        self.model, self.uint8, self.decode = model, uint8_input, decode
        self.task, self.act = cfg.task, model.score_activation
        self.k = cfg.num_classes
        self.branches = model.output_branches
        self.register_buffer("v_mean", torch.tensor(cfg.input.visible_mean).view(1, 3, 1, 1))
        self.register_buffer("v_std", torch.tensor(cfg.input.visible_std).view(1, 3, 1, 1))
        self.t_mean, self.t_std = cfg.input.thermal_mean, cfg.input.thermal_std
        self.uses_v, self.uses_t = cfg.uses_visible, cfg.uses_thermal
        self.register_buffer("anchors", torch.from_numpy(anchors) if anchors is not None else torch.zeros(0, 4))
        self.coder = BoxCoder(tuple(cfg.head.box_coder_weights))

    def output_names(self) -> list[str]:
        names = []
        for i, b in enumerate(self.branches):
            sfx = "" if i == 0 else f"_{b}"
            if self.task == "segmentation":
                names.append("probs" + sfx)
            else:
                names.append("scores" + sfx)
                if i == 0:
                    names.append("boxes" if self.decode else "deltas")
        return names

    def forward(self, visible: torch.Tensor | None = None, thermal: torch.Tensor | None = None):
        v, t = visible, thermal
        if self.uint8:  # otherwise the runtime feeds float32 already normalized (card: in_graph False)
            v = (visible.float() / 255.0 - self.v_mean) / self.v_std if visible is not None else None
            t = (thermal.float() / 255.0 - self.t_mean) / self.t_std if thermal is not None else None
        out = self.model(v, t)
        res = []
        for i, b in enumerate(self.branches):
            br = out.branches[b]
            if self.task == "segmentation":
                res.append(torch.softmax(br.mask_logits, 1))
                continue
            if self.act == "sigmoid":
                scores = torch.sigmoid(flatten_levels(br.cls_logits, self.k))
            else:  # SSD: softmax over K+1, background column dropped
                scores = torch.softmax(flatten_levels(br.cls_logits, self.k + 1), -1)[..., 1:]
            res.append(scores)
            if i == 0:
                deltas = flatten_levels(br.box_deltas, 4)
                res.append(decode_boxes_torch(self.anchors, deltas, self.coder.weights, self.coder.clip)
                           if self.decode else deltas)
        return tuple(res)


@dataclass
class ExportResult:
    path: Path
    card: ModelCard
    parity_max_abs: dict[str, float]
    unsupported_ops: list[str]
    folded_bn: int


def _dummy_inputs(cfg: ModelConfig, batch: int, uint8: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.input.height, cfg.input.width
    h, w = cfg.input.thermal_hw

    def make(shape):
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.int64)
        return x.to(torch.uint8) if uint8 else ((x.float() / 255.0) - 0.45) / 0.225

    v = make((batch, 3, H, W)) if cfg.uses_visible else None
    t = make((batch, 1, h, w)) if cfg.uses_thermal else None
    return v, t


def build_card(cfg: ModelConfig, wrapper: ExportWrapper, outputs: list[torch.Tensor], level_sizes, anchor_levels,
               batch: int) -> ModelCard:
    dt = "uint8" if wrapper.uint8 else "float32"
    inputs = []
    if cfg.uses_visible:
        inputs.append(TensorSpec("visible", [batch, 3, cfg.input.height, cfg.input.width], dt, "RGB, channel-first"))
    if cfg.uses_thermal:
        h, w = cfg.input.thermal_hw
        inputs.append(TensorSpec("thermal", [batch, 1, h, w], dt,
                                 "thermal, 8-bit after the runtime's radiometric window, registered to visible"))
    meaning = {"scores": "class probabilities per anchor (N, A, K)", "boxes": "xyxy input pixels per anchor",
               "deltas": "box deltas per anchor (decode with anchor_levels)", "probs": "class probabilities (N, K, H, W)"}
    outs = [TensorSpec(n, list(o.shape), "float32", meaning.get(n.split("_")[0], ""))
            for n, o in zip(wrapper.output_names(), outputs)]
    vis = Normalization(list(cfg.input.visible_mean), list(cfg.input.visible_std), 255.0, wrapper.uint8)
    th = Normalization([cfg.input.thermal_mean], [cfg.input.thermal_std], 255.0, wrapper.uint8) if cfg.uses_thermal else None
    from ms_perception_training.config import to_dict
    return ModelCard(name=cfg.name, task=cfg.task, class_names=list(cfg.class_names), inputs=inputs, outputs=outs,
                     visible_norm=vis, thermal_norm=th, thermal_factor=cfg.input.thermal_factor,
                     branches=list(wrapper.branches),
                     box_decoding=("in_graph" if wrapper.decode else "anchors") if cfg.task == "detection" else "none",
                     anchor_levels=list(anchor_levels), level_sizes=[list(s) for s in level_sizes],
                     box_coder_weights=list(cfg.head.box_coder_weights), score_activation="probabilities",
                     config=to_dict(cfg))


def export_onnx(model: MultispectralModel, out: str | Path, *, uint8_input: bool = True, decode: bool = True,
                batch: int = 1, dynamic_batch: bool = False, fold_bn: bool = True, opset: int = OPSET,
                check_parity: bool = True, notes: str = "", lineage: dict | None = None,
                in_graph_inconsistency: bool = True, fold_thermal: bool = True,
                output_stats: bool = True, in_graph_nms: bool = False) -> ExportResult:
    """Export ``model`` to ``out`` (written atomically) and return the card and checks. A three-branch
    detector also gets the in-graph inconsistency means (graph_edits.add_inconsistency_output).
    ``fold_thermal``: a thermal image repeated to 3 channels enters the first conv once, with the
    kernels summed (bn_fold.fold_thermal_repeat); parity is checked against the unfolded model.
    ``output_stats``: the graph also gives the sum, min and max of each output, from which the
    runtime checks them (graph_edits.add_output_stats; checked against numpy on the outputs).
    ``in_graph_nms``: the class-aware NMS in the graph too (graph_edits.add_nms: batch-1 detectors
    with decoded boxes; its rows are checked against the runtime's NMS on the export's outputs)."""
    cfg = model.cfg
    model = copy.deepcopy(model).eval()
    folded = fold_batchnorm(model) if fold_bn else 0
    unfolded = copy.deepcopy(model) if fold_thermal and check_parity else model
    if fold_thermal:
        fold_thermal_repeat(model)
    v, t = _dummy_inputs(cfg, batch, uint8_input)
    anchors, level_sizes, levels = None, [], []
    if cfg.task == "detection":
        with torch.no_grad():
            probe = model(_dummy_inputs(cfg, 1, False)[0], _dummy_inputs(cfg, 1, False)[1])
        level_sizes = [tuple(x.shape[-2:]) for x in probe.main.cls_logits]
        levels = model.anchor_levels()
        anchors = grid_anchors(levels, level_sizes)
    wrapper = ExportWrapper(model, uint8_input, decode, anchors).eval()
    with torch.no_grad():
        ref = wrapper(v, t)
    args = tuple(x for x in (v, t) if x is not None)
    in_names = [n for n, x in (("visible", v), ("thermal", t)) if x is not None]
    out_names = wrapper.output_names()
    dyn = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else None

    class _Positional(nn.Module):  # the exporter passes inputs positionally
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, *xs):
            kw = dict(zip(in_names, xs))
            return self.w(kw.get("visible"), kw.get("thermal"))

    buf = io.BytesIO()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Positional(wrapper).eval(), args, buf, input_names=in_names, output_names=out_names,
                          opset_version=opset, dynamo=False, dynamic_axes=dyn, do_constant_folding=True)
    import onnx
    m = onnx.load_from_string(buf.getvalue())
    graph_bytes = m.SerializeToString()
    card = build_card(cfg, wrapper, list(ref), level_sizes, levels, batch)
    card.graph_sha256 = hashlib.sha256(graph_bytes).hexdigest()
    card.notes = notes
    card.lineage = dict(lineage or {})
    edits = []
    if in_graph_inconsistency and cfg.task == "detection" and {"scores_visible", "scores_thermal"} <= set(out_names):
        edits.append(add_inconsistency_output)
    if in_graph_nms:
        if cfg.task != "detection" or not decode or batch != 1 or dynamic_batch:
            raise ValueError("in-graph NMS is for a batch-1 detector with decoded boxes (no --no-decode, "
                             "--batch 1, no --dynamic-batch)")
        edits.append(add_nms)
    if output_stats:
        edits.append(add_output_stats)      # covers every output before it but the NMS rows
    for edit in edits:
        m, card = edit(m, card)             # each embeds the card
    if not edits:
        entry = m.metadata_props.add()
        entry.key, entry.value = CARD_KEY, card.to_json()
    unsupported = unsupported_ops(m)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, m.SerializeToString())
    wrapper.eval()  # the exporter restores the wrapper's previous mode; make sure it is eval
    parity = {}
    if check_parity:
        reference = wrapper if unfolded is model else ExportWrapper(unfolded, uint8_input, decode, anchors).eval()
        parity = onnx_parity(out, reference, v, t, in_names, out_names, card)
        if card.output(INCONSISTENCY_OUTPUT) is not None:   # the graph's means vs the numpy definition
            parity[INCONSISTENCY_OUTPUT] = inconsistency_parity(out, card, v, t, in_names)
        if card.output(OUTPUT_STATS) is not None:            # the graph's sum/min/max vs numpy on its outputs
            parity[OUTPUT_STATS] = output_stats_parity(out, card, v, t, in_names)
        if card.output(NMS_OUTPUT) is not None:              # the graph's NMS rows vs the runtime's NMS
            parity[NMS_OUTPUT] = nms_parity(out, card, v, t, in_names)
    return ExportResult(out, card, parity, unsupported, folded)


def _feeds(card: ModelCard, v, t, in_names) -> dict:
    """The export check's inputs, with the pipeline's default NMS thresholds when the graph has the NMS."""
    feeds = {n: x.numpy() for n, x in zip(in_names, (x for x in (v, t) if x is not None))}
    if card.output(NMS_OUTPUT) is not None:
        from ms_perception.core.pipeline import PipelineConfig
        c = PipelineConfig()
        feeds.update(score_threshold=np.array([c.score_threshold], np.float32),
                     nms_iou=np.array([c.nms_iou], np.float32), max_detections=np.array([c.max_detections], np.int64))
    return feeds


def nms_parity(path, card: ModelCard, v, t, in_names) -> float:
    """The fraction of detections in which the graph's NMS rows and the runtime's NMS
    (postprocess.select_detections, no pre-NMS cut) differ on the export's own outputs (0.0: the
    same detections in the same order), at the default thresholds and at a score threshold that
    keeps the top 1 % of the scores (an untrained model scores nothing above 0.3). Only exactly tied
    scores can make them differ (which of two equal scores comes first): an untrained model, whose
    scores all sit near the prior 0.01, has hundreds of ties; a trained one next to none."""
    import onnxruntime as ort

    from ms_perception.core.pipeline import PipelineConfig
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(card, v, t, in_names)
    scores, = sess.run(["scores"], feeds)
    c, worst = PipelineConfig(), 0.0
    for thr in (c.score_threshold, float(np.quantile(scores[0], 0.99))):
        feeds["score_threshold"] = np.array([thr], np.float32)
        scores, boxes, index = sess.run(["scores", "boxes", NMS_OUTPUT], feeds)
        got = detections_from_index(index, scores[0], boxes[0], c.max_detections)
        want = select_detections(scores[0], boxes[0], float(np.float32(thr)), c.nms_iou, c.max_detections,
                                 pre_nms_top_k=scores.shape[1] * scores.shape[2])
        a = list(zip(got.anchor_index.tolist(), got.labels.tolist()))
        b = list(zip(want.anchor_index.tolist(), want.labels.tolist()))
        n = max(len(a), len(b))
        if n:
            worst = max(worst, sum(x != y for x, y in zip(a, b)) / n + abs(len(a) - len(b)) / n)
    return round(worst, 4)


def inconsistency_parity(path, card: ModelCard, v, t, in_names) -> float:
    """Max |graph − level_class_means(numpy)| of the in-graph inconsistency means, every batch item."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sv, st, got = sess.run(["scores_visible", "scores_thermal", INCONSISTENCY_OUTPUT], _feeds(card, v, t, in_names))
    counts = level_counts(card)
    return float(max(np.abs(got[i] - level_class_means(sv[i], st[i], counts)).max() for i in range(len(got))))


def output_stats_parity(path, card: ModelCard, v, t, in_names) -> float:
    """Max relative |graph − numpy| of ``output_stats`` (sum, min, max of each output, all items)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = stats_names(o.name for o in card.outputs)
    got = sess.run([*names, OUTPUT_STATS], _feeds(card, v, t, in_names))
    want = output_stats(dict(zip(names, got)), names).astype(np.float64)
    return float((np.abs(got[-1] - want) / np.maximum(np.abs(want), 1.0)).max())


def onnx_parity(path, wrapper, v, t, in_names, out_names, card: ModelCard | None = None) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| per output on the same inputs."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(card, v, t, in_names) if card is not None else \
        {n: x.numpy() for n, x in zip(in_names, (x for x in (v, t) if x is not None))}
    got = sess.run(out_names, feeds)
    with torch.no_grad():
        ref = wrapper(v, t)
    return {n: float(np.abs(g - r.numpy()).max()) for n, g, r in zip(out_names, got, ref)}


def supported_ops() -> set[str]:
    ops = set()
    for line in OPS_FILE.read_text().splitlines():
        if not line.startswith("#"):
            ops.update(line.split())
    return ops


def unsupported_ops(model) -> list[str]:
    """Operators of the graph (default ONNX domain) that the TensorRT parser list lacks."""
    ok = supported_ops()
    used = {(n.domain or "", n.op_type) for n in model.graph.node}
    return sorted(f"{d + '::' if d else ''}{op}" for d, op in used if d not in ("", "ai.onnx") or op not in ok)


def card_json(card: ModelCard) -> str:
    return jsonio.dumps(card.to_dict(), indent=2, sort_keys=True)
