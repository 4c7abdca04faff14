"""Plots (matplotlib, Agg backend, PNG): miss rate vs FPPI, precision vs recall, learning curves."""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(plt, fig, ax, path, title: str, legend_loc: str = "lower left") -> str:
    n = len(ax.get_legend_handles_labels()[1])
    if n > 8:   # many runs: the legend goes beside the axes, where it hides no curve
        fig.set_size_inches(fig.get_figwidth() + 3.5, max(fig.get_figheight(), 0.19 * n + 1))
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0)
    else:
        ax.legend(loc=legend_loc, fontsize=7 if legend_loc == "best" else None)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_miss_rate_curves(curves: Mapping[str, "object"], path: str | os.PathLike, title: str = "") -> str:
    """``curves``: {label: MissRateResult}. Log-log axes as in the KAIST devkit."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, r in curves.items():
        x = np.maximum(r.fppi, 1e-4)
        ax.plot(x, r.miss, linewidth=2, label=f"{100 * r.miss_rate:.2f}% {label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1e1)
    ax.set_ylim(0.01, 1.0)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("miss rate")
    ax.grid(True, which="both", alpha=0.3)
    return _finish(plt, fig, ax, path, title)


def plot_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                          title: str = "") -> str:
    """``curves``: {label: (recall, precision)} arrays."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, (rec, prec) in curves.items():
        ax.plot(rec, prec, linewidth=2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    return _finish(plt, fig, ax, path, title)


def plot_learning_curves(curves: Mapping[str, list[dict]], path: str | os.PathLike, title: str = "",
                         subsets: tuple[str, ...] = ("all", "day", "night"), group=None) -> str:
    """``curves``: {label: [{"iteration", "miss_rate": {subset: percent}}, ...]} (a run's
    ``eval_curve.jsonl``): held-out miss rate against training iterations, one line per subset.
    ``group`` (label -> key, e.g. the arm of "arm s0"): the labels of one key share a colour, and
    with one subset drawn they differ in line style, so that one arm's seeds read as one family."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    styles = {"all": "-", "day": "--", "night": ":"}
    member_styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict = {}
    for label, curve in curves.items():
        kw, n = {}, 0
        if group is not None:
            members = groups.setdefault(group(label), [])
            n = len(members)
            members.append(label)
            kw["color"] = colors[list(groups).index(group(label)) % len(colors)]
        for sub in subsets:
            pts = [(r["iteration"], r["miss_rate"][sub]) for r in curve if r.get("miss_rate", {}).get(sub) is not None]
            if pts:
                it, mr = zip(*pts)
                style = member_styles[n % 4] if group is not None and len(subsets) == 1 else styles.get(sub, "-")
                ax.plot(it, mr, style, marker="o", markersize=3, linewidth=1.5,
                        label=f"{label} {sub} ({mr[-1]:.1f}%)", **kw)
    ax.set_ylim(0, 100)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("held-out log-average miss rate (%)")
    ax.grid(True, alpha=0.3)
    return _finish(plt, fig, ax, path, title)


def coco_pr_curves(gt: dict, dets: list, iou_index: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-category precision-recall at IoU 0.5 (iou_index 0) from pycocotools' accumulate."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
    rec = ev.params.recThrs
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        prec = ev.eval["precision"][iou_index, :, k, 0, -1]  # all areas, maxDets=100
        name = cg.cats[cid]["name"]
        out[name] = (rec, np.where(prec < 0, 0.0, prec))
    return out
