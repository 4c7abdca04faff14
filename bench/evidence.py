"""The evidence protocol of issue [evidence] (outside CI): every arm of
``bench/train_experiments.py`` trained on one fixed synthetic benchmark written to disk in the
KAIST layout and read through the ``kaist`` data source (the code path a KAIST user runs), with a
learning curve, a convergence check, at least 3 seeds, and each paper claim labelled
holds / not shown / reversed / not read (``ms_perception_training.evidence``).

    # 1. the benchmark, once (train + test split, the generator's night, fog, crossover,
    #    distractors and misregistration)
    python bench/evidence.py dataset --root /data/ms_evidence --pairs 6000 --size 640x512
    # 2. arms x seeds, resumable: each call trains at most --chunk iterations per run, then moves on;
    #    call again until every run is done (a GPU machine's 10-minute commands fit this)
    python bench/evidence.py run --root /data/ms_evidence --tag gpu --seeds 0 1 2 \
        --iterations 20000 --eval-every 1000 --chunk 2000 --arms add_fusion visible_only thermal_only
    # 3. the claims table (markdown) from bench/results/evidence_<tag>_seed*.jsonl
    python bench/evidence.py summarize --tag gpu
    # 4. miss rate vs FPPI of each arm's final model (one seed) on the test split, by subset
    python bench/evidence.py curves --root /data/ms_evidence --tag gpu --seed 0 \
        --arms add_fusion visible_only thermal_only --out bench/results/evidence_gpu_mr_fppi

    # 5. the test split's own noise: each final model's MR over scene-block bootstrap resamples
    python bench/evidence.py noise --root /data/ms_evidence --tag gpu --seed 0 --arms gaff add_fusion
    # 6. what each loss part weighs: mean train-loss parts over the first and last fifth of each run
    python bench/evidence.py parts --tag gpu --seeds 0 1 2 --arms rgb_only_cm_hard rgb_only_distilled
    # 7. Modality Distillation across thermal resolutions (the paper's Table 3 beside ours), and a plot
    python bench/evidence.py factors --tag gpu --plot bench/results/evidence_gpu_md_factors.png

Teachers are trained before their students in each seed (a distillation arm waits for its
teacher's run to finish), and a distillation claim is read only where the teacher beats the
student trained alone. A teacher whose row is recorded but whose weights are gone (a wiped /tmp,
another machine) is trained again with ``run --retrain-teachers``: its students use it when it
reproduces the recorded curve exactly, or, with ``--accept-retrained-teachers``, whatever it gives,
and each student's row then records the teacher it had (``teacher_retrained``).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_experiments  # noqa: E402
from train_experiments import ARMS, arm_configs  # noqa: E402

from ms_perception.core import jsonio  # noqa: E402

RESULTS = Path(os.environ.get("MS_PERCEPTION_EVIDENCE_RESULTS", train_experiments.RESULTS))

CLAIMS = [  # (name, better, worse, subset, names of the claims it requires to hold first)
    ("fusion beats visible-only at night", "add_fusion", "visible_only", "night", ()),
    ("fusion beats thermal-only by day", "add_fusion", "thermal_only", "day", ()),
    ("GAFF beats add-fusion", "gaff", "add_fusion", "all", ()),
    ("GAFF's guidance beats unguided attention", "gaff", "gaff_unguided", "all", ()),
    ("CFR beats the FSSD average-fusion baseline", "cfr", "fssd_avg_baseline", "all", ()),
    ("PS-Fuse beats the FSSD average-fusion baseline", "psfuse", "fssd_avg_baseline", "all", ()),
    ("PS-Fuse setting B beats the FSSD average-fusion baseline", "psfuse_b", "fssd_avg_baseline", "all", ()),
    ("CFL + MAF beats the decision-level average", "cfl_maf", "decision_avg", "all", ()),
    ("Mutual Guidance beats IoU assignment", "gaff_mutual_guidance", "gaff", "all", ()),
    ("PDF teacher beats the plain student", "pdf_teacher", "pdf_none", "all", ()),
    ("PDF-Distil beats no distillation", "pdf_distil", "pdf_none", "all", ("PDF teacher beats the plain student",)),
    ("PDF-Distil beats FitNets", "pdf_distil", "pdf_fitnets", "all", ("PDF teacher beats the plain student",)),
    ("PDF-Distil beats hard top-25 % sampling (Table 3.5)", "pdf_distil", "pdf_hard25", "all",
     ("PDF teacher beats the plain student",)),
    # the same from a teacher at twice the width (bench/train_experiments.py::PDF_WIDE)
    ("the wider PDF teacher beats the plain student", "pdf_teacher_w025", "pdf_none", "all", ()),
    *[(f"PDF-Distil beats {what} (the wider teacher)", "pdf_distil_wt", worse, "all",
       ("the wider PDF teacher beats the plain student",))
      for what, worse in (("no distillation", "pdf_none"), ("FitNets", "pdf_fitnets_wt"),
                          ("hard top-25 % sampling", "pdf_hard25_wt"))],
    ("GAFF teacher beats the native MD student (16x)", "gaff", "md_native_16x", "all", ()),
    ("MD distillation beats the native student (16x)", "md_distilled_16x", "md_native_16x", "all",
     ("GAFF teacher beats the native MD student (16x)",)),
    *[c for k in (1, 4, 64) for c in (
        (f"GAFF teacher beats the native MD student ({k}x)", "gaff", f"md_native_{k}x", "all", ()),
        (f"MD distillation beats the native student ({k}x)", f"md_distilled_{k}x", f"md_native_{k}x", "all",
         (f"GAFF teacher beats the native MD student ({k}x)",)))],
    ("MD distillation beats the native student (no thermal)", "md_distilled_no_thermal", "md_native_no_thermal",
     "all", ()),
    # the MD paper's own pair (GAFF at every level, light head; issue [train-data]) at 16x and 64x
    *[c for k in (16, 64) for c in (
        (f"the paper's GAFF teacher beats its native MD student ({k}x)", "mdp_teacher", f"mdp_native_{k}x", "all", ()),
        (f"MD distillation beats the native student (the paper's pair, {k}x)", f"mdp_distilled_{k}x",
         f"mdp_native_{k}x", "all", (f"the paper's GAFF teacher beats its native MD student ({k}x)",)))],
    ("the paper's pair at 16x: F-MSE at a tenth of its weight beats the paper's weight", "mdp_distilled_16x_sem01",
     "mdp_distilled_16x", "all", ()),
    ("the paper's pair at 16x: distilling C5 beats distilling C4", "mdp_distilled_16x_c5", "mdp_distilled_16x", "all", ()),
    # issue [speed]: the deployment student (the paper's light head) must not lose accuracy; "holds" means it loses
    ("today's 16x student beats the light-head deployment student (native)", "md_native_16x", "mdp_native_16x",
     "all", ()),
    ("cross-modal distillation beats the plain RGB-only student", "rgb_only_distilled", "rgb_only_plain", "all", ()),
    # Liu et al. Table IV: each term alone beats the student without a teacher (here: the same
    # distiller with every teacher term off, so that only the term differs), and all four beat it
    ("feature distillation alone beats none (Table IV)", "rgb_only_cm_fea", "rgb_only_cm_hard", "all", ()),
    ("classification distillation alone beats none (Table IV)", "rgb_only_cm_cls", "rgb_only_cm_hard", "all", ()),
    ("regression distillation alone beats none (Table IV)", "rgb_only_cm_bbr", "rgb_only_cm_hard", "all", ()),
    ("segmentation distillation alone beats none (Table IV)", "rgb_only_cm_seg", "rgb_only_cm_hard", "all", ()),
    # thesis Table 3.2, each step on top of the previous one (the thesis measures VOC mAP; here MR)
    ("CEM beats the baseline (Table 3.2)", "bp_cem", "bp_baseline", "all", ()),
    ("mixup, warmup and cosine beat CEM alone (Table 3.2)", "bp_cem_mixup_cosine", "bp_cem", "all", ()),
    ("balanced L1 beats smooth L1 with the other practices (Table 3.2)", "bp_all", "bp_cem_mixup_cosine", "all", ()),
    # the bundled step taken apart (not a row of the thesis's table)
    ("warmup and cosine beat the step schedule (with CEM)", "bp_cem_cosine", "bp_cem", "all", ()),
    ("multi-scale training beats one scale (the Table 3.2 baseline)", "bp_baseline_ms", "bp_baseline", "all", ()),
    ("mixup helps (with CEM, warmup and cosine)", "bp_cem_mixup_cosine", "bp_cem_cosine", "all", ()),
    ("all four distillation terms beat none (Table IV)", "rgb_only_distilled", "rgb_only_cm_hard", "all", ()),
    ("balanced L1 beats smooth L1 (thesis Table 3.2; the RGB-only student)", "rgb_only_plain",
     "rgb_only_plain_smoothl1", "all", ()),
]


def _size(s: str) -> tuple[int, int]:
    w, h = s.lower().split("x")
    return int(w), int(h)


def make_dataset(root: Path, pairs: int, size: tuple[int, int], seed: int = 7) -> int:
    """The benchmark, through the product's own writer (``ms-perception synth --format kaist``)."""
    cmd = [sys.executable, "-m", "ms_perception.cli", "synth", "--format", "kaist", "--out", str(root),
           "--pairs", str(pairs), "--size", f"{size[0]}x{size[1]}", "--seed", str(seed), "--night-fraction", "0.4",
           "--thermal-factor", "4", "--sequence-length", "4", "--test-every", "5", "--json"]
    rc = subprocess.run(cmd, check=False).returncode
    if rc == 0 and not (root / "imageSets" / "test.txt").read_text().split():
        print(f"{root}: the test split is empty (every 5th scene of 4 pairs is held out); write at least 20 pairs",
              file=sys.stderr)
        return 2
    return rc


