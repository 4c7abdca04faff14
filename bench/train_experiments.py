"""The experiments of issue [training] on the synthetic generator (outside CI).

Every arm is trained through the same trainer (``ms_perception_training.fit``) from a config
in ``config/experiments`` or a small variant of one, then evaluated on held-out synthetic
pairs (seed 1001) with the project's metrics: person log-average miss rate (all/day/night,
lower is better) and COCO mAP / AP50.

    python bench/train_experiments.py --seeds 0 1 --iterations 300 --pairs 200 --jobs 2
    python bench/train_experiments.py --summarize            # table from bench/results/*.jsonl
    python bench/train_experiments.py --tag long --iterations 1000 --seeds 0 1 --jobs 2 \
        --arms fssd_avg_baseline cfr psfuse add_fusion gaff gaff_unguided gaff_mutual_guidance \
               md_native_16x md_distilled_16x md_native_no_thermal md_distilled_no_thermal
    python bench/train_experiments.py --tag long --summarize

Teachers (GAFF, CFL, PDF R34-PAFPN) are trained first in each seed and then distilled from.
Each (arm, seed) appends one JSON line to ``bench/results/training_seed<S>.jsonl``; a finished
(arm, seed) is skipped when the script runs again.
"""
from __future__ import annotations

import argparse
import json

from ms_perception.core import jsonio
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "config" / "experiments"
TINY = REPO / "config" / "models" / "tiny"
RESULTS = REPO / "bench" / "results"

# the cross-modal distiller with every soft / teacher term off (Liu et al. eq. 15-18's hard halves)
CM_OFF = {"distill.zeta": 1.0, "distill.epsilon": 0.0, "distill.xi": 1.0, "distill.rho": 0.0}

BP_VIS = ("twostream_add_r18_retinanet", {"fusion": {"scheme": "visible_only"}})
BP_VIS_CEM = ("twostream_add_r18_retinanet", {"fusion": {"scheme": "visible_only"}, "neck": {"cem": True}})
# thesis §3.4.1: "the input image resolution is randomly resized to 256x256 or 320x320 or 384x384 during
# training phase and fixed to 320x320 during evaluation": 0.8, 1 and 1.2 of the evaluation size. Factors,
# not pixels, so that the arm follows --input; arm_configs turns them into [width, height] lists.
MULTI_SCALE = ("factors", 0.8, 1.0, 1.2)
# The MD paper's pair (thesis parameter table: two complete ResNet-18 streams with GAFF at C4 and C5,
# a 128-channel FPN and a one-conv 128-channel head; the student is its image-level one-stream
# detector) at the evidence protocol's 1/8 backbone width: neck and head at 1/8 of 128 too. The tiny
# presets keep 32 channels everywhere, which would make the paper's light head 2x wider, relative to
# its backbone, than it is.
MDP_LIGHT = {"neck": {"channels": 16}, "head": {"channels": 16}}
# The PDF teacher at twice the protocol's width (1/4 backbone, 64-channel PAFPN and head). At 1/8 width
# the thesis's R34-PAFPN teacher does not beat its R18-FPN student (sessions 20 and 26), which every
# distillation claim needs first; at full width (the thesis) it has 2x the student's depth-driven
# capacity, here width buys what depth does not at this size. The student stays as it was.
PDF_WIDE = ("pdf_teacher_r34_pafpn_retinanet", {"backbone": {"width": 0.25}, "neck": {"channels": 64},
                                                "head": {"channels": 64}})

