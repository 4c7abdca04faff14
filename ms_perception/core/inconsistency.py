"""Cross-modality inconsistency (active-learning paper §3.2-3.3; METHODS.md §7).

ONE implementation, used by the robot runtime and by the active-learning loop.

Per prediction (an anchor's class probability, or a pixel's class distribution):
    I = H(p̄) − ½ (H(p_v) + H(p_t)),   p̄ = (p_v + p_t) / 2
with H the binary entropy −p log p − (1−p) log(1−p) in base 2 (so I ∈ [0, 1], "from 0
(very consistent) to 1 (very different)"), or the categorical entropy for multi-class
pixels (a generalized Jensen–Shannon divergence, ≤ 1 bit for two distributions).
Image score: scale-balanced — average within each pyramid level, then average the level
means, so the largest feature map does not dominate (§3.3). Multi-class detection: each
class probability of a sigmoid head is its own binary prediction; a level's mean runs over
its anchors and classes (per-class parts are reported separately).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

EPS = 1e-12
EPS32 = 1e-7   # float32 inputs (engine outputs) stay float32: 4x faster, |error| < 3e-6 bits (the 1e-7 clip)
# an exported detector may compute the per-(level, class) means of I in its graph (training/export/graph_edits.py)
INCONSISTENCY_OUTPUT = "inconsistency_level_class"


def _as_float(p) -> tuple[np.ndarray, float]:
    p = np.asarray(p)
    if p.dtype == np.float32:
        return p, EPS32
    return p.astype(np.float64, copy=False), EPS


def binary_entropy(p: np.ndarray, base: float = 2.0) -> np.ndarray:
    p, eps = _as_float(p)
    p = np.clip(p, eps, 1 - eps)
    q = 1 - p
    return -(p * np.log(p) + q * np.log(q)) * p.dtype.type(1 / np.log(base))


def categorical_entropy(p: np.ndarray, axis: int, base: float = 2.0) -> np.ndarray:
    p, eps = _as_float(p)
    p = np.clip(p, eps, 1.0)
    return -(p * np.log(p)).sum(axis) * p.dtype.type(1 / np.log(base))


def _neg_entropy_nats(p: np.ndarray, eps: float) -> np.ndarray:
    """p ln p + (1 − p) ln(1 − p) (= −H in nats), elementwise, in p's dtype, with few temporaries."""
    p = np.clip(p, eps, 1 - eps)
    q = 1 - p
    r = np.log(p)
    r *= p
    lq = np.log(q)
    lq *= q
    r += lq
    return r


def prediction_inconsistency(p_v: np.ndarray, p_t: np.ndarray, base: float = 2.0) -> np.ndarray:
    """Elementwise I for binary predictions (any shape). I >= 0 (a Jensen-Shannon divergence);
    rounding can leave tiny negatives for near-identical predictions, which are clamped to 0.
    Written as I = (½(S(p_v) + S(p_t)) − S(p̄)) / ln(base) with S = −H in nats (the same value as
    H(p̄) − ½(H(p_v) + H(p_t)); in place, 1.4x faster than the textbook form on engine outputs)."""
    p_v, eps = _as_float(p_v)
    p_t, _ = _as_float(p_t)
    half = p_v.dtype.type(0.5)
    m = p_v + p_t
    m *= half
    r = _neg_entropy_nats(p_v, eps)
    r += _neg_entropy_nats(p_t, eps)
    r *= half
    r -= _neg_entropy_nats(m, eps)
    r *= r.dtype.type(1 / np.log(base))
    return np.maximum(r, 0, out=r) if isinstance(r, np.ndarray) else np.maximum(r, 0)   # 0-d inputs give scalars


def pixel_inconsistency(p_v: np.ndarray, p_t: np.ndarray, axis: int = 0, base: float = 2.0) -> np.ndarray:
    """Per-pixel I for class distributions along ``axis`` (categorical entropy), clamped at 0 like
    :func:`prediction_inconsistency`."""
    i = categorical_entropy((p_v + p_t) * 0.5, axis, base) - 0.5 * (
        categorical_entropy(p_v, axis, base) + categorical_entropy(p_t, axis, base))
    return np.maximum(i, 0)


@dataclass
class InconsistencyScore:
    score: float                                             # scale-balanced image score
    per_level: list[float] = field(default_factory=list)    # mean I per pyramid level
    per_class: list[float] = field(default_factory=list)    # scale-balanced mean I per class
    map: np.ndarray | None = None                            # pixel map (segmentation)


def level_class_means(scores_v: np.ndarray, scores_t: np.ndarray, level_counts: list[int],
                      base: float = 2.0) -> np.ndarray:
    """(L, K) float64: the mean of I over each non-empty pyramid level's anchors, per class.

    scores_v, scores_t: (A, K) probabilities of the two mono branches with anchors ordered level
    by level; level_counts: anchors per level (sum = A). An exported graph may compute the same
    means (training/export/graph_edits.py; tested equal)."""
    if scores_v.shape != scores_t.shape:
        raise ValueError(f"branch outputs differ in shape: {scores_v.shape} vs {scores_t.shape}")
    if sum(level_counts) != scores_v.shape[0]:
        raise ValueError(f"level counts sum to {sum(level_counts)}, but there are {scores_v.shape[0]} anchors")
    inc = prediction_inconsistency(scores_v, scores_t, base)  # (A, K)
    counts = np.asarray(level_counts, dtype=np.int64)
    nonempty = counts > 0
    if not nonempty.any():
        return np.zeros((0, inc.shape[1]))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
    # one reduceat over the level boundaries
    return np.add.reduceat(inc.astype(np.float64, copy=False), starts, axis=0) / counts[nonempty, None]


