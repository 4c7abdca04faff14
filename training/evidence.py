"""The evidence protocol of issue [evidence]: when a run counts as converged, and how a claim is
read from several seeds per arm (``bench/evidence.py`` drives the runs).

- A run is *converged* when its held-out miss rate changes by less than ``tol`` points over the
  last fifth of training: the evaluations at or after 80 % of the iterations, first to last (at
  least two of them, else convergence is unknown).
- A claim "A beats B" on a subset (all / day / night; miss rate, lower is better) *holds* when
  every seed's A is below every seed's B (the min-max ranges do not overlap), is *reversed* when
  every A is above every B, and is *not shown* otherwise. It is *not read* when an arm has fewer
  than ``min_seeds`` seeds or any run did not converge: then it says which.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def converged(curve: list[dict], key: str = "all", tol: float = 1.0, last_fraction: float = 0.2) -> bool | None:
    """``curve``: the run's evaluations ``{"iteration", "miss_rate": {key: percent}}`` in order,
    the last one at the end of training. None when the last fifth holds fewer than two points."""
    pts = [(r["iteration"], r["miss_rate"].get(key)) for r in curve if r.get("miss_rate", {}).get(key) is not None]
    if not pts:
        return None
    end = pts[-1][0]
    tail = [mr for it, mr in pts if it >= (1.0 - last_fraction) * end]
    if len(tail) < 2:
        return None
    return abs(tail[-1] - tail[0]) < tol


@dataclass
class Claim:
    name: str
    better: str          # the arm the paper says is better (lower miss rate)
    worse: str
    subset: str = "all"  # all / day / night


def read_claim(claim: Claim, runs: dict[str, list[dict]], min_seeds: int = 3) -> dict:
    """``runs``: arm -> result rows (``miss_rate``, ``converged``, ``seed``). Returns the label
    (holds / not shown / reversed / not read) with the numbers it rests on."""
    out = {"claim": claim.name, "better": claim.better, "worse": claim.worse, "subset": claim.subset}
    vals, why = {}, []
    for arm in (claim.better, claim.worse):
        rows = [r for r in runs.get(arm, []) if r.get("miss_rate", {}).get(claim.subset) is not None]
        vals[arm] = [float(r["miss_rate"][claim.subset]) for r in rows]
        # the mean unrounded: a table rounds it once (27.0467 -> 27.05 -> "27.1" was a double rounding)
        out[arm] = ({"mean": float(np.mean(vals[arm])), "min": min(vals[arm]), "max": max(vals[arm]),
                     "seeds": len(vals[arm])} if vals[arm] else None)
        if len(rows) < min_seeds:
            why.append(f"{arm} has {len(rows)} seed(s), needs {min_seeds}")
        unconverged = [r.get("seed") for r in rows if r.get("converged") is not True]
        if unconverged:
            why.append(f"{arm} did not converge in seed(s) {unconverged}")
    if why:
        return {**out, "label": "not read", "why": "; ".join(why)}
    a, b = vals[claim.better], vals[claim.worse]
    if max(a) < min(b):
        label = "holds"
    elif min(a) > max(b):
        label = "reversed"
    else:
        label = "not shown"
    return {**out, "label": label, "difference": round(float(np.mean(b) - np.mean(a)), 2)}


def scene_bootstrap(groups: list[str], statistic, resamples: int = 200, seed: int = 0) -> np.ndarray:
    """How far ``statistic`` moves with the test set alone: resample whole scenes (``groups[i]``
    names image i's scene; frames of one scene are not independent) with replacement, as many
    scenes as there are, and evaluate ``statistic(indices)`` on each resample. Returns the
    ``resamples`` values; their standard deviation is the evaluation noise of one model."""
    names = sorted(set(groups))
    members = {g: [] for g in names}
    for i, g in enumerate(groups):
        members[g].append(i)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, np.float64)
    for r in range(resamples):
        pick = rng.integers(0, len(names), len(names))
        out[r] = statistic([i for k in pick for i in members[names[k]]])
    return out


def bootstrap_summary(values: np.ndarray) -> dict:
    """Standard deviation and the 5th / 95th percentiles of bootstrap values (a statistic, or the
    difference of two arms on the same resamples), leaving out resamples where it is undefined (NaN:
    no person of a subset was drawn)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"bootstrap_std": None, "p5": None, "p95": None, "resamples": 0}
    return {"bootstrap_std": round(float(v.std()), 2), "p5": round(float(np.percentile(v, 5)), 2),
            "p95": round(float(np.percentile(v, 95)), 2), "resamples": int(v.size)}


def late_changes(curve: list[dict], key: str = "all", last_fraction: float = 0.2) -> list[float]:
    """The absolute change of the held-out miss rate from one evaluation to the next within the last
    fifth of training (the points :func:`converged` reads): what the convergence rule's ``tol`` is
    up against when a run has stopped learning."""
    pts = [(r["iteration"], r["miss_rate"].get(key)) for r in curve if r.get("miss_rate", {}).get(key) is not None]
    if not pts:
        return []
    tail = [mr for it, mr in pts if it >= (1.0 - last_fraction) * pts[-1][0]]
    return [round(abs(b - a), 6) for a, b in zip(tail, tail[1:])]


def operating_points(result) -> dict:
    """Where on the miss-rate-vs-FPPI curve a log-average miss rate comes from: the miss rate (%) at
    FPPI 10⁻², 10⁻¹ and 10⁰ (the first, fifth and ninth of the 9 reference points), and the recall
    (%) the detector reaches at its lowest score with the FPPI it pays there. Two models with the
    same log-average can differ here, and mAP (all recall, several IoUs) weighs the far end."""
    at = np.asarray(result.miss_at_points, dtype=float)
    fppi = np.asarray(result.fppi, dtype=float)

    def pct(x):
        return None if x != x else round(100.0 * float(x), 2)
    return {"mr_at_fppi_0.01": pct(at[0]), "mr_at_fppi_0.1": pct(at[4]), "mr_at_fppi_1": pct(at[8]),
            "recall": round(100.0 * result.recall, 2), "fppi_at_recall": round(float(fppi[-1]), 3) if len(fppi) else 0.0}


def mean_loss_parts(rows: list[dict], start: int, stop: int) -> dict:
    """Mean of every logged train-loss part (``metrics.jsonl`` rows of kind "train") over the
    iterations in [start, stop); a part is averaged over the rows that log it (GAFF's inter loss
    is absent from a batch without one). {} when no row falls in the window."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        if r.get("kind") != "train" or not start <= r.get("iteration", -1) < stop:
            continue
        for k, v in r.items():
            if k not in ("iteration", "kind", "lr") and isinstance(v, (int, float)):
                sums.setdefault(k, []).append(float(v))
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(sums.items())}