# arm -> (experiment yaml, overrides of the fit config ("distill.zeta": a nested field), model-config
# overrides or None, teacher arm)
ARMS = {
    # fusion vs one modality (day / night)
    "add_fusion": ("halfway_baseline_fssd_smoke", {"model": str(TINY / "twostream_add_r18_retinanet.yaml")}, None, None),
    "visible_only": ("halfway_baseline_fssd_smoke", {}, ("twostream_add_r18_retinanet", {"fusion": {"scheme": "visible_only"}}), None),
    "thermal_only": ("halfway_baseline_fssd_smoke", {}, ("twostream_add_r18_retinanet", {"fusion": {"scheme": "thermal_only"}}), None),
    # GAFF vs add vs unguided attention
    "gaff": ("gaff_teacher_smoke", {}, None, None),
    "gaff_unguided": ("gaff_teacher_smoke", {"guidance_weight": 0.0}, None, None),
    # Mutual Guidance vs IoU (on the GAFF detector)
    "gaff_mutual_guidance": ("gaff_teacher_smoke", {"assigner": "mutual_guidance"}, None, None),
    # CFR / PS-Fuse vs the averaging baseline (VGG-16 FSSD)
    "fssd_avg_baseline": ("halfway_baseline_fssd_smoke", {}, None, None),
    "cfr": ("cfr_smoke", {}, None, None),
    "psfuse": ("psfuse_smoke", {}, None, None),          # setting A (mono halved per level)
    "psfuse_b": ("psfuse_smoke", {}, ("psfuse_vgg16_fssd", {"fusion": {"psfuse": {"setting": "B"}}}), None),
    # CFR diagnostics: without the mask loss, and with one loop
    "cfr_no_masks": ("cfr_smoke", {"cfr_weight": 0.0}, None, None),
    "cfr_1loop": ("cfr_smoke", {}, ("cfr_vgg16_fssd", {"fusion": {"cfr": {"loops": 1}}}), None),
    # CFL + MAF vs decision-level averaging
    "decision_avg": ("cfl_maf_smoke", {"model": str(TINY / "decision_r18_retinanet.yaml")}, None, None),
    "cfl_maf": ("cfl_maf_smoke", {}, None, None),
    # MD student (16x fewer thermal pixels) vs native student vs the GAFF teacher
    "md_native_16x": ("md_native_student_smoke", {}, None, None),
    "md_distilled_16x": ("md_student_smoke", {}, None, "gaff"),
    "md_native_no_thermal": ("md_no_thermal_native_smoke", {}, None, None),
    "md_distilled_no_thermal": ("md_no_thermal_student_smoke", {}, None, "gaff"),
    # the same at the paper's other thermal factors (K times fewer thermal pixels than the model input)
    **{f"md_native_{k}x": ("md_native_student_smoke", {},
                           ("md_student_r18_retinanet", {"input": {"thermal_factor": k}}), None) for k in (1, 4, 64)},
    **{f"md_distilled_{k}x": ("md_student_smoke", {},
                              ("md_student_r18_retinanet", {"input": {"thermal_factor": k}}), "gaff") for k in (1, 4, 64)},
    # RGB-only student: distilled from CFL vs plain
    "rgb_only_plain": ("rgb_only_plain_smoke", {}, None, None),
    "rgb_only_distilled": ("crossmodal_smoke", {}, None, "cfl_maf"),
    # Liu et al. Table IV, one distillation term at a time. Each term's hard-label half stays (the
    # student's own task loss): ζ = 1 / ε = 0 / ξ = 1 / ρ = 0 switch the soft classification, the
    # teacher-bounded regression, the soft segmentation and the feature term off. "hard" has all
    # four off: the same student and losses, with eq. 17's smooth L1 where the plain student has
    # the objective's balanced L1.
    # the best-practice switch the plain student has and eq. 17 has not: balanced L1 vs smooth L1
    "rgb_only_plain_smoothl1": ("rgb_only_plain_smoke", {"balanced_l1": False}, None, None),
    "rgb_only_cm_hard": ("crossmodal_smoke", {**CM_OFF}, None, "cfl_maf"),
    "rgb_only_cm_fea": ("crossmodal_smoke", {**CM_OFF, "distill.rho": 0.5}, None, "cfl_maf"),
    "rgb_only_cm_cls": ("crossmodal_smoke", {**CM_OFF, "distill.zeta": 0.5}, None, "cfl_maf"),
    "rgb_only_cm_bbr": ("crossmodal_smoke", {**CM_OFF, "distill.epsilon": 0.5}, None, "cfl_maf"),
    "rgb_only_cm_seg": ("crossmodal_smoke", {**CM_OFF, "distill.xi": 0.5}, None, "cfl_maf"),
    # thesis Table 3.2, cumulative, on the one-image RetinaNet-R18 (the visible-only arm's model):
    # baseline (smooth L1, no warmup, step decay) -> + CEM -> + mixup, warmup and cosine -> + balanced L1
    "bp_baseline": ("halfway_baseline_fssd_smoke", {"balanced_l1": False, "lr_schedule": "step"}, BP_VIS, None),
    "bp_cem": ("halfway_baseline_fssd_smoke", {"balanced_l1": False, "lr_schedule": "step"}, BP_VIS_CEM, None),
    "bp_cem_mixup_cosine": ("halfway_baseline_fssd_smoke", {"balanced_l1": False, "mixup": 0.5}, BP_VIS_CEM, None),
    # the schedule without mixup: separates Table 3.2's bundled "mixup & warmup & cosine" step
    "bp_cem_cosine": ("halfway_baseline_fssd_smoke", {"balanced_l1": False}, BP_VIS_CEM, None),
    "bp_all": ("halfway_baseline_fssd_smoke", {"mixup": 0.5}, BP_VIS_CEM, None),
    # multi-scale training, which the thesis applies under every row of Table 3.2, as one ablation of
    # the baseline
    "bp_baseline_ms": ("halfway_baseline_fssd_smoke", {"balanced_l1": False, "lr_schedule": "step",
                                                       "multi_scale": MULTI_SCALE}, BP_VIS, None),
    # Modality Distillation with the paper's pair: its GAFF teacher (GAFF at every neck level) and its
    # light-head student at 16x fewer thermal pixels; distilled at C4, as the other MD arms (the
    # teacher fuses at two levels and the paper names none: distill.md_stage picks one)
    "mdp_teacher": ("gaff_teacher_smoke", {}, ("md_paper_gaff_teacher_r18_retinanet", MDP_LIGHT), None),
    **{f"mdp_native_{k}x": ("md_native_student_smoke", {},
                            ("md_paper_student_r18_retinanet", {**MDP_LIGHT, "input": {"thermal_factor": k}}), None)
       for k in (16, 64)},
    **{f"mdp_distilled_{k}x": ("md_student_smoke", {"distill.md_stage": "C4"},
                               ("md_paper_student_r18_retinanet", {**MDP_LIGHT, "input": {"thermal_factor": k}}),
                               "mdp_teacher") for k in (16, 64)},
    # diagnosis: the F-MSE term outweighs the detection loss 2.5-5x over the last fifth (session 24); a
    # tenth of the paper's weight brings it under the detection loss
    "mdp_distilled_16x_sem01": ("md_student_smoke", {"distill.md_stage": "C4", "distill.md_semantic_weight": 0.1},
                                ("md_paper_student_r18_retinanet", MDP_LIGHT), "mdp_teacher"),
    # and the other level the paper's teacher fuses at: C5
    "mdp_distilled_16x_c5": ("md_student_smoke", {"distill.md_stage": "C5"},
                             ("md_paper_student_r18_retinanet", MDP_LIGHT), "mdp_teacher"),
    # PDF-Distil vs FitNets vs hard sampling vs none (R34-PAFPN teacher -> R18-FPN student)
    "pdf_teacher": ("pdf_teacher_smoke", {}, None, None),
    "pdf_none": ("pdf_student_plain_smoke", {}, None, None),
    "pdf_fitnets": ("pdf_fitnets_smoke", {}, None, "pdf_teacher"),
    "pdf_distil": ("pdf_distil_smoke", {}, None, "pdf_teacher"),
    # thesis Table 3.5, strategy 2: imitate only the 25 % of locations where teacher and student disagree most
    "pdf_hard25": ("pdf_hard25_smoke", {}, None, "pdf_teacher"),
    # the same three students from the wider teacher (PDF_WIDE); adapters map the student's 32 channels to 64
    "pdf_teacher_w025": ("pdf_teacher_smoke", {}, PDF_WIDE, None),
    "pdf_distil_wt": ("pdf_distil_smoke", {}, None, "pdf_teacher_w025"),
    "pdf_fitnets_wt": ("pdf_fitnets_smoke", {}, None, "pdf_teacher_w025"),
    "pdf_hard25_wt": ("pdf_hard25_smoke", {}, None, "pdf_teacher_w025"),
}
ORDER = list(ARMS)

