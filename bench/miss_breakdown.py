"""Where does a model miss? The demo's person miss rate split by condition, height, occlusion and
thermal crossover, to tell what stands between a model and a miss-rate goal.

Each slice is evaluated the Caltech/KAIST way: the images of its conditions, with every person
outside the slice turned into an ignore region (it is neither a miss nor does a detection on it
count as a false alarm), so a slice's log-average miss rate says how well *those* people are found
at the false-alarm rate of the whole set. Beside it, the slice's misses at the pipeline's operating
point (every detection the pipeline kept, ``score_threshold`` 0.3 as in the demo) and their share of
all misses. Runs the demo's own path: synthetic rig -> rosbag2 (.mcap) -> replay through the
pipeline, for each seed; the last table pools every seed's pairs::

    python bench/miss_breakdown.py --seeds 0 1 2 3 --pairs 200 [--model other.onnx] [--json out.json]

Torch-free, like the demo.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


NIGHT = ("night", "dusk")  # the demo's day/night split: fog counts as day, dusk as night (metrics.kaist)


def _height_bin(lo: float, hi: float):
    return lambda o, cond: lo <= o["box"][3] - o["box"][1] < hi


def _cross(o, cond) -> bool:
    return bool(o.get("crossover"))


def _seeable(o, cond) -> bool:
    """Not a person at the background's temperature in an unlit night scene: the group the embedded
    model misses (faint in the mean, ``--contrast``; yet seen by the ideal observer, ``--visibility``)."""
    return not (cond == "night" and o.get("crossover"))


# name -> (image conditions or None for all, person filter f(object, condition) or None for all)
SLICES = {
    "all": (None, None),
    "day (day + fog)": (("day", "fog"), None),
    "night (night + dusk)": (NIGHT, None),
    "  night only": (("night",), None),
    "  dusk only": (("dusk",), None),
    "  fog only": (("fog",), None),
    "height 55-80 px": (None, _height_bin(0, 80)),
    "height 80-120 px": (None, _height_bin(80, 120)),
    "height >= 120 px": (None, _height_bin(120, float("inf"))),
    "occlusion none": (None, lambda o, c: o["occlusion"] == 0),
    "occlusion partial": (None, lambda o, c: o["occlusion"] == 1),
    "thermal crossover": (None, _cross),
    "no crossover": (None, lambda o, c: not _cross(o, c)),
    "day, crossover": (("day", "fog"), _cross),
    "night, crossover": (NIGHT, _cross),
    "  night only, crossover": (("night",), _cross),
    "  dusk only, crossover": (("dusk",), _cross),
    "night, no crossover": (NIGHT, lambda o, c: not _cross(o, c)),
    "all but night-scene crossover": (None, _seeable),
    "night but night-scene crossover": (NIGHT, _seeable),
    "night, height 55-80 px": (NIGHT, _height_bin(0, 80)),
    "night, height >= 80 px": (NIGHT, _height_bin(80, float("inf"))),
}


# with --contrast: the persons whose mean contrast is below Rose's k = 5 in both cameras
# (modality_contrast, mark_below_rose) as ignore regions; and those persons alone
ROSE_SLICES = {
    "all but mean contrast below Rose in both": (None, lambda o, c: not o.get("below_rose")),
    "night but mean contrast below Rose in both": (NIGHT, lambda o, c: not o.get("below_rose")),
    "mean contrast below Rose in both": (None, lambda o, c: bool(o.get("below_rose"))),
}


# with --visibility: the same, for the persons below k = 5 in both cameras by the ideal observer
# that knows the object and the background (modality_visibility, mark_below_rose(..., key="unseeable"))
IDEAL_SLICES = {
    "all but ideal observer below 5 in both": (None, lambda o, c: not o.get("unseeable")),
    "night but ideal observer below 5 in both": (NIGHT, lambda o, c: not o.get("unseeable")),
    "ideal observer below 5 in both": (None, lambda o, c: bool(o.get("unseeable"))),
}


def mark_below_rose(records: list, boxes: set, key: str = "below_rose") -> int:
    """Flag the annotated persons whose box (a tuple of floats, as the demo's annotations write it)
    is in ``boxes`` with ``key``; returns how many were flagged."""
    n = 0
    for persons, *_ in records:
        for o in persons:
            o[key] = tuple(float(v) for v in o["box"]) in boxes
            n += o[key]
    return n


def person_records(results: list, annotations: list[dict], person_label: int, person_class_id: int = 1) -> list:
    """(annotated persons, condition, det boxes, det scores) of each replayed pair with annotations."""
    by_stamp = {int(a["stamp_ns"]): a for a in annotations}
    out = []
    for stamp, res in results:
        ann = by_stamp.get(int(stamp))
        if ann is None:
            continue
        d = res.detections
        sel = d.labels == person_label
        out.append(([o for o in ann["objects"] if o["class_id"] == person_class_id], ann["condition"],
                    d.boxes[sel], d.scores[sel]))
    return out


def breakdown(records: list, image_hw: tuple[int, int], slices: dict | None = None,
              height_floor: float = 55.0) -> list[dict]:
    """One row per slice: images, regular persons (the reasonable subset), log-average miss rate
    (%, None without regular persons), misses at the operating point and their share of all misses."""
    from ms_perception.metrics.kaist import frame_errors, person_miss_rates
    slices = SLICES if slices is None else slices
    total_misses = None
    rows = []
    for name, (conds, keep) in slices.items():
        images = []
        for persons, cond, db, ds in records:
            if conds is not None and cond not in conds:
                continue
            ignore = [keep is not None and not keep(o, cond) for o in persons]
            images.append(([o["box"] for o in persons], [o["occlusion"] for o in persons], cond, db, ds, ignore))
        if not images:
            rows.append({"slice": name, "images": 0, "persons": 0, "miss_rate": None, "misses": 0, "miss_share": None})
            continue
        # one split ("all") over the slice's images: the day/night split is a slice of its own here
        flat = [(g, o, "day", db, ds, ig) for g, o, _, db, ds, ig in images]
        r = person_miss_rates(flat, image_hw, height_floor)["all"]
        misses = int(frame_errors(flat, image_hw, height_floor)[:, 0].sum())
        if total_misses is None:  # the first slice is "all"
            total_misses = misses
        rows.append({"slice": name, "images": len(images), "persons": int(r.num_gt),
                     "miss_rate": None if r.num_gt == 0 else round(100 * float(r.miss_rate), 2),
                     "misses": misses,
                     "miss_share": round(misses / total_misses, 3) if total_misses else None})
    return rows


ROSE_K = 5.0   # Rose's criterion: an ideal observer sees a flat object in white noise at SNR x sqrt(pixels) >= about 5


def rose_k(snr, pixels, lin: float = 1.0):
    """Rose's k: a per-pixel signal-to-noise ratio integrated over an object of ``pixels`` visible-grid
    pixels, counted in the camera's own pixels (``lin``: how many visible pixels one of its pixels
    spans in each direction; a thermal image registered up to the visible grid has lin x lin copies
    of each of its pixels): k = SNR x sqrt(pixels / lin^2)."""
    return np.asarray(snr, np.float64) * np.sqrt(np.asarray(pixels, np.float64) / (lin * lin))


def modality_contrast(cfg, seed: int, pairs: int, height_floor: float = 55.0, below_rose: set | None = None) -> list[dict]:
    """How visible each reasonable-subset person is in each modality, from the generator's own
    instance masks: |mean inside the person - mean of the background ring around its box| over the
    ring's standard deviation (a per-pixel signal-to-noise ratio), in the visible image's gray
    levels and in the thermal image's °C registered to the visible image. Beside it Rose's k, that
    contrast integrated over the person's pixels in each camera's own resolution, and how many
    persons fall below k = 5 in both cameras (their boxes are added to ``below_rose``). A *mean*
    contrast misses structure: a person whose parts are lighter and darker than the background
    around it can sit at 0 and still be plain to see. One row per (condition, crossover) with p10 /
    p50 / p90 over its persons. The pairs are the demo bag's (same cfg, seed)."""
    import cv2

    from ms_perception.synth.generator import PERSON, SyntheticGenerator
    groups: dict[tuple[str, bool], list[tuple[float, float, float, float]]] = {}
    lin = cfg.width / cfg.thermal_size[0]
    for sp in SyntheticGenerator(cfg, seed).pairs(pairs):
        gray = cv2.cvtColor(sp.visible, cv2.COLOR_RGB2GRAY).astype(np.float32)
        therm = cv2.warpPerspective(sp.thermal_celsius, sp.homography, (cfg.width, cfg.height))
        for k, o in enumerate(sp.objects):
            if o.class_id != PERSON or o.height_px < height_floor or o.occlusion > 1:
                continue
            inside = sp.instances == k + 1
            x0, y0, x1, y1 = (int(round(v)) for v in o.box)
            pad = max(4, (y1 - y0) // 4)
            ring = np.zeros_like(inside)
            ring[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = True
            ring &= sp.instances == 0
            n = int(inside.sum())
            if n < 20 or ring.sum() < 20:
                continue
            sv, st = (abs(float(img[inside].mean() - img[ring].mean())) / (float(img[ring].std()) + 1e-3)
                      for img in (gray, therm))
            kv, kt = float(rose_k(sv, n)), float(rose_k(st, n, lin))
            groups.setdefault((sp.condition, bool(o.crossover)), []).append((sv, st, kv, kt))
            if below_rose is not None and max(kv, kt) < ROSE_K:
                below_rose.add(tuple(float(v) for v in o.box))
    rows = []
    for (cond, cross), v in sorted(groups.items()):
        a = np.asarray(v)
        k = a[:, 2:4]
        pct = _percentiles
        rows.append({"condition": cond, "crossover": cross, "persons": len(a),
                     "visible_snr_p10_p50_p90": pct(a[:, 0], 2), "thermal_snr_p10_p50_p90": pct(a[:, 1], 2),
                     "visible_rose_k_p10_p50_p90": pct(k[:, 0], 1), "thermal_rose_k_p10_p50_p90": pct(k[:, 1], 1),
                     "below_rose_in_both": int(((k[:, 0] < ROSE_K) & (k[:, 1] < ROSE_K)).sum())})
    return rows


def _percentiles(x, nd: int) -> list[float]:
    return [round(float(y), nd) for y in np.percentile(x, (10, 50, 90))]


def model_input_fn(pipe):
    """``to_input(visible, thermal_raw) -> (visible (h, w, 3) uint8, thermal (h, w) uint8)``: a
    synthetic pair as ``pipe`` feeds it to its model (the pipeline's own letterbox, registration and
    thermal window), for :func:`modality_visibility`."""
    from ms_perception.core.frames import Frame, FramePair

    def u8(x, norm):
        x = np.asarray(x)[0].transpose(1, 2, 0)
        if x.dtype != np.uint8:   # normalized outside the graph: back to the 8-bit values it came from
            x = np.clip(np.rint((x * np.asarray(norm.std, np.float32) + np.asarray(norm.mean, np.float32)) * 255), 0, 255)
        return x.astype(np.uint8)

    def to_input(visible, thermal_raw):
        feeds = pipe.preprocess(FramePair(Frame(visible, 0, "rgb8"), Frame(thermal_raw, 0, "mono16")))[0]
        return u8(feeds["visible"], pipe.card.visible_norm), u8(feeds["thermal"], pipe.card.thermal_norm)[..., 0]
    return to_input


def modality_visibility(cfg, seed: int, pairs: int, height_floor: float = 55.0, unseeable: set | None = None,
                        to_input=None) -> list[dict]:
    """How visible each reasonable-subset person is in each camera *with its structure*: the
    generator renders the frame again without the person under the same sensor noise, and k is the
    whole difference over the noise, sqrt(sum (diff / sigma)^2) over the camera's own pixels
    (``SynthPair.visibility``): the detectability index of an observer that knows the person and the
    background exactly. No detector does better, so a person below Rose's k = 5 in both cameras is
    one nobody could be expected to find (its box goes into ``unseeable``); above it, a person may
    still be far harder for a detector that does not know the background. One row per (condition,
    crossover): p10 / p50 / p90 of k in each camera and how many fall below 5 in both. The pairs
    are the demo bag's (same cfg, seed). ``to_input`` (:func:`model_input_fn`): also k in the
    model's 8-bit inputs (``*_input_*``), what the resize and the thermal window leave of it."""
    from ms_perception.synth.generator import PERSON, SyntheticGenerator
    keys = ("visible_k", "thermal_k") + (("visible_input_k", "thermal_input_k") if to_input is not None else ())
    groups: dict[tuple[str, bool], list[tuple[float, ...]]] = {}
    for sp in SyntheticGenerator(cfg, seed).pairs(pairs, visibility=True, to_input=to_input):
        for o, v in zip(sp.objects, sp.visibility):
            if o.class_id != PERSON or o.height_px < height_floor or o.occlusion > 1:
                continue
            groups.setdefault((sp.condition, bool(o.crossover)), []).append(tuple(v[key] for key in keys))
            if unseeable is not None and max(v["visible_k"], v["thermal_k"]) < ROSE_K:
                unseeable.add(tuple(float(x) for x in o.box))
    rows = []
    for (cond, cross), v in sorted(groups.items()):
        k = np.asarray(v)
        row = {"condition": cond, "crossover": cross, "persons": len(k)}
        for j, key in enumerate(keys):
            row[f"{key}_p10_p50_p90"] = _percentiles(k[:, j], 1)
            row[f"{key}_below_5"] = int((k[:, j] < ROSE_K).sum())
        row["below_5_in_both"] = int(((k[:, 0] < ROSE_K) & (k[:, 1] < ROSE_K)).sum())
        if to_input is not None:
            row["below_5_in_both_inputs"] = int(((k[:, 2] < ROSE_K) & (k[:, 3] < ROSE_K)).sum())
        rows.append(row)
    return rows


def replay_results(model: Path, pairs: int, seed: int, work: Path, score_threshold: float = 0.3,
                   branch_detections: bool = False):
    """The demo's bag for (pairs, seed), replayed through the pipeline: (results, annotations, the
    model's person label, the generator's config). ``branch_detections``: also each mono branch's own
    detections (``Result.branch_detections``; an NMS per branch)."""
    from ms_perception.build import build_pipeline
    from ms_perception.demo import THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
    from ms_perception.replay.run import load_annotations, replay_bag
    bag, cal, cfg = make_demo_bag(work, pairs, seed)
    pipe = build_pipeline({"model_path": str(model), "score_threshold": float(score_threshold),
                           "calibration_file": str(cal), "capture_enabled": False})
    pipe.cfg.branch_detections = branch_detections
    _, results = replay_bag(bag, pipe, VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.02, queue_size=10, keep=True)
    return results, load_annotations(bag), pipe.engine.card.class_names.index("person"), cfg


def replay_demo(model: Path, pairs: int, seed: int, work: Path, score_threshold: float = 0.3):
    """The demo's bag for (pairs, seed), replayed through the pipeline: (records, config)."""
    results, anns, person, cfg = replay_results(model, pairs, seed, work, score_threshold)
    return person_records(results, anns, person), cfg


def add_demo_arguments(ap: argparse.ArgumentParser) -> None:
    """--model, --seeds and --pairs: which model on which demo bags (this script and frame_scores.py)."""
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: the embedded one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pairs", type=int, default=200)


def chosen_model(a) -> Path | None:
    """The model --model names (default: the embedded one), or None after one line on stderr when
    there is no such file (the caller exits 2)."""
    from ms_perception.build import default_model
    model = a.model or default_model()
    if not model.is_file():
        print(f"{model}: no such model file; pass --model PATH.onnx", file=sys.stderr)
        return None
    return model


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n| slice | images | persons | MR % | misses at 0.3 | share of misses |\n|---|---|---|---|---|---|")
    for r in rows:
        mr = "–" if r["miss_rate"] is None else f"{r['miss_rate']:.1f}"
        share = "–" if r["miss_share"] is None else f"{r['miss_share']:.2f}"
        print(f"| {r['slice']} | {r['images']} | {r['persons']} | {mr} | {r['misses']} | {share} |")


def main(argv=None) -> int:
    from ms_perception.core import jsonio
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_demo_arguments(ap)
    ap.add_argument("--contrast", action="store_true",
                    help="also measure how visible each person is in each modality (the generator's masks)")
    ap.add_argument("--visibility", action="store_true",
                    help="also measure each person's ideal-observer detectability in each camera (the frame "
                         "rendered again without it; several times slower to generate)")
    ap.add_argument("--json", type=Path, default=None, help="also write the tables here")
    a = ap.parse_args(argv)
    model = chosen_model(a)
    if model is None:
        return 2
    report, pooled, hw = {"model": str(model), "pairs": a.pairs, "seeds": {}}, [], None
    for seed in a.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            recs, cfg = replay_demo(model, a.pairs, seed, Path(tmp))
            if a.visibility:   # in each camera, and in the model's inputs as this pipeline makes them
                from ms_perception.build import build_pipeline
                pipe = build_pipeline({"model_path": str(model), "calibration_file": str(Path(tmp) / "thermal_calibration.yaml"),
                                       "capture_enabled": False})
                unseen: set = set()
                report.setdefault("visibility", {})[str(seed)] = vis = modality_visibility(
                    cfg, seed, a.pairs, unseeable=unseen, to_input=model_input_fn(pipe))
                mark_below_rose(recs, unseen, key="unseeable")
        hw = (cfg.height, cfg.width)
        slices = {**SLICES, **(ROSE_SLICES if a.contrast else {}), **(IDEAL_SLICES if a.visibility else {})}
        if a.contrast:
            below: set = set()
            report.setdefault("contrast", {})[str(seed)] = c = modality_contrast(cfg, seed, a.pairs, below_rose=below)
            mark_below_rose(recs, below)
        rows = breakdown(recs, hw, slices)
        report["seeds"][str(seed)] = rows
        print_table(f"{model.name}: demo --pairs {a.pairs} --seed {seed}", rows)
        pooled.extend(recs)
        if a.contrast:
            print("\n| condition | crossover | persons | visible SNR p10/p50/p90 | thermal SNR p10/p50/p90 | "
                  "visible k | thermal k | k < 5 in both |\n|---|---|---|---|---|---|---|---|")
            for r in c:
                cells = [" / ".join(f"{x:.2f}" for x in r[k]) for k in ("visible_snr_p10_p50_p90", "thermal_snr_p10_p50_p90")]
                cells += [" / ".join(f"{x:.1f}" for x in r[k]) for k in ("visible_rose_k_p10_p50_p90", "thermal_rose_k_p10_p50_p90")]
                print(f"| {r['condition']} | {'yes' if r['crossover'] else 'no'} | {r['persons']} | "
                      + " | ".join(cells) + f" | {r['below_rose_in_both']} |")
        if a.visibility:
            print("\n| condition | crossover | persons | visible k p10/p50/p90 | thermal k p10/p50/p90 | "
                  "visible k < 5 | thermal k < 5 | k < 5 in both | in the model's input: visible k | thermal k | "
                  "k < 5 in both |\n|---|---|---|---|---|---|---|---|---|---|---|")
            for r in vis:
                cells = [" / ".join(f"{x:.1f}" for x in r[k]) for k in ("visible_k_p10_p50_p90", "thermal_k_p10_p50_p90")]
                inputs = [" / ".join(f"{x:.1f}" for x in r[k]) for k in ("visible_input_k_p10_p50_p90", "thermal_input_k_p10_p50_p90")]
                print(f"| {r['condition']} | {'yes' if r['crossover'] else 'no'} | {r['persons']} | " + " | ".join(cells)
                      + f" | {r['visible_k_below_5']} | {r['thermal_k_below_5']} | {r['below_5_in_both']} | "
                      + " | ".join(inputs) + f" | {r['below_5_in_both_inputs']} |")
    if len(a.seeds) > 1:
        report["pooled"] = breakdown(pooled, hw, slices)
        print_table(f"{model.name}: seeds {', '.join(map(str, a.seeds))} pooled ({len(pooled)} pairs)",
                    report["pooled"])
    if a.json:
        from ms_perception.core.atomic import atomic_write
        atomic_write(a.json, jsonio.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
