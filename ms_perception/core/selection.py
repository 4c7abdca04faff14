"""Which frames to label: the strategies shared by ``train active`` and ``captures select``.

One implementation (torch-free) serves the training loop's active-learning cycles and the
fleet pool, so the ranking a robot fleet's labeling budget follows is the one the
active-learning experiments measured (ICIP 2021; thesis §5.1; METHODS §7):

- ``inconsistency``: the highest cross-modality inconsistency scores first (the paper's ranking).
- ``entropy``: the highest fused-branch entropy first (the paper's uncertainty baseline).
- ``random``: a uniform draw (the paper's random baseline).
- ``diverse``: inconsistency ranking, spread over groups. Each group (a robot) takes its turn
  (round robin), and inside a group the turn goes round its time buckets, each giving its
  highest-scoring frame before any bucket gives a second. So one robot stuck in front of a
  confusing scene, or one bad minute, cannot take the budget. (A fleet-level choice: the
  paper ranks one pool.)

Scores that are not finite (a record without a score) rank last; ties keep the input order.
"""
from __future__ import annotations

import numpy as np

STRATEGIES = ("inconsistency", "entropy", "random", "diverse")


def _score_order(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    key = np.where(np.isfinite(s), -s, np.inf)           # descending; NaN / None last
    return np.argsort(key, kind="stable")


def _rank_within(groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """rank[i] = position of item i among the items of its group, in ``order``."""
    g = np.asarray(groups)[order]
    _, inv = np.unique(g, return_inverse=True)
    rank_sorted = np.zeros(len(order), np.int64)
    seen = np.zeros(inv.max() + 1 if len(inv) else 0, np.int64)
    for pos, gi in enumerate(inv):                         # O(n), one pass
        rank_sorted[pos] = seen[gi]
        seen[gi] += 1
    rank = np.empty(len(order), np.int64)
    rank[order] = rank_sorted
    return rank


def select(strategy: str, k: int, *, scores: np.ndarray | None = None, rng: np.random.Generator | None = None,
           groups: np.ndarray | None = None, buckets: np.ndarray | None = None) -> np.ndarray:
    """Indices (into the candidate arrays, ascending) of the ``k`` candidates to label.

    ``scores``: one per candidate (inconsistency for ``inconsistency`` / ``diverse``, entropy
    for ``entropy``); ``groups`` (robot) and ``buckets`` (time bucket) for ``diverse``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if k < 0:
        raise ValueError(f"the budget must be >= 0, got {k}")
    if strategy == "random":
        if rng is None:
            raise ValueError("the random strategy needs a seeded generator (rng)")
        n = len(scores) if scores is not None else len(groups) if groups is not None else None
        if n is None:
            raise ValueError("random selection needs the candidates (scores or groups)")
        return np.sort(rng.choice(n, size=min(k, n), replace=False)).astype(np.int64)
    if scores is None:
        raise ValueError(f"strategy {strategy!r} needs a score per candidate")
    scores = np.asarray(scores, np.float64)
    order = _score_order(scores)
    if strategy in ("inconsistency", "entropy"):
        return np.sort(order[:k]).astype(np.int64)
    n = len(scores)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    buckets = np.zeros(n, np.int64) if buckets is None else np.asarray(buckets)
    if len(groups) != n or len(buckets) != n:
        raise ValueError("diverse selection needs one group and one time bucket per candidate")
    # inside a group: round robin over its time buckets (each bucket's best first)
    gb = np.unique(np.stack([np.unique(groups, return_inverse=True)[1],
                             np.unique(buckets, return_inverse=True)[1]], 1), axis=0, return_inverse=True)[1]
    in_bucket = _rank_within(np.asarray(gb).reshape(-1), order)
    group_order = np.lexsort((np.argsort(order, kind="stable"), in_bucket))   # by bucket rank, then score
    in_group = _rank_within(groups, group_order)
    # across groups: round robin, each turn's picks by score
    final = np.lexsort((np.argsort(order, kind="stable"), in_group))
    return np.sort(final[:k]).astype(np.int64)