COMPARISONS = [
    ("Two-stream fusion vs one modality", ["add_fusion", "visible_only", "thermal_only"]),
    ("GAFF vs add-fusion vs unguided attention", ["gaff", "add_fusion", "gaff_unguided"]),
    ("CFR and PS-Fuse vs baseline (VGG-16 FSSD, average fusion)", ["cfr", "psfuse", "psfuse_b", "fssd_avg_baseline"]),
    ("CFR diagnosis: without the mask loss, one loop", ["cfr", "cfr_no_masks", "cfr_1loop"]),
    ("CFL + MAF vs decision-level average", ["cfl_maf", "decision_avg"]),
    ("MD student (16x fewer thermal pixels) vs native student vs teacher", ["md_distilled_16x", "md_native_16x", "gaff"]),
    ("MD student without thermal: distilled vs native", ["md_distilled_no_thermal", "md_native_no_thermal"]),
    ("MD, the paper's pair (GAFF at every level, light head), 16x: distilled vs native vs teacher",
     ["mdp_distilled_16x", "mdp_native_16x", "mdp_teacher"]),
    ("MD, the paper's pair, 16x: the semantic term at a tenth of the paper's weight",
     ["mdp_distilled_16x_sem01", "mdp_distilled_16x", "mdp_native_16x"]),
    ("MD, the paper's pair, 16x: distilled at C5 vs at C4", ["mdp_distilled_16x_c5", "mdp_distilled_16x", "mdp_native_16x"]),
    ("MD, the paper's pair, 64x: distilled vs native vs teacher", ["mdp_distilled_64x", "mdp_native_64x", "mdp_teacher"]),
    ("The deployment student's light head vs today's student head (16x, native)", ["mdp_native_16x", "md_native_16x"]),
    *[(f"MD student ({k}x fewer thermal pixels) vs native student vs teacher", [f"md_distilled_{k}x", f"md_native_{k}x", "gaff"])
      for k in (1, 4, 64)],
    ("RGB-only: cross-modal distilled vs plain", ["rgb_only_distilled", "rgb_only_plain"]),
    ("RGB-only: one distillation term at a time (Liu et al. Table IV)",
     ["rgb_only_cm_hard", "rgb_only_cm_fea", "rgb_only_cm_cls", "rgb_only_cm_bbr", "rgb_only_cm_seg",
      "rgb_only_distilled", "rgb_only_plain", "rgb_only_plain_smoothl1"]),
    ("Best practices, cumulative (thesis Table 3.2; one-image RetinaNet-R18)",
     ["bp_baseline", "bp_cem", "bp_cem_cosine", "bp_cem_mixup_cosine", "bp_all", "visible_only"]),
    ("Multi-scale training (thesis §3.4.1) vs one scale, on the Table 3.2 baseline", ["bp_baseline_ms", "bp_baseline"]),
    ("Mutual Guidance vs IoU assignment (GAFF detector)", ["gaff_mutual_guidance", "gaff"]),
    ("PDF-Distil vs FitNets vs hard sampling vs no distillation (student R18-FPN)", ["pdf_distil", "pdf_fitnets", "pdf_hard25", "pdf_none", "pdf_teacher"]),
    ("The same from the wider teacher (R34-PAFPN at 1/4 width)",
     ["pdf_distil_wt", "pdf_fitnets_wt", "pdf_hard25_wt", "pdf_none", "pdf_teacher_w025"]),
]


