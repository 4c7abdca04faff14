"""Postprocessing: score threshold, top-k, class-aware NMS (OpenCV), masks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np


class ModelOutputError(RuntimeError):
    """The engine returned something unusable (NaN, wrong shape)."""


@dataclass
class Detections:
    """Detections in visible-image pixels: boxes (N, 4) xyxy, scores (N,), labels (N,) 0-based
    class indices into ``class_names``; ``anchor_index`` (N,) rows of the model output they
    came from (the capture records per-branch scores at these rows)."""
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    anchor_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self, class_names: list[str]) -> list[dict]:
        return [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 5), "label": int(c),
                 "class": class_names[int(c)] if int(c) < len(class_names) else str(int(c))}
                for b, s, c in zip(self.boxes, self.scores, self.labels)]


OUTPUT_STATS = "output_stats"   # (T, 3): sum, min, max of each of the card's other outputs (graph_edits.add_output_stats)


# In-graph class-aware NMS (graph_edits.add_nms): three scalar inputs the runtime feeds from its
# parameters, and the survivors' [batch, class, anchor] rows (ONNX NonMaxSuppression's output).
NMS_OUTPUT = "detections_index"
NMS_INPUTS = ("score_threshold", "nms_iou", "max_detections")


def stats_names(names) -> list[str]:
    """The outputs the graph's ``output_stats`` rows describe, in order: the card's outputs but the
    statistics themselves and the NMS row indices (which the runtime checks itself)."""
    return [n for n in names if n not in (OUTPUT_STATS, NMS_OUTPUT)]


def detections_from_index(index: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                          max_detections: int = 100) -> Detections:
    """The graph's NMS survivors (``index`` (N, 3) int64 rows [batch, class, anchor] of batch item 0)
    -> Detections, best first, at most ``max_detections``: the same detections as
    :func:`select_detections` on all candidates (tested equal), from N rows instead of a pass
    over the (A, K) scores after the engine. Rows outside the outputs raise ModelOutputError."""
    index = np.asarray(index)
    if index.ndim != 2 or index.shape[1] != 3 or index.dtype.kind not in "iu":
        raise ModelOutputError(f"model output {NMS_OUTPUT!r} is {index.dtype.name} {index.shape}, expected (N, 3) "
                               "integer rows [batch, class, anchor] (ONNX NonMaxSuppression); re-run `train "
                               "graph-edit --nms` on the export")
    rows = index.tolist()          # a few rows: plain Python costs less than numpy calls after the engine
    if not rows:
        return Detections()
    a, k = scores.shape
    for b, c, j in rows:
        if b or not 0 <= c < k or not 0 <= j < a:
            raise ModelOutputError(f"model output {NMS_OUTPUT!r} indexes outside the outputs (batch 0, classes < {k}, "
                                   f"anchors < {a}): row {[b, c, j]}; the graph's NMS is not wired to its scores and "
                                   "boxes")
    cls, anchor = index[:, 1], index[:, 2]
    sc = scores[anchor, cls]
    if len(rows) > 1:
        keep = sorted(range(len(rows)), key=sc.tolist().__getitem__, reverse=True)[:max_detections]
        cls, anchor, sc = cls[keep], anchor[keep], sc[keep]
    return Detections(boxes[anchor], sc, cls.astype(np.int64, copy=False), anchor.astype(np.int64, copy=False))


def output_stats(out: dict, names: list[str]) -> np.ndarray:
    """(T, 3) float32: sum, min, max of each named output: what the graph's ``output_stats`` gives
    (the numpy definition: export checks the graph against it; a test double that changes an
    engine's outputs recomputes it, as the graph would from the outputs it gives)."""
    return np.array([[np.sum(out[n], dtype=np.float64), np.min(out[n]), np.max(out[n])] for n in names], np.float32)


def check_output(name: str, a: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
    """Non-finite values, or values outside [lo, hi] (probabilities), make the whole output unusable.
    Two passes: min and max are NaN when any value is NaN, and ±inf when any value is ±inf."""
    if not a.size:
        return
    mn, mx = float(a.min()), float(a.max())
    if not (math.isfinite(mn) and math.isfinite(mx)):
        check_finite(name, a)      # raises, naming how many
    _check_range(name, mn, mx, lo, hi)


def _check_range(name: str, mn: float, mx: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and mn < lo) or (hi is not None and mx > hi):
        raise ModelOutputError(f"model output {name!r} holds values in [{mn:.4g}, {mx:.4g}], "
                               f"outside [{lo}, {hi}]; the card says these are probabilities (check the model's "
                               "final activation and the card's score_activation)")


def check_by_stats(name: str, stats: tuple[float, float, float] | None, a: np.ndarray, lo: float | None = None,
                   hi: float | None = None) -> None:
    """The checks of :func:`check_output` (``lo``/``hi`` None: of :func:`check_finite`) from the
    graph's (sum, min, max) of ``a`` (``output_stats``): a finite sum means every value is finite,
    and then min and max are exact. A sum that is not finite, or no stats, checks ``a`` itself
    (which names the count of NaN/inf, or passes when a huge sum only overflowed)."""
    if stats is None or not math.isfinite(stats[0]):
        if lo is None and hi is None:
            return check_finite(name, a)
        return check_output(name, a, lo, hi)
    if a.size:
        _check_range(name, stats[1], stats[2], lo, hi)


def check_boxes(boxes: np.ndarray) -> None:
    # at most max_detections rows: plain Python (a numpy call after the engine costs more than these comparisons)
    bad = sum(1 for x0, y0, x1, y1 in boxes.tolist() if x1 < x0 or y1 < y0)
    if bad:
        raise ModelOutputError(f"{bad} detection box(es) have x1 < x0 or y1 < y0; the model's box output is not xyxy "
                               "or is broken (check the card's box_decoding)")


def check_finite(name: str, a: np.ndarray) -> None:
    # a finite sum means every element is finite (a NaN or inf anywhere makes the sum NaN or inf): one
    # pass without a boolean temporary; only a non-finite sum (rare: overflow of huge values) looks closer
    if a.dtype.kind == "f" and a.size:
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(a.sum()):
                return
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ModelOutputError(f"model output {name!r} holds {bad} NaN/inf values; the engine or its weights are "
                               "broken (check the model file, and FP16/INT8 overflow if built with reduced precision)")


def select_detections(scores: np.ndarray, boxes: np.ndarray, score_threshold: float = 0.3, nms_iou: float = 0.5,
                      max_detections: int = 100, pre_nms_top_k: int = 1000, checked: bool = False) -> Detections:
    """(A, K) probabilities + (A, 4) xyxy -> class-aware NMS survivors, best first. ``checked``: the
    caller has already checked both arrays (check_output / check_finite), so they are not read twice."""
    if not checked:
        check_finite("scores", scores)
        check_finite("boxes", boxes)
    # few numpy calls: after the engine each one costs several microseconds (cold caches)
    k = scores.shape[1]
    flat = np.flatnonzero(scores > score_threshold)   # 7x faster than a 2-D nonzero over (A, K)
    if flat.size == 0:
        return Detections()
    a_idx, cls = np.divmod(flat, k)
    sc = scores.reshape(-1)[flat]
    if sc.size > pre_nms_top_k:
        keep = np.argpartition(-sc, pre_nms_top_k - 1)[:pre_nms_top_k]
        a_idx, cls, sc = a_idx[keep], cls[keep], sc[keep]
    b = boxes[a_idx]
    xywh = b.astype(np.float64)
    xywh[:, 2:] -= xywh[:, :2]
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), sc.tolist(), cls.tolist(), float(score_threshold), float(nms_iou))
    keep = np.asarray(keep, np.int64).reshape(-1)
    keep = keep[np.argsort(-sc[keep], kind="stable")][:max_detections]
    return Detections(b[keep].astype(np.float32, copy=False), sc[keep].astype(np.float32, copy=False),
                      cls[keep].astype(np.int64, copy=False), a_idx[keep].astype(np.int64, copy=False))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU (pixel-edge boxes, no +1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)
