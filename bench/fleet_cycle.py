"""The fleet loop end to end, on synthetic data, with the generator's ground truth as the annotator.

    python bench/fleet_cycle.py --out /tmp/fleet_cycle        # ~30 min on a 2-core CPU

1. parent: the embedded default model's recipe (config/experiments/default_model_synthetic.yaml:
   600 synthetic pairs, seed 1, 1500 iterations), trained and exported with its lineage. The
   embedded ONNX's checkpoint was not kept, so the robots run this retrained twin (``--parent-
   checkpoint`` reuses one).
2. three robots, each a rosbag2 of its own sequences (seed and conditions: a day street, a
   night patrol, fog with objects at background temperature), replayed through the runtime with
   capture on (`ms-perception replay --capture-dir`, every pair recorded: the pool is everything
   the robots saw, as in the active-learning paper's setting).
3. `captures merge` -> `captures select --budget B` (inconsistency, entropy, random) ->
   `captures export --format coco --pre-annotate` -> the annotator: every exported image gets
   the generator's ground-truth boxes in the tool's COCO file -> `captures import`.
4. fine-tune from the parent (`train fit --init-checkpoint --parent-model`) on the original 600
   pairs plus the imported labels (``data.also``, repeat R), one run per strategy, plus a control
   with the same iterations on the original data alone (what extra training alone buys).
5. replay again: every model on one held-out bag of new sequences from the three robots'
   conditions (`ms-perception replay`), person log-average miss rate (KAIST protocol) all/day/night.

Writes OUT/results.json and prints a table (the numbers in bench/RESULTS.md come from it). Each
finished step is kept: a rerun with the same OUT continues.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from ms_perception.core import jsonio
from ms_perception.replay.bag import write_bag
from ms_perception.synth.generator import CLASS_NAMES, SynthConfig, SyntheticGenerator

ROOT = Path(__file__).resolve().parents[1]
MODEL_CFG = ROOT / "config/models/default_gaff_three_branch.yaml"
PARENT_EXP = ROOT / "config/experiments/default_model_synthetic.yaml"
VIS, TH = "/camera/visible/image_raw", "/camera/thermal/image_raw"
ROBOTS = {   # id: (seed, conditions)
    "day-street": (101, dict(night_fraction=0.1, dusk_fraction=0.05, fog_fraction=0.05)),
    "night-patrol": (102, dict(night_fraction=0.8, dusk_fraction=0.1, fog_fraction=0.05)),
    "fog-yard": (103, dict(night_fraction=0.3, dusk_fraction=0.1, fog_fraction=0.4, crossover_fraction=0.3)),
}


def sh(argv: list[str], log: Path) -> dict:
    """Run a CLI; its last stdout line is its JSON summary. Output kept in ``log``."""
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(" ".join(argv) + "\n\n" + p.stdout + "\n--- stderr\n" + p.stderr)
    if p.returncode not in (0, 1):
        sys.exit(f"failed ({p.returncode}): {' '.join(argv)}\n{p.stderr[-3000:]}")
    print(f"  {' '.join(Path(a).name if '/' in a else a for a in argv[2:6])} ... {time.perf_counter() - t0:.0f} s")
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "ms_perception.cli", *map(str, args)]


def write_robot_bag(out: Path, parts: list[tuple[int, dict, int, float]]) -> Path:
    """A bag of the given (seed, conditions, pairs, start second) sequences + annotations (by visible stamp)."""
    if (out / "annotations.json").exists():
        return out
    records, anns = [], []
    for seed, cond, pairs, start in parts:
        cfg = SynthConfig(width=640, height=512, thermal_factor=4, misregistration_px=0.0, start_time_s=start, **cond)
        for sp in SyntheticGenerator(cfg, seed).pairs(pairs):
            from ms_perception.core.frames import Frame
            records.append((VIS, Frame(sp.visible, sp.stamp_visible_ns, "rgb8", "visible_optical"),
                            sp.stamp_visible_ns + 3_000_000))
            records.append((TH, Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16", "thermal_optical"),
                            sp.stamp_thermal_ns + 5_000_000))
            anns.append({"stamp_ns": sp.stamp_visible_ns, "condition": sp.condition,
                         "objects": [{"box": [float(v) for v in o.box], "class_id": int(o.class_id),
                                      "occlusion": int(o.occlusion)} for o in sp.objects]})
            hom = sp.homography
    records.sort(key=lambda r: r[2])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_bag(tmp / "bag", records, storage="mcap")
    (tmp / "bag" / "annotations.json").write_text(jsonio.dumps(anns))
    (tmp / "calibration.yaml").write_text(f"thermal_to_visible:\n  homography: {np.round(hom, 9).tolist()}\n")
    shutil.move(str(tmp / "bag"), str(out))
    shutil.move(str(tmp / "calibration.yaml"), str(out.parent / f"{out.name}.calibration.yaml"))
    shutil.rmtree(tmp)
    return out


def ground_truth_labels(export: Path, pool_gt: dict, out: Path) -> int:
    """The annotator: the export's own COCO file with every image's boxes replaced by the ground truth."""
    doc = json.loads((export / "annotations" / "instances_default.json").read_text())
    frames = json.loads((export / "export.json").read_text())["frames"]
    cat = {c["name"]: c["id"] for c in doc["categories"]}
    anns = []
    for im in doc["images"]:
        key = frames[Path(im["file_name"]).stem]["key"]
        for o in pool_gt[key]:
            name = CLASS_NAMES[o["class_id"]]
            if name not in cat:
                continue
            x1, y1, x2, y2 = o["box"]
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                         "segmentation": []})
    doc["annotations"] = anns
    out.write_text(jsonio.dumps(doc))
    return len(anns)


def record_ground_truth(pool: Path, gts: dict) -> dict:
    """Pool record key -> ground-truth objects, by robot and visible stamp."""
    out = {}
    for rec in (pool / "records").glob("*/*/record.json"):
        meta = json.loads(rec.read_text())
        robot = rec.parent.parent.name
        out[f"{robot}/{rec.parent.name}"] = gts[robot][int(meta["stamp_ns"])]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs-per-robot", type=int, default=200)
    ap.add_argument("--test-pairs-per-robot", type=int, default=150)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--strategies", default="inconsistency,entropy,random")
    ap.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations (each arm)")
    ap.add_argument("--repeat", type=int, default=3, help="fleet frames appear this many times per pass")
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--parent-iterations", type=int, default=0, help="default: the default model's recipe (1500)")
    ap.add_argument("--parent-checkpoint", help="reuse this parent checkpoint (trained by the default recipe)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results["settings"] = vars(args)

    # 1. the parent ----------------------------------------------------------------------
    print("[1/5] parent model (the default model's recipe)")
    parent_ck = Path(args.parent_checkpoint) if args.parent_checkpoint else out / "parent" / "last.pt"
    if not parent_ck.exists():
        fit = [sys.executable, "-m", "ms_perception_training.cli", "fit", "--config", str(PARENT_EXP),
               "--out", str(out / "parent"), "--json"]
        if args.parent_iterations:
            fit += ["--iterations", str(args.parent_iterations)]
        results["parent_fit"] = sh(fit, out / "logs" / "parent_fit.txt")
    parent = out / "parent.onnx"
    if not parent.exists():
        sh([sys.executable, "-m", "ms_perception_training.cli", "export", "--config", str(MODEL_CFG),
            "--checkpoint", str(parent_ck), "--out", str(parent), "--json"], out / "logs" / "parent_export.txt")

    # 2. robots capture --------------------------------------------------------------------
    print("[2/5] three robots capture with the parent")
    gts = {}
    for k, (robot, (seed, cond)) in enumerate(ROBOTS.items()):
        bag = write_robot_bag(out / "bags" / robot, [(seed, cond, args.pairs_per_robot, 1.7e9 + k * 1e5)])
        gts[robot] = {int(a["stamp_ns"]): a["objects"] for a in json.loads((bag / "annotations.json").read_text())}
        if not (out / "captures" / robot).exists():
            sh(cli("replay", bag, "--model", parent, "--calibration", out / "bags" / f"{robot}.calibration.yaml",
                   "--capture-dir", out / "captures", "--robot-id", robot, "--capture-threshold", 0,
                   "--capture-min-interval", 0, "--capture-quota-mb", 100000, "--param",
                   "capture_duplicate_threshold=0.0", "--param", "capture_queue_size=10000", "--json"),
               out / "logs" / f"capture_{robot}.txt")

    # 3. merge, select, export, label, import --------------------------------------------------
    print("[3/5] merge -> select -> export -> ground-truth labels -> import")
    pool = out / "pool"
    if not (pool / "pool.sqlite").exists():
        sh(cli("captures", "merge", *[out / "captures" / r for r in ROBOTS], "--out", pool),
           out / "logs" / "merge.txt")
    from ms_perception.fleet.pool import Pool
    with Pool(pool) as pl:
        info = {"records": len(pl), **pl.counts()}
    results["pool"] = info
    print(f"  pool: {jsonio.dumps(info)}")
    pool_gt = record_ground_truth(pool, gts)
    strategies = [s for s in args.strategies.split(",") if s]
    for strat in strategies:
        ds = out / "labels" / strat
        if (ds / "annotations.json").exists():
            continue
        sel = out / "selections" / f"{strat}.json"
        sel.parent.mkdir(parents=True, exist_ok=True)
        sh(cli("captures", "select", pool, "--budget", args.budget, "--strategy", strat, "--seed", 0, "--out", sel),
           out / "logs" / f"select_{strat}.txt")
        exp = out / "exports" / strat
        shutil.rmtree(exp, ignore_errors=True)
        sh(cli("captures", "export", sel, "--format", "coco", "--pre-annotate", "--out", exp),
           out / "logs" / f"export_{strat}.txt")
        labels = exp / "labels_ground_truth.json"
        n = ground_truth_labels(exp, pool_gt, labels)
        sh(cli("captures", "import", labels, "--format", "coco", "--export", exp, "--into", ds),
           out / "logs" / f"import_{strat}.txt")
        results.setdefault("labels", {})[strat] = {"boxes": n}
        # each arm is its own first round: the next strategy chooses from every frame again
        with Pool(pool) as pl:
            pl.mark(json.loads(sel.read_text())["records"], "new", None)

    # 4. fine-tune -------------------------------------------------------------------------
    print("[4/5] fine-tune from the parent: original data + fleet labels, and a control without them")
    base = yaml.safe_load(PARENT_EXP.read_text())
    arms = {"control": None, **{s: out / "labels" / s for s in strategies}}
    for arm, ds in arms.items():
        run = out / "finetune" / arm
        if (run / "last.pt").exists() and (out / f"{arm}.onnx").exists():
            continue
        data = dict(base["data"])
        if ds is not None:
            data["also"] = [{"type": "captures", "root": str(ds), "repeat": args.repeat}]
        exp = {**base, "model": str(MODEL_CFG), "data": data, "iterations": args.iterations, "lr": args.lr,
               "warmup_iterations": 20, "tensorboard": False}
        cfg = out / "finetune" / f"{arm}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(exp))
        results.setdefault("finetune", {})[arm] = sh(
            [sys.executable, "-m", "ms_perception_training.cli", "fit", "--config", str(cfg), "--out", str(run),
             "--init-checkpoint", str(parent_ck), "--parent-model", str(parent), "--json"],
            out / "logs" / f"fit_{arm}.txt")
        sh([sys.executable, "-m", "ms_perception_training.cli", "export", "--config", str(MODEL_CFG), "--checkpoint",
            str(run / "last.pt"), "--out", str(out / f"{arm}.onnx"), "--json"], out / "logs" / f"export_{arm}.txt")

    # 5. replay again on held-out sequences ----------------------------------------------------
    print("[5/5] replay every model on held-out sequences from the robots' conditions")
    test = write_robot_bag(out / "bags" / "test", [(seed + 100, cond, args.test_pairs_per_robot, 1.8e9 + k * 1e5)
                                                   for k, (seed, cond) in enumerate(ROBOTS.values())])
    from ms_perception.build import default_model
    models = {"embedded_default": default_model(), "parent": parent, **{a: out / f"{a}.onnx" for a in arms}}
    results["replay"] = {}
    for name, model in models.items():
        r = sh(cli("replay", test, "--model", model, "--calibration", out / "bags" / "test.calibration.yaml",
                   "--json", "--out", out / "replay" / f"{name}.json"), out / "logs" / f"replay_{name}.txt")
        results["replay"][name] = {"miss_rate": r.get("miss_rate"), "pairs": r.get("pairs"),
                                   "model_sha256": r.get("model_sha256"), "lineage": r.get("lineage")}
    results["seconds"] = round(time.perf_counter() - t_all, 1)
    res_path.write_text(jsonio.dumps(results, indent=1))

    print(f"\nperson log-average miss rate on {results['replay']['parent']['pairs']} held-out pairs (lower is better); "
          f"budget {args.budget} of {info.get('records', '?')} pool frames, {args.iterations} fine-tuning iterations")
    print(f"{'model':<18}{'all':>8}{'day':>8}{'night':>8}  fleet frames")
    for name, r in results["replay"].items():
        mr = r["miss_rate"] or {}
        lin = r["lineage"] or {}
        print(f"{name:<18}{mr.get('all', float('nan')):>8.2f}{mr.get('day', float('nan')):>8.2f}"
              f"{mr.get('night', float('nan')):>8.2f}  {lin.get('fleet_frames', '-')}")
    print(f"total {results['seconds']:.0f} s; {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