# Every arm's model at 256x192 input (rig 512x384, objects 25-100 px) with anchors of 2x the
# stride (the presets' 4x suit 640x512 inputs): the tiny presets at 128x96 leave persons of
# 10-40 px under 64 px anchors and every arm at ~100% miss rate.
SCALE = {"input": {"height": 192, "width": 256}, "head": {"anchors": {"base_scale": 2.0}}}
RIG = {"width": 512, "height": 384}


def _variant(path: Path, name: str, work: Path, extra: dict | None = None):
    import yaml
    from ms_perception_training.config import _merge
    from ms_perception_training.models.config import load_model_config
    p = work / f"{name}_model.yaml"
    p.write_text(yaml.safe_dump({"base": str(path.resolve()), "name": name, **_merge(SCALE, extra or {})}))
    return load_model_config(p)


def arm_configs(arm: str, work: Path):
    """(fit config, model config, teacher model config or None, teacher arm or None) of ``arm``."""
    from ms_perception_training.config import load_yaml
    from ms_perception_training.fit import load_experiment
    exp, over, model_over, teacher = ARMS[arm]
    cfg, _, _ = load_experiment(EXP / f"{exp}.yaml")
    raw = load_yaml(EXP / f"{exp}.yaml")
    for k, v in over.items():
        if k != "model":
            *path, leaf = k.split(".")
            obj = cfg
            for part in path:
                obj = getattr(obj, part)
            if not hasattr(obj, leaf):
                raise KeyError(f"{arm}: the fit config has no field {k!r}")
            setattr(obj, leaf, v)
    model_path = Path(over["model"]) if "model" in over else EXP / raw["model"]
    if model_over:
        model_path, extra = TINY / f"{model_over[0]}.yaml", model_over[1]
    else:
        extra = None
    mcfg = _variant(model_path, arm, work, extra)
    if isinstance(cfg.multi_scale, tuple) and cfg.multi_scale[:1] == ("factors",):
        # sizes a multiple of 4 nearest to the factors of this arm's (scaled) input
        cfg.multi_scale = [[4 * round(mcfg.input.width * f / 4), 4 * round(mcfg.input.height * f / 4)]
                           for f in cfg.multi_scale[1:]]
    tcfg = None
    if cfg.distill.method:
        t_over = ARMS[teacher][2] if teacher else None
        # the teacher's model is its own arm's model where that arm overrides one (the same variant it trained)
        tcfg = (_variant(TINY / f"{t_over[0]}.yaml", f"{arm}_teacher", work, t_over[1]) if t_over
                else _variant(EXP / raw["distill"]["teacher"], f"{arm}_teacher", work))
    return cfg, mcfg, tcfg, teacher