def detection_inconsistency(scores_v: np.ndarray, scores_t: np.ndarray, level_counts: list[int],
                            base: float = 2.0) -> InconsistencyScore:
    """Image score from per-anchor class probabilities of the two mono branches (see
    :func:`level_class_means` for the arguments)."""
    return inconsistency_from_level_class(level_class_means(scores_v, scores_t, level_counts, base))


def inconsistency_from_level_class(level_class: np.ndarray) -> InconsistencyScore:
    """The scale-balanced image score from the (L, K) means of I per non-empty pyramid level and
    class: per-level = mean over classes, per-class = mean over levels, score = mean of the levels.
    ``detection_inconsistency`` ends here, and so does the runtime when the graph computed the means.
    A few numbers: summed in float64 in a plain loop, in numpy's order for rows shorter than 8 (its
    pairwise sum is this loop there; tested bit-equal), without a numpy call per mean after the engine."""
    a = np.asarray(level_class, np.float64)
    if a.size == 0:
        return InconsistencyScore(0.0, [], [0.0] * (a.shape[1] if a.ndim == 2 else 0))
    rows = a.tolist()
    n_levels, n_classes = len(rows), len(rows[0])
    per_level = [_loop_sum(r) / n_classes for r in rows]
    per_class = [_loop_sum([r[k] for r in rows]) / n_levels for k in range(n_classes)]
    return InconsistencyScore(_loop_sum(per_level) / n_levels, per_level, per_class)


def _loop_sum(xs) -> float:
    """Left-to-right float64 sum (Python 3.12's ``sum`` compensates, numpy's short sums do not)."""
    s = 0.0
    for x in xs:
        s += x
    return s


def segmentation_inconsistency(probs_v: np.ndarray, probs_t: np.ndarray, base: float = 2.0,
                               keep_map: bool = False) -> InconsistencyScore:
    """probs_*: (K, H, W) class distributions. One "level": the image score is the pixel mean."""
    if probs_v.shape != probs_t.shape:
        raise ValueError(f"branch outputs differ in shape: {probs_v.shape} vs {probs_t.shape}")
    m = pixel_inconsistency(probs_v, probs_t, 0, base)
    labels = np.argmax((probs_v + probs_t) / 2, 0)
    per_class = [float(m[labels == k].mean()) if (labels == k).any() else 0.0 for k in range(probs_v.shape[0])]
    return InconsistencyScore(float(m.mean()), [float(m.mean())], per_class, m.astype(np.float32) if keep_map else None)


SMALL = 8   # below this many detections a plain float loop beats numpy's per-call overhead (16 vs 43 us at 5)


def _h_bits(p: float) -> float:
    """Binary entropy (bits) of one probability, clipped as :func:`binary_entropy` clips float64."""
    p = min(max(p, EPS), 1 - EPS)
    q = 1 - p
    return -(p * math.log(p) + q * math.log(q)) * _INV_LN2


_INV_LN2 = 1 / math.log(2)


def detections_inconsistency(branch_v, branch_t) -> float:
    """The frame score ``detection_inconsistency`` (bits): the sum of I over the frame's kept
    detections, each read at its own anchor and class in the two mono branches (``Result.branch_scores``).
    Where the image score averages I over every anchor (mostly background), this one asks whether the
    modalities disagree about the objects the model reports. 0 for a frame without detections."""
    v = np.asarray(branch_v).reshape(-1)
    t = np.asarray(branch_t).reshape(-1)
    if v.shape != t.shape:
        raise ValueError(f"branch scores differ in length: {v.shape[0]} vs {t.shape[0]}")
    if v.size >= SMALL:
        return float(prediction_inconsistency(v.astype(np.float64), t.astype(np.float64)).sum())
    total = 0.0
    for a, b in zip(v.tolist(), t.tolist()):
        total += max(_h_bits((a + b) * 0.5) - 0.5 * (_h_bits(a) + _h_bits(b)), 0.0)
    return total


def detections_entropy(scores) -> float:
    """The frame score ``detection_entropy`` (bits): the sum of the binary entropy of the fused score of
    each kept detection. A detection near 0.5 adds 1 bit, a sure one (0.99) 0.08: many uncertain
    detections make a high score. Any detection model has it (no mono branches needed)."""
    s = np.asarray(scores).reshape(-1)
    if s.size >= SMALL:
        return float(binary_entropy(s.astype(np.float64)).sum())
    total = 0.0
    for p in s.tolist():
        total += _h_bits(p)
    return total


def detection_entropy(scores: np.ndarray, level_counts: list[int], base: float = 2.0) -> float:
    """The ``entropy`` strategy's image score: the mean binary entropy of one branch's (A, K)
    class probabilities, per level, then averaged over the levels (scale-balanced as the
    inconsistency score is). The training loop and the robot's capture records use this one."""
    h = binary_entropy(scores, base)
    bounds = np.cumsum([0] + list(level_counts))
    if bounds[-1] != h.shape[0]:
        raise ValueError(f"level counts sum to {bounds[-1]}, but there are {h.shape[0]} anchors")
    means = [h[bounds[j]:bounds[j + 1]].mean() for j in range(len(level_counts)) if bounds[j + 1] > bounds[j]]
    return float(np.mean(means)) if means else 0.0


def segmentation_entropy(probs: np.ndarray, base: float = 2.0) -> float:
    """The ``entropy`` strategy's image score for a (K, H, W) class distribution: mean pixel entropy."""
    return float(categorical_entropy(probs, 0, base).mean())
