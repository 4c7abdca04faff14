"""Which frames does each per-frame score point at? For every score a capture policy can rank by
(``capture_score``: the paper's image inconsistency, the detection-level inconsistency, the
detections' entropy) and, as references, the number of kept detections and (``--branch-only``) the
mono branches' own detections the fusion dropped: how much more often the
top 10 % of the demo's pairs by that score hold

- a person miss or a false alarm (the demo's "lift"), a miss, a false alarm;
- a thermal-crossover person (in the visible image, not in thermal), a hot distractor (only in
  thermal), a visible distractor (only in RGB): what the modalities disagree about;
- a night or dusk scene,

than all pairs do. Top-10 % picks cluster in scenes (20 frames each), so the pooled lift comes with
a 5-95 % interval from resampling whole scenes. Runs the demo's own path (synthetic rig -> rosbag2
.mcap -> replay through the pipeline at score threshold 0.3)::

    python bench/frame_scores.py --seeds 0 1 2 3 --pairs 200 [--branch-only] [--model other.onnx] [--json out.json]

Torch-free, like the demo.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from miss_breakdown import add_demo_arguments, chosen_model, replay_results  # noqa: E402  (bench/ is no package)

FLAGS = ("error", "miss", "false_alarm", "crossover_person", "hot_distractor", "visible_distractor", "night")
REFERENCE = "detections"   # the kept detections' count: how far crowding alone gets
# --branch-only: how many of the mono branches' own detections overlap no fused detection (IoU < 0.3):
# what one modality reports and the fusion dropped
BRANCH_ONLY = "branch_only_detections"


def branch_only(res, iou: float = 0.3) -> int:
    """The mono branches' own detections (``Result.branch_detections``) that overlap no fused detection
    at IoU ``iou`` or more, summed over the branches."""
    from ms_perception.core.postprocess import iou_matrix
    n, fused = 0, res.detections.boxes
    for d in res.branch_detections.values():
        if len(d):
            n += int(len(d) if not len(fused) else (iou_matrix(d.boxes, fused).max(1) < iou).sum())
    return n


def frame_rows(results: list, annotations: list[dict], person_label: int, image_hw: tuple[int, int],
               tag: str = "") -> list[dict]:
    """One row per annotated pair: its scores (``Result.frame_scores`` and the detection count), flags
    and scene (``tag`` + the annotation's ``sequence``)."""
    from ms_perception.metrics.kaist import frame_errors
    from ms_perception.replay.run import _frame_scores, _person_images
    images, kept = _person_images(results, annotations, person_label)
    by_stamp = {int(a["stamp_ns"]): a for a in annotations}
    stamps = [s for s, _ in results if int(s) in by_stamp]
    errors = frame_errors(images, image_hw)
    rows = []
    for stamp, res, (miss, fa) in zip(stamps, kept, errors.tolist()):
        a = by_stamp[int(stamp)]
        d = a.get("distractors", [])
        rows.append({"scene": f"{tag}{a.get('sequence', '?')}",
                     "scores": {**_frame_scores(res), REFERENCE: float(len(res.detections)),
                                **({BRANCH_ONLY: float(branch_only(res))} if res.branch_detections else {})},
                     "flags": {"error": miss + fa > 0, "miss": miss > 0, "false_alarm": fa > 0,
                               "crossover_person": any(o["class_id"] == 1 and o.get("crossover") for o in a["objects"]),
                               "hot_distractor": any(x["kind"] == "hot" for x in d),
                               "visible_distractor": any(x["kind"] != "hot" for x in d),
                               "night": a["condition"] in ("night", "dusk")}})
    return rows


def lifts(rows: list[dict], fraction: float = 0.1, resamples: int = 0, seed: int = 0) -> dict:
    """score -> flag -> {"ratio", "top_rate", "random_rate"[, "p5", "p95"]}: the top-fraction lift
    (metrics.kaist.top_fraction_lift); with ``resamples``, its 5th / 95th percentiles over resamples
    of whole scenes (with replacement; a resample without a flagged pair is left out)."""
    from ms_perception.metrics.kaist import top_fraction_lift
    names = [n for n in rows[0]["scores"] if all(n in r["scores"] for r in rows)]
    scenes = sorted({r["scene"] for r in rows})
    members = {s: [i for i, r in enumerate(rows) if r["scene"] == s] for s in scenes}
    rng = np.random.default_rng(seed)
    picks = [[i for k in rng.integers(0, len(scenes), len(scenes)) for i in members[scenes[k]]]
             for _ in range(resamples)]
    out = {}
    for n in names:
        s = np.array([r["scores"][n] for r in rows], np.float64)
        out[n] = {}
        for f in FLAGS:
            fl = np.array([r["flags"][f] for r in rows], bool)
            lt = top_fraction_lift(s, fl, fraction)
            row = {"ratio": lt["ratio"], "top_rate": lt["top_rate"], "random_rate": lt["random_rate"]}
            if picks:
                v = [top_fraction_lift(s[p], fl[p], fraction)["ratio"] for p in picks]
                v = [x for x in v if x is not None]
                row["p5"], row["p95"] = ((round(float(np.percentile(v, 5)), 2), round(float(np.percentile(v, 95)), 2))
                                         if v else (None, None))
            out[n][f] = row
    return out


def replay_demo(model: Path, pairs: int, seed: int, work: Path, score_threshold: float = 0.3,
                with_branch_only: bool = False) -> list[dict]:
    """The demo's bag for (pairs, seed), replayed through the pipeline: :func:`frame_rows`."""
    results, anns, person, cfg = replay_results(model, pairs, seed, work, score_threshold, with_branch_only)
    return frame_rows(results, anns, person, (cfg.height, cfg.width), tag=f"s{seed}/")


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}\n| score | " + " | ".join(FLAGS) + " |\n|---|" + "---|" * len(FLAGS))
    base = next(iter(table.values()))
    print("| (share of all pairs) | " + " | ".join(f"{base[f]['random_rate']:.2f}" for f in FLAGS) + " |")
    for n, per in table.items():
        cells = []
        for f in FLAGS:
            r = per[f]
            c = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
            if r.get("p5") is not None:
                c += f" [{r['p5']:.2f}–{r['p95']:.2f}]"
            cells.append(c)
        print(f"| {n} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    from ms_perception.core import jsonio
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_demo_arguments(ap)
    ap.add_argument("--fraction", type=float, default=0.1, help="the top fraction (default 0.1, the demo's)")
    ap.add_argument("--resamples", type=int, default=500, help="scene resamples for the pooled interval")
    ap.add_argument("--branch-only", action="store_true",
                    help=f"also rank by {BRANCH_ONLY}: the branches' own detections the fusion dropped (an NMS per branch)")
    ap.add_argument("--json", type=Path, default=None, help="also write the tables here")
    a = ap.parse_args(argv)
    model = chosen_model(a)
    if model is None:
        return 2
    report, pooled = {"model": str(model), "pairs": a.pairs, "fraction": a.fraction, "seeds": {}}, []
    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            rows = replay_demo(model, a.pairs, seed, Path(tmp), with_branch_only=a.branch_only)
        report["seeds"][str(seed)] = t = lifts(rows, a.fraction)
        print_table(f"{model.name}: demo --pairs {a.pairs} --seed {seed}: lift of the top {a.fraction:.0%}", t)
        pooled.extend(rows)
    report["pooled"] = t = lifts(pooled, a.fraction, a.resamples)
    report["pooled_pairs"], report["pooled_scenes"] = len(pooled), len({r["scene"] for r in pooled})
    print_table(f"{model.name}: seeds {', '.join(map(str, a.seeds))} pooled ({len(pooled)} pairs, "
                f"{report['pooled_scenes']} scenes; [5-95 % over {a.resamples} scene resamples])", t)
    if a.json:
        from ms_perception.core.atomic import atomic_write
        atomic_write(a.json, jsonio.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