def run_arm(arm: str, seed: int, iterations: int, pairs: int, work: Path) -> dict:
    import torch
    from ms_perception_training.fit import fit
    torch.set_num_threads(1)
    cfg, mcfg, tcfg, teacher = arm_configs(arm, work)
    cfg.seed, cfg.iterations, cfg.threads, cfg.tensorboard = seed, iterations, 1, False
    cfg.warmup_iterations = max(10, iterations // 10)
    cfg.data.pairs, cfg.data.seed, cfg.data.width, cfg.data.height = pairs, 100 + seed, RIG["width"], RIG["height"]
    cfg.eval.pairs, cfg.eval.seed = 150, 1001
    cfg.checkpoint_every = iterations
    if teacher:
        cfg.distill.teacher_checkpoint = str(work / f"{teacher}_s{seed}" / "last.pt")
    t0 = time.perf_counter()
    s = fit(cfg, mcfg, work / f"{arm}_s{seed}", log=lambda *a: None, teacher_cfg=tcfg)
    return {"arm": arm, "seed": seed, "iterations": iterations, "pairs": pairs, "model": mcfg.name,
            "first_loss": round(s["first_loss"], 4), "last_loss": round(s["last_loss"], 4),
            "seconds": round(time.perf_counter() - t0, 1), **s["eval"]}


def results_file(tag: str, seed: int) -> Path:
    return RESULTS / (f"training_{tag}_seed{seed}.jsonl" if tag else f"training_seed{seed}.jsonl")


def worker(seed: int, iterations: int, pairs: int, arms: list[str], tag: str = "") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = results_file(tag, seed)
    done = {json.loads(x)["arm"] for x in out.read_text().splitlines()} if out.exists() else set()
    work = Path(os.environ.get("MS_PERCEPTION_BENCH_WORK", "/tmp/ms_perception_train_bench")) / tag
    work.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        if arm in done:
            continue
        teacher = ARMS[arm][3]
        if teacher and not (work / f"{teacher}_s{seed}" / "last.pt").exists():
            r = run_arm(teacher, seed, iterations, pairs, work)
            if teacher not in done:
                with open(out, "a") as f:
                    f.write(jsonio.dumps(r) + "\n")
                done.add(teacher)
        r = run_arm(arm, seed, iterations, pairs, work)
        with open(out, "a") as f:
            f.write(jsonio.dumps(r) + "\n")
        done.add(arm)
        print(jsonio.dumps(r), flush=True)


# Active-learning protocols: (task, pool, eval pairs, initial b, step b, budget B, first-cycle
# iterations, fine-tuning iterations per cycle, threads, frames per generated scene). "short" is the
# first one-seed run (session 12); "cpu" trains each cycle ~10x longer on a larger pool and evaluates
# on 300 held-out pairs; "seg_cpu" is segmentation (mIoU) at the ICIP paper's own segmentation
# budgets, b = 50 and B = 350, on the same pool and test-pair counts; "seg_cpu_3k" is seg_cpu on a
# 3,000-pair pool, so that B = 350 labels about a tenth of the pool (seg_cpu labels 70 % of its 500
# pairs and the strategies' picks mostly coincide: bench/RESULTS.md, sessions 22-23);
# "seg_cpu_3k_scenes" is seg_cpu_3k with every pair its own scene (the generator's default is 20
# frames per scene, and top-k then takes whole sequences of near-duplicates: session 28). The
# paper's segmentation set (TOKYO, from MFNet [3]: 2,338 labeled pairs) is not made of 20-frame
# runs of one scene; a pool of distinct scenes is the other end. The selection rule is unchanged.
# "cpu_3k_scenes" is the detection protocol "cpu" on such a pool of 3,000 distinct scenes (run in session 30: bench/RESULTS.md).
ACTIVE_PROTOCOLS = {"short": ("detection", 200, 100, 30, 30, 90, 120, 60, 2, 20),
                    "cpu": ("detection", 500, 300, 100, 100, 400, 1200, 600, 1, 20),
                    "seg_cpu": ("segmentation", 500, 300, 50, 50, 350, 1200, 400, 1, 20),
                    "seg_cpu_3k": ("segmentation", 3000, 300, 50, 50, 350, 1200, 400, 1, 20),
                    "seg_cpu_3k_scenes": ("segmentation", 3000, 300, 50, 50, 350, 1200, 400, 1, 1),
                    "cpu_3k_scenes": ("detection", 3000, 300, 100, 100, 400, 1200, 600, 1, 1)}
ACTIVE_TASKS = {"detection": ("active_smoke.yaml", "gaff_three_branch_r18_retinanet.yaml"),
                "segmentation": ("active_segmentation_smoke.yaml", "gaff_three_branch_r18_conv1x1.yaml")}


def active_config(seed: int, protocol: str):
    """The active-learning config of one protocol and seed (the model left as the task's smoke config names it)."""
    from ms_perception_training.active import load_active_config
    task, pairs, eval_pairs, initial, step, budget, its, ft_its, threads, frames = ACTIVE_PROTOCOLS[protocol]
    acfg = load_active_config(EXP / ACTIVE_TASKS[task][0])
    acfg.data.pairs, acfg.data.seed, acfg.data.width, acfg.data.height = pairs, 200 + seed, RIG["width"], RIG["height"]
    acfg.data.sequence_length = frames          # the held-out pairs too (make_pool replaces pairs and seed only)
    acfg.eval.pairs = eval_pairs
    acfg.initial, acfg.step, acfg.budget = initial, step, budget
    acfg.iterations, acfg.finetune_iterations, acfg.seed = its, ft_its, seed
    acfg.fit = {"batch_size": 8, "lr": 0.01, "warmup_iterations": 20, "checkpoint_every": 200, "threads": threads,
                "tensorboard": False}
    return acfg


def run_active_experiment(seed: int, work: Path, protocol: str = "short") -> dict:
    """Inconsistency vs random vs entropy at equal budgets on the three-branch GAFF model
    (RetinaNet heads for detection, 1x1-conv heads for segmentation)."""
    import time

    import torch
    from ms_perception_training.active import run_active
    task, pairs, eval_pairs, *_, threads, frames = ACTIVE_PROTOCOLS[protocol]
    torch.set_num_threads(threads)
    acfg = active_config(seed, protocol)
    work.mkdir(parents=True, exist_ok=True)
    name = "active" if protocol == "short" else f"active_{protocol}"
    variant = "active_three_branch" if task == "detection" else f"{name}_three_branch"
    _variant(TINY / ACTIVE_TASKS[task][1], variant, work)
    acfg.model = str(work / f"{variant}_model.yaml")
    t0 = time.perf_counter()
    res = run_active(acfg, work / f"{name}_s{seed}", log=print)
    res.update(protocol=protocol, task=task, wall_seconds=round(time.perf_counter() - t0, 1), threads=threads,
               device="cpu", pool=pairs, eval_pairs=eval_pairs, frames_per_scene=frames)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if res.get("plot") and Path(res["plot"]).exists():   # the curves next to the rows
        import shutil
        shutil.copyfile(res["plot"], RESULTS / f"{name}_seed{seed}.png")
    (RESULTS / f"{name}_seed{seed}.json").write_text(jsonio.dumps(res, indent=1))
    return res


def active_picks(protocol: str, seeds: list[int], work: Path) -> str:
    """What each strategy labeled beyond the shared initial pairs, read from its ``state.json`` against
    the pool's pairs regenerated from the protocol's data config: how many scenes (generator
    sequences) the picks cover, the most frames taken from one scene, the night share, people per
    pair, and the share of pairs with an object at background temperature (invisible in thermal) or
    a distractor (a hot or a visible-only look-alike), the pool for reference; and how many labeled
    pairs each two strategies share."""
    from collections import Counter
    from itertools import combinations

    import numpy as np
    from ms_perception.synth.generator import PERSON
    from ms_perception_training.data.sources import synth_generator
    name = "active" if protocol == "short" else f"active_{protocol}"
    per, shared, pool_stats = {}, {}, []
    for seed in seeds:
        acfg = active_config(seed, protocol)
        states = {st: json.loads(f.read_text()) for st in acfg.strategies
                  if (f := work / f"{name}_s{seed}" / st / "state.json").exists()}
        if not states:
            print(f"seed {seed}: no state.json under {work / f'{name}_s{seed}'}; skipped", file=sys.stderr)
            continue
        meta = [(p.sequence_id, p.condition == "night", sum(o.class_id == PERSON for o in p.objects),
                 any(o.crossover for o in p.objects), bool(p.distractors))
                for p in synth_generator(acfg.data).pairs(acfg.data.pairs)]
        pool_stats.append((len({m[0] for m in meta}), *np.mean([m[1:] for m in meta], 0).tolist()))
        for st, state in states.items():
            picked = sorted(set(state["labeled"]) - set(state["initial"]))
            frames = Counter(meta[i][0] for i in picked)
            shares = np.mean([meta[i][1:] for i in picked], 0).tolist() if picked else [0.0] * 4
            per.setdefault(st, []).append((len(picked), len(frames), max(frames.values(), default=0), *shares))
        for a, b in combinations(sorted(states), 2):
            shared.setdefault((a, b), []).append(len(set(states[a]["labeled"]) & set(states[b]["labeled"])))

    def rng(vals, fmt="{:.0f}"):
        lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
        return lo if lo == hi else f"{lo}–{hi}"
    lines = [f"\n**What each strategy picked beyond the initial pairs ({protocol}, seeds {', '.join(map(str, seeds))}; "
             "min–max over seeds)**\n",
             "| picks of | picked pairs | scenes | most frames of one scene | night share | people per pair "
             "| share with a thermal-crossover object | share with a distractor |",
             "|---|---|---|---|---|---|---|---|"]
    for st, v in per.items():
        c = list(zip(*v))
        lines.append(f"| {st} | {rng(c[0])} | {rng(c[1])} | {rng(c[2])} | "
                     + " | ".join(rng(x, "{:.2f}") for x in c[3:]) + " |")
    if pool_stats:
        c = list(zip(*pool_stats))
        lines.append(f"| the whole pool | {acfg.data.pairs} | {rng(c[0])} | {acfg.data.sequence_length} | "
                     + " | ".join(rng(x, "{:.2f}") for x in c[1:]) + " |")
    for (a, b), v in shared.items():
        lines.append(f"\n{a} and {b} share {rng(v)} of their labeled pairs (the initial pairs included).")
    return "\n".join(lines)


def summarize(tag: str = "", plot: str | None = None) -> str:
    import numpy as np
    rows = {}
    for f in sorted(RESULTS.glob(f"training_{tag}_seed*.jsonl" if tag else "training_seed*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            rows.setdefault(r["arm"], []).append(r)

    def cell(arm, key):
        vals = []
        for r in rows.get(arm, []):
            v = r.get("miss_rate", {}).get(key) if key in ("all", "day", "night") else r.get(key)
            if v is not None:
                vals.append(v)
        if not vals:
            return "–"
        m = float(np.mean(vals))
        return f"{m:.1f} [{min(vals):.1f}–{max(vals):.1f}]" if len(vals) > 1 else f"{m:.1f}"
    lines = []
    for title, arms in COMPARISONS:
        lines.append(f"\n**{title}**\n")
        arms = [a for a in arms if a in rows]
        if not arms:
            lines.pop()
            continue
        lines.append("| arm | seeds | MR all ↓ | MR day ↓ | MR night ↓ | mAP ↑ | AP50 ↑ |")
        lines.append("|---|---|---|---|---|---|---|")
        for a in arms:
            n = len(rows.get(a, []))
            lines.append(f"| {a} | {n} | {cell(a, 'all')} | {cell(a, 'day')} | {cell(a, 'night')} | "
                         f"{cell(a, 'map')} | {cell(a, 'ap50')} |")
    act = sorted(RESULTS.glob("active_seed*.json" if tag in ("", "short") else f"active_{tag}_seed*.json"))
    if act:
        results = [json.loads(f.read_text()) for f in act]
        lines.append(active_table(results))
        if plot:
            active_plot(results, Path(plot))
            lines.append(f"\nwrote {plot}")
    return "\n".join(lines)


def _active_points(results: list[dict]) -> tuple[list[int], dict[str, list[list[float]]]]:
    """The labeled-pair counts and, per strategy, the seeds' metric values at each count."""
    curves = [r["curves"] for r in results]
    counts = [c[0] for c in next(iter(curves[0].values()))]
    return counts, {strat: [[c[strat][j][1] for c in curves if strat in c and c[strat][j][1] is not None]
                            for j in range(len(counts))] for strat in curves[0]}


def active_plot(results: list[dict], path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """The active-learning curves over seeds: mean line, min–max band per strategy; returns what it drew."""
    import numpy as np
    from ms_perception.metrics.plots import _finish, _pyplot
    counts, points = _active_points(results)
    seg = results[0].get("task") == "segmentation"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    drawn = {}
    for strat, per_count in points.items():
        got = [(n, float(np.mean(v)), min(v), max(v)) for n, v in zip(counts, per_count) if v]
        n, m, lo, hi = (np.array(c) for c in zip(*got))
        line, = ax.plot(n, m, "o-", label=f"{strat} (mean, min–max over {len(results)} seeds)")
        ax.fill_between(n, lo, hi, color=line.get_color(), alpha=0.2)
        drawn[strat] = [(float(a), float(b), float(c)) for a, b, c in zip(m, lo, hi)]
    ax.set_xlabel("labeled pairs")
    ax.set_ylabel("mIoU (%) ↑" if seg else "person miss rate, all (%) ↓")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _finish(plt, fig, ax, path, f"Active learning, {results[0].get('protocol', '')}", legend_loc="best")
    return drawn


def active_table(results: list[dict]) -> str:
    """Mean [min–max] over seeds at each labeled-pair count, and the claim at the final budget:
    inconsistency beats each baseline when their ranges over the seeds do not overlap (ICIP 2021)."""
    import numpy as np
    seg = results[0].get("task") == "segmentation"
    metric = "mIoU ↑" if seg else "person MR all ↓"
    counts, points = _active_points(results)
    lines = [f"\n**Active learning (three-branch GAFF): {metric} at each labeled-pair count**\n",
             "| strategy | seeds | " + " | ".join(f"{n} pairs" for n in counts) + " |",
             "|---|---|" + "---|" * len(counts)]
    final = {}
    for strat, per_count in points.items():
        cells = []
        for j, vals in enumerate(per_count):
            cells.append(f"{np.mean(vals):.1f} [{min(vals):.1f}–{max(vals):.1f}]" if len(vals) > 1 else
                         (f"{vals[0]:.1f}" if vals else "–"))
            if j == len(counts) - 1 and vals:
                final[strat] = vals
        lines.append(f"| {strat} | {len(results)} | " + " | ".join(cells) + " |")
    ours = final.get("inconsistency")
    for base, vals in final.items():
        if base == "inconsistency" or not ours:
            continue
        if len(ours) < 3 or len(vals) < 3:
            label = f"not read ({min(len(ours), len(vals))} seed(s), needs 3)"
        elif (min(ours) > max(vals)) if seg else (max(ours) < min(vals)):
            label = "holds"
        elif (max(ours) < min(vals)) if seg else (min(ours) > max(vals)):
            label = "reversed"
        else:
            label = "not shown (the ranges overlap)"
        lines.append(f"\nInconsistency beats {base} at {counts[-1]} labeled pairs: {label}.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--arms", nargs="+", default=ORDER, choices=ORDER)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    ap.add_argument("--tag", default="", help="results go to bench/results/training_<tag>_seed<S>.jsonl "
                    "(e.g. 'long' for longer runs); work dirs to <work>/<tag>")
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--plot", help="with --summarize: draw the active-learning curves over seeds to this PNG")
    ap.add_argument("--active", action="store_true", help="run the active-learning comparison (per seed)")
    ap.add_argument("--active-protocol", default="short", choices=list(ACTIVE_PROTOCOLS),
                    help="budgets and iterations of the active-learning comparison (see ACTIVE_PROTOCOLS)")
    ap.add_argument("--active-picks", action="store_true", help="what each strategy picked (scenes, night share, "
                    "people per pair, overlap) from the finished runs of --active-protocol and --seeds")
    ap.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.tag, a.plot))
        return 0
    if a.active_picks:
        print(active_picks(a.active_protocol, a.seeds,
                           Path(os.environ.get("MS_PERCEPTION_BENCH_WORK", "/tmp/ms_perception_train_bench"))))
        return 0
    if a.active:
        work = Path(os.environ.get("MS_PERCEPTION_BENCH_WORK", "/tmp/ms_perception_train_bench"))
        for seed in a.seeds:
            run_active_experiment(seed, work, a.active_protocol)
        print(summarize("" if a.active_protocol == "short" else a.active_protocol))
        return 0
    if a.worker_seed is not None:
        worker(a.worker_seed, a.iterations, a.pairs, a.arms, a.tag)
        return 0
    procs = []
    for s in a.seeds:
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker-seed", str(s), "--iterations",
                                       str(a.iterations), "--pairs", str(a.pairs), "--tag", a.tag, "--arms", *a.arms],
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
        if len(procs) >= a.jobs:
            procs.pop(0).wait()
    for p in procs:
        p.wait()
    print(summarize(a.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