def results_file(tag: str, seed: int) -> Path:
    return RESULTS / f"evidence_{tag}_seed{seed}.jsonl"


def run_chunk(arm: str, seed: int, root: Path, iterations: int, eval_every: int, chunk: int, work: Path,
              device: str = "auto", workers: int = 2) -> dict | None:
    """Train ``arm`` for at most ``chunk`` more iterations (resuming exactly); the result row when the
    run has reached ``iterations``, else None."""
    import torch
    from ms_perception_training.data.sources import DataConfig
    from ms_perception_training.evidence import converged
    from ms_perception_training.fit import fit
    cfg, mcfg, tcfg, teacher = arm_configs(arm, work)
    cfg.data = DataConfig(type="kaist", root=str(root), split="train", thermal_dir="lwir16", workers=workers)
    cfg.eval.pairs, cfg.eval.split, cfg.eval.every = 0, "test", eval_every
    cfg.seed, cfg.iterations, cfg.tensorboard, cfg.device = seed, iterations, False, device
    cfg.warmup_iterations = max(10, iterations // 20)
    cfg.checkpoint_every = max(1, min(chunk, eval_every))
    if teacher:
        cfg.distill.teacher_checkpoint = str(work / f"{teacher}_s{seed}" / "last.pt")
    out = work / f"{arm}_s{seed}"
    resume = (out / "last.pt").exists()
    s = fit(cfg, mcfg, out, log=lambda *a: None, resume=resume, stop_after=chunk, teacher_cfg=tcfg)
    if torch.load(out / "last.pt", weights_only=True, map_location="cpu")["iteration"] < iterations:
        return None
    curve = s.get("curve", [])
    # the run's training and evaluation time over all its chunks, kept in last.pt by fit (a chunk
    # killed between checkpoints counts to its last one); timed_from_iteration > 0: the run was
    # resumed from a checkpoint written before fit kept the time, whose earlier time is unknown
    run = s["run"]
    timing = {"timed_from_iteration": run["from_iteration"]} if run["from_iteration"] else {}
    return {"arm": arm, "seed": seed, "iterations": iterations, "model": mcfg.name, "device": s["device"],
            "wall_seconds": run["seconds"], "images_per_second": run["images_per_second"],
            "data_wait_fraction": run["data_wait_fraction"], **timing, "environment": environment(),
            "curve": curve, "converged": converged(curve, "all"), **(curve[-1] if curve else {})}


def timed_from(row: dict) -> str:
    """A row whose time covers only the iterations after a resume (see ``run_arm``) says so."""
    k = row.get("timed_from_iteration")
    return f" (iterations {k}–{row['iterations']} only)" if k else ""


def environment() -> dict:
    """What a run's numbers rest on besides the code and the seed. The same seed reproduces a run
    bit for bit on one machine and environment (tested), but not across CPUs: the kernels PyTorch
    picks for the instruction set change the sums (seed 0 of CFL+MAF at iteration 300: 93.1 with
    AVX-512, 94.5 with ONEDNN_MAX_CPU_ISA=AVX2 on the same machine, 90.5 on session 19's), so
    each row says where it ran."""
    import platform

    import cv2
    import numpy as np
    import torch
    cpu = platform.processor()
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "cpu": cpu, "cpu_flags_avx512": "avx512f" in _cpu_flags(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cpu_flags() -> set:
    try:
        return set(next(x.split(":", 1)[1].split() for x in Path("/proc/cpuinfo").read_text().splitlines()
                        if x.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def final_predictions(args):
    """(arm, model config, test items, predictions) of each of ``args.arms``' final checkpoint of
    ``args.seed`` on the benchmark's test split; an arm whose checkpoint is not in ``args.work`` is
    named on stderr and left out."""
    import torch
    from ms_perception_training.checkpoints import load_weights
    from ms_perception_training.data.sources import DataConfig, open_one
    from ms_perception_training.evaluate import _items, predict_pool
    from ms_perception_training.models.build import build_model
    train_experiments.SCALE["input"] = {"width": args.input[0], "height": args.input[1]}
    work = Path(args.work) / args.tag
    for arm in args.arms:
        ckpt = work / f"{arm}_s{args.seed}" / "last.pt"
        if not ckpt.exists():
            print(f"{arm}: no {ckpt}; train it first (evidence.py run, same --work and --tag)", file=sys.stderr)
            continue
        _, mcfg, _, _ = arm_configs(arm, work)
        model = build_model(mcfg)
        load_weights(model, str(ckpt))
        pool = open_one(mcfg, DataConfig(type="kaist", root=str(args.root), split="test", thermal_dir="lwir16",
                                         workers=0), split="test")
        with torch.no_grad():
            preds = predict_pool(model, mcfg, pool)
        yield arm, mcfg, _items(pool), preds


def mr_fppi_curves(args) -> dict:
    """Each arm's final checkpoint of one seed, evaluated on the benchmark's test split; writes
    ``<out>_<subset>.png`` (miss rate vs FPPI, KAIST devkit axes) and returns {arm: {subset: MR %}}."""
    from ms_perception_training.evaluate import person_curves
    from ms_perception_training.evidence import operating_points

    from ms_perception.metrics.plots import plot_miss_rate_curves
    per_subset: dict[str, dict] = {}
    table = {}
    for arm, mcfg, items, preds in final_predictions(args):
        res = person_curves(items, preds, mcfg.class_names)
        for k, r in res.items():
            print(f"{arm} {k}: " + jsonio.dumps(operating_points(r)), flush=True)
        table[arm] = {k: (None if r.miss_rate != r.miss_rate else round(100 * float(r.miss_rate), 2))
                      for k, r in res.items()}           # None: no regular ground truth in that subset
        for k, r in res.items():
            per_subset.setdefault(k, {})[arm] = r
    for k, arms in per_subset.items():
        path = plot_miss_rate_curves(arms, f"{args.out}_{k}.png", f"{args.tag} seed {args.seed}: {k}")
        print(f"wrote {path}")
    print(jsonio.dumps(table))
    return table


def eval_noise(args) -> dict:
    """How much of a difference between two runs the test split alone can make: each arm's final
    model of one seed on the test split, its person MR, and the spread of that MR over scene-block
    bootstrap resamples of the test split (``ms_perception_training.evidence.scene_bootstrap``).
    Prints a JSON line per arm and returns {arm: {...}}."""
    from ms_perception_training.evaluate import person_curves, person_images
    from ms_perception_training.evidence import bootstrap_summary, scene_bootstrap

    from ms_perception.metrics.kaist import person_miss_rates
    out, draws = {}, {}
    for arm, mcfg, items, preds in final_predictions(args):
        full = person_curves(items, preds, mcfg.class_names)
        rig_h, rig_w = items[0].letterbox.src_hw
        scenes = [it.name.rsplit("/", 1)[0] for it in items]     # setXX/VYYY: one scene's frames
        images = person_images(items, preds, mcfg.class_names)   # built once; a resample picks from them
        res = {}
        for k, r in full.items():
            def mr(idx, k=k):
                m = person_miss_rates([images[i] for i in idx], (rig_h, rig_w), height_floor=55.0 * rig_h / 512)
                return 100.0 * float(m[k].miss_rate)
            vals = scene_bootstrap(scenes, mr, args.resamples, args.seed)
            draws.setdefault(k, {})[arm] = vals                    # same seed and scenes: the same resamples
            res[k] = {"miss_rate": round(100.0 * float(r.miss_rate), 2), **bootstrap_summary(vals)}
        out[arm] = {"seed": args.seed, "test_pairs": len(items), "scenes": len(set(scenes)), **res}
        print(f"{arm}: " + jsonio.dumps(out[arm]), flush=True)
    # paired: the first arm against each other one on the same resamples (the test split's share of
    # a difference between two models; the seeds' share is the protocol's min-max ranges)
    first = next(iter(out), None)
    for arm in list(out)[1:]:
        diff = {}
        for k, by_arm in draws.items():
            if first in by_arm and arm in by_arm:
                diff[k] = {"difference": round(out[arm][k]["miss_rate"] - out[first][k]["miss_rate"], 2),
                           **bootstrap_summary(by_arm[arm] - by_arm[first])}
        out[f"{arm} - {first}"] = diff
        print(f"{arm} - {first}: " + jsonio.dumps(diff), flush=True)
    return out


def loss_parts(args) -> dict:
    """Each run's mean train-loss parts over the first and the last fifth of training (what a
    distillation term adds, next to the task losses it shares the gradient with). Prints one JSON
    line per arm and seed; a run without ``metrics.jsonl`` in --work is named and left out."""
    from ms_perception_training.evidence import mean_loss_parts
    work = Path(args.work) / args.tag
    out = {}
    for arm in args.arms:
        for seed in args.seeds:
            f = work / f"{arm}_s{seed}" / "metrics.jsonl"
            if not f.exists():
                print(f"{arm} seed {seed}: no {f}; train it first (evidence.py run, same --work and --tag)",
                      file=sys.stderr)
                continue
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            its = sorted(r["iteration"] for r in rows if r.get("kind") == "train")
            k = max(1, len(its) // 5)                 # a fifth of the logged train rows, at least one
            res = {"first_fifth": mean_loss_parts(rows, its[0], its[k - 1] + 1) if its else {},
                   "last_fifth": mean_loss_parts(rows, its[-k], its[-1] + 1) if its else {}}
            out[f"{arm} s{seed}"] = res
            print(f"{arm} s{seed}: " + jsonio.dumps(res), flush=True)
    return out


RETRAINED = "retrained_teacher.json"


def recorded_row(out: Path, arm: str) -> dict | None:
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    return next((r for r in rows if r["arm"] == arm), None)


def retrain_teacher(teacher: str, seed: int, out: Path, args, work: Path) -> bool:
    """Train the weights of a teacher whose row is recorded but whose weights are gone (``--retrain-teachers``),
    without a second row. Its students may use them only if the run reproduces the recorded curve (the
    trainer is deterministic on one machine); True when they may."""
    rec = recorded_row(out, teacher)
    tdir = work / f"{teacher}_s{seed}"
    retrain = work.parent / f"{work.name}.retrain"
    retrain.mkdir(parents=True, exist_ok=True)
    if rec is None or rec["iterations"] != args.iterations:
        print(f"{teacher} seed {seed}: no recorded row of {args.iterations} iterations in {out.name} to reproduce",
              flush=True)
        return False
    row = run_chunk(teacher, seed, Path(args.root), args.iterations, args.eval_every, args.chunk, retrain,
                    args.device, args.workers)
    if row is None:
        print(f"{teacher} seed {seed}: retraining its weights, chunk done, run again to continue", flush=True)
        return False
    same = [p["miss_rate"] for p in row["curve"]] == [p["miss_rate"] for p in rec["curve"]]
    if not same and not args.accept_retrained_teachers:
        print(f"{teacher} seed {seed}: the retrained teacher does not reproduce its recorded curve (final miss rate "
              f"{row.get('miss_rate')} vs {rec.get('miss_rate')}; another machine?): its students are not trained "
              f"from it; its weights stay in {work.name}.retrain for inspection (--accept-retrained-teachers uses "
              "them, and each student's row records the teacher it had)", flush=True)
        return False
    if tdir.exists():   # a folder without last.pt: an interrupted run, kept aside rather than deleted
        tdir.rename(tdir.with_name(f"{tdir.name}.incomplete-{int(time.time())}"))
    (retrain / tdir.name).rename(tdir)
    # what every student of this teacher records: the teacher it was distilled from is not the recorded row
    (tdir / RETRAINED).write_text(jsonio.dumps({
        "arm": teacher, "seed": seed, "reproduced": same, "recorded_miss_rate": rec.get("miss_rate"),
        "retrained_miss_rate": row.get("miss_rate"), "retrained_curve": row["curve"],
        "environment": row["environment"], "recorded_environment": rec.get("environment")}) + "\n")
    print(f"{teacher} seed {seed}: weights retrained, " + (
        f"the recorded curve reproduced exactly (final miss rate {row.get('miss_rate')})" if same else
        f"NOT the recorded curve (final miss rate {row.get('miss_rate')} vs {rec.get('miss_rate')}); used as "
        "--accept-retrained-teachers asks, and recorded in each student's row"), flush=True)
    return True


def run(args) -> int:
    # every arm's model input (the presets' own anchors suit 640x512; train_experiments' scale: 256x192)
    train_experiments.SCALE["input"] = {"width": args.input[0], "height": args.input[1]}
    work = Path(args.work) / args.tag
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    pending = 0
    for seed in args.seeds:
        out = results_file(args.tag, seed)
        done = {json.loads(x)["arm"] for x in out.read_text().splitlines()} if out.exists() else set()
        order = []
        for arm in args.arms:            # teachers first
            t = ARMS[arm][3]
            order += [a for a in (t, arm) if a and a not in order]
        for arm in order:
            if arm in done:
                continue
            t = ARMS[arm][3]
            if t and t not in done:
                pending += 1
                continue                 # the teacher is still training
            if t and not (work / f"{t}_s{seed}" / "last.pt").exists() and args.retrain_teachers:
                if not retrain_teacher(t, seed, out, args, work):
                    pending += 1
                    continue
            if t and not (work / f"{t}_s{seed}" / "last.pt").exists():
                pending += 1             # its row is recorded, its weights are not in this --work
                print(f"{arm} seed {seed}: its teacher {t} is done in {out.name}, but {work / f'{t}_s{seed}'}/last.pt "
                      f"is missing: run with the --work that trained it, or delete {t}'s row from {out.name} to "
                      "train the teacher again", flush=True)
                continue
            row = run_chunk(arm, seed, Path(args.root), args.iterations, args.eval_every, args.chunk, work,
                            args.device, args.workers)
            if row is not None and t and (work / f"{t}_s{seed}" / RETRAINED).exists():
                row["teacher_retrained"] = json.loads((work / f"{t}_s{seed}" / RETRAINED).read_text())
            if row is None:
                pending += 1
                print(f"{arm} seed {seed}: chunk done, run again to continue", flush=True)
                continue
            with open(out, "a") as f:          # runs of other arms may append to the same file
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(jsonio.dumps(row) + "\n")
                f.flush()
            done.add(arm)
            print(f"{arm} seed {seed}: done, miss rate {row.get('miss_rate')}, converged {row['converged']}",
                  flush=True)
    print(f"{pending} run(s) still pending" if pending else "every run is done")
    return 0


def read_runs(tag: str) -> dict[str, list[dict]]:
    """Every recorded row of ``tag``, by arm."""
    runs: dict[str, list[dict]] = {}
    for f in sorted(RESULTS.glob(f"evidence_{tag}_seed*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            runs.setdefault(r["arm"], []).append(r)
    return runs


# Modality Distillation, Table 3 (KAIST, ResNet-18 RetinaNet, MR % all): native -> distilled.
MD_FACTORS = ("1x", "4x", "16x", "64x", "no_thermal")
MD_PAPER = {"1x": (9.40, 7.78), "4x": (9.84, 7.91), "16x": (10.17, 8.03), "64x": (13.37, 9.50),
            "no_thermal": (22.84, 21.08)}


def md_factors(tag: str, plot: str | None = None) -> str:
    """The native and the distilled MD student at each thermal factor (mean [min–max] over seeds; * marks
    a seed that failed the convergence rule), the teacher, and the paper's Table 3 beside them."""
    import numpy as np
    runs = read_runs(tag)

    def stats(arm, subset="all"):
        vals = [r["miss_rate"][subset] for r in runs.get(arm, [])]
        return (float(np.mean(vals)), min(vals), max(vals), len(vals)) if vals else None

    def cell(arm, subset="all"):
        st = stats(arm, subset)
        if not st:
            return "–"
        nc = sum(1 for r in runs[arm] if not r.get("converged"))
        return f"{st[0]:.1f} [{st[1]:.1f}–{st[2]:.1f}] ({st[3]}{'*' * nc})"
    lines = ["| thermal input | native student | distilled student | distilled − native (mean) | "
             "native, night | distilled, night | paper: native → MD |", "|---|---|---|---|---|---|---|"]
    points, paper_points = {}, {}

    def row(k, nat, dis, label):
        a, b = stats(nat), stats(dis)
        diff = f"{b[0] - a[0]:+.1f}" if a and b else "–"
        lines.append(f"| {label} | {cell(nat)} | {cell(dis)} | {diff} | {cell(nat, 'night')} | {cell(dis, 'night')} | "
                     f"{MD_PAPER[k][0]:.2f} → {MD_PAPER[k][1]:.2f} |")
        return a, b
    for k in MD_FACTORS:
        label = k.replace("_", " ") if k == "no_thermal" else f"{k} fewer pixels" if k != "1x" else "full resolution"
        points[k] = row(k, f"md_native_{k}", f"md_distilled_{k}", label)
    # the paper's own pair (GAFF at every level, light head), where it has run
    for k in MD_FACTORS:
        if runs.get(f"mdp_native_{k}") or runs.get(f"mdp_distilled_{k}"):
            paper_points[k] = row(k, f"mdp_native_{k}", f"mdp_distilled_{k}",
                                  f"{k} fewer pixels, the paper's pair (light head)")
    teacher, paper_teacher = stats("gaff"), stats("mdp_teacher")
    if teacher:
        lines.append(f"\nTeacher (GAFF two-stream, full-resolution thermal): {cell('gaff')}; paper 7.77. "
                     "(n*: n seeds, one * per seed that failed the convergence rule.)")
    if paper_teacher:
        lines.append(f"The paper's teacher (GAFF at every level, light head), of the paper's-pair rows: "
                     f"{cell('mdp_teacher')}.")
    if plot:
        from ms_perception.metrics.plots import _pyplot
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.8))
        xs = np.arange(len(MD_FACTORS))
        for j, (name, color) in enumerate((("native", "tab:gray"), ("distilled (MD)", "tab:blue"))):
            got = [(x, points[k][j]) for x, k in zip(xs, MD_FACTORS) if points[k][j]]
            if got:
                x = np.array([g[0] for g in got]) + (j - 0.5) * 0.12
                m = np.array([g[1][0] for g in got])
                err = np.array([[g[1][0] - g[1][1] for g in got], [g[1][2] - g[1][0] for g in got]])
                ax.errorbar(x, m, yerr=err, fmt="o-", capsize=3, color=color, label=f"{name}, mean [min–max]")
        for j, (name, color) in enumerate((("native, paper's pair", "tab:gray"), ("distilled, paper's pair", "tab:blue"))):
            got = [(x, paper_points[k][j]) for x, k in zip(xs, MD_FACTORS) if paper_points.get(k, (None, None))[j]]
            if got:
                x = np.array([g[0] for g in got]) + (j - 0.5) * 0.12 + 0.3
                m = np.array([g[1][0] for g in got])
                err = np.array([[g[1][0] - g[1][1] for g in got], [g[1][2] - g[1][0] for g in got]])
                ax.errorbar(x, m, yerr=err, fmt="s", mfc="none", capsize=3, color=color, label=f"{name}, mean [min–max]")
        if teacher:
            ax.axhline(teacher[0], color="tab:red", ls="--", lw=1, label=f"teacher (GAFF) {teacher[0]:.1f}")
        if paper_teacher:
            ax.axhline(paper_teacher[0], color="tab:orange", ls=":", lw=1,
                       label=f"the paper's teacher {paper_teacher[0]:.1f}")
        ax.set_xticks(xs, ["1x", "4x", "16x", "64x", "none"])
        ax.set_xlabel("thermal pixels divided by")
        ax.set_ylabel("person miss rate, all (%) ↓")
        ax.set_title(f"Modality Distillation vs thermal resolution ({tag})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
        plt.close(fig)
        lines.append(f"\nwrote {plot}")
    return "\n".join(lines)


def summarize(tag: str, min_seeds: int = 3) -> str:
    import numpy as np
    from ms_perception_training.evidence import Claim, late_changes, read_claim
    runs = read_runs(tag)
    lines = ["| claim | subset | better arm (MR mean [min–max]) | worse arm | label |", "|---|---|---|---|---|"]
    read = {}
    for name, better, worse, subset, requires in CLAIMS:
        r = read_claim(Claim(name, better, worse, subset), runs, min_seeds)
        unmet = [q for q in requires if read.get(q, {}).get("label") != "holds"]
        if unmet and r["label"] != "not read":
            r = {**r, "label": "not read", "why": "requires: " + "; ".join(unmet)}
        read[name] = r

        def cell(arm):
            v = r.get(arm)
            return f"{arm} {v['mean']:.1f} [{v['min']:.1f}–{v['max']:.1f}] ({v['seeds']})" if v else f"{arm} –"
        label = r["label"] + (f" ({r['why']})" if r.get("why") else "")
        lines.append(f"| {name} | {subset} | {cell(better)} | {cell(worse)} | {label} |")
    conv = ["", "| arm | seed | iterations | converged | MR all | device | wall s | images/s |", "|---|---|---|---|---|---|---|---|"]
    for arm, rows in runs.items():
        for r in sorted(rows, key=lambda x: x["seed"]):
            mr = r.get("miss_rate", {}).get("all")
            conv.append(f"| {arm} | {r['seed']} | {r['iterations']} | {r['converged']} | {mr} | {r['device']} | "
                        f"{r['wall_seconds']}{timed_from(r)} | {r['images_per_second']} |")
    steps = [d for rows in runs.values() for r in rows for d in late_changes(r.get("curve", []))]
    if steps:
        q = np.percentile(steps, [50, 90])
        conv += ["", f"Change of MR (all) from one evaluation to the next over the last fifth, {len(steps)} steps in "
                 f"{sum(len(v) for v in runs.values())} runs: median {q[0]:.2f}, 90th percentile {q[1]:.2f} points "
                 "(the convergence rule allows less than 1.0 from the first to the last)."]
    return "\n".join(lines + conv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset")
    d.add_argument("--root", required=True)
    d.add_argument("--pairs", type=int, default=6000)
    d.add_argument("--size", type=_size, default=(640, 512))
    d.add_argument("--seed", type=int, default=7)
    r = sub.add_parser("run")
    r.add_argument("--root", required=True)
    r.add_argument("--tag", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    r.add_argument("--iterations", type=int, required=True)
    r.add_argument("--eval-every", type=int, required=True)
    r.add_argument("--chunk", type=int, default=10 ** 9, help="at most this many iterations per run per call")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--input", type=_size, default=(256, 192), help="model input WxH of every arm (default 256x192)")
    r.add_argument("--work", default="/tmp/ms_perception_evidence")
    r.add_argument("--retrain-teachers", action="store_true",
                   help="a teacher whose row is recorded but whose weights are not in --work is trained again "
                        "(no second row); its students use it only if it reproduces the recorded curve exactly")
    r.add_argument("--accept-retrained-teachers", action="store_true",
                   help="with --retrain-teachers: use a retrained teacher that does not reproduce its recorded "
                        "curve (another CPU); each student's row records the teacher's own miss rate")
    c = sub.add_parser("curves")
    c.add_argument("--root", required=True)
    c.add_argument("--tag", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--arms", nargs="+", default=["add_fusion", "visible_only", "thermal_only"], choices=list(ARMS))
    c.add_argument("--input", type=_size, default=(256, 192))
    c.add_argument("--work", default="/tmp/ms_perception_evidence")
    c.add_argument("--out", required=True, help="PNG path prefix: <out>_all.png, <out>_day.png, <out>_night.png")
    n = sub.add_parser("noise", help="the test split's own noise: scene-block bootstrap of final models' MR")
    n.add_argument("--root", required=True)
    n.add_argument("--tag", required=True)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--arms", nargs="+", required=True, choices=list(ARMS))
    n.add_argument("--input", type=_size, default=(256, 192))
    n.add_argument("--work", default="/tmp/ms_perception_evidence")
    n.add_argument("--resamples", type=int, default=200)
    lp = sub.add_parser("parts", help="each run's mean train-loss parts over the first and last fifth")
    lp.add_argument("--tag", required=True)
    lp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    lp.add_argument("--arms", nargs="+", required=True, choices=list(ARMS))
    lp.add_argument("--work", default="/tmp/ms_perception_evidence")
    fa = sub.add_parser("factors", help="Modality Distillation across thermal factors, beside the paper's Table 3")
    fa.add_argument("--tag", required=True)
    fa.add_argument("--plot", help="also draw miss rate vs thermal factor (native, distilled, teacher) to this PNG")
    s = sub.add_parser("summarize")
    s.add_argument("--tag", required=True)
    s.add_argument("--min-seeds", type=int, default=3)
    s.add_argument("--plot", help="also write every run's learning curve (miss rate, all) to this PNG")
    s.add_argument("--plot-arms", nargs="+", choices=list(ARMS), help="only these arms' runs in --plot")
    args = ap.parse_args()
    if args.cmd == "dataset":
        return make_dataset(Path(args.root), args.pairs, args.size, args.seed)
    if args.cmd == "run":
        return run(args)
    if args.cmd == "curves":
        return 0 if mr_fppi_curves(args) else 1
    if args.cmd == "noise":
        return 0 if eval_noise(args) else 1
    if args.cmd == "parts":
        return 0 if loss_parts(args) else 1
    if args.cmd == "factors":
        print(md_factors(args.tag, args.plot))
        return 0
    print(summarize(args.tag, args.min_seeds))
    if args.plot:
        from ms_perception.metrics.plots import plot_learning_curves
        curves = {}
        for f in sorted(RESULTS.glob(f"evidence_{args.tag}_seed*.jsonl")):
            for line in f.read_text().splitlines():
                r = json.loads(line)
                if not args.plot_arms or r["arm"] in args.plot_arms:
                    curves[f"{r['arm']} s{r['seed']}"] = r["curve"]
        if not curves:
            print(f"--plot: no run of {' '.join(args.plot_arms or ['any arm'])} in evidence_{args.tag}_seed*.jsonl; "
                  "nothing drawn")
            return 1
        drawn = plot_learning_curves(curves, args.plot, f"evidence {args.tag}", subsets=("all",),
                                     group=lambda label: label.rsplit(" s", 1)[0])     # "arm s0": one colour per arm
        print(f"wrote {drawn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
