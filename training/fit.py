"""The training loop: every model and method of METHODS.md from one experiment
(``experiment.py``), on any data source (``data/sources.py``), one GPU, many, or the CPU.

One iteration: the DataLoader's workers read, preprocess and augment the samples of this
process's part of the batch (``data/loader.py``); the model runs; ``objectives.Objective``
(task + fusion-module losses) and, with ``distill:``, the method's losses against a frozen
teacher (``distillers.py``) are summed; SGD steps with the warmup + cosine rate.

Multi-GPU / multi-node: run under ``torchrun`` (``distributed.py``); DistributedDataParallel,
rank-0 logging/checkpoints/evaluation, SyncBatchNorm only with NCCL. Exact resume
(``checkpoints.py``): the sample order and augmentation are functions of (seed, epoch, index).
A NaN/inf loss stops with the parts that went bad and the last good checkpoint. ``train fit``
reports images/s and the time spent waiting for data against the time spent computing.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from ms_perception_training.checkpoints import (
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from ms_perception_training.config import ConfigError
from ms_perception_training.data.loader import (
    make_batch,
    rescale_batch,
    to_batch,
    train_loader,
)
from ms_perception_training.data.sources import open_one, open_source
from ms_perception_training.distributed import Dist, EpochSampler, init_distributed
from ms_perception_training.experiment import (  # noqa: F401 (re-exported: the experiment API)
    DistillConfig,
    EvalConfig,
    FitConfig,
    held_out_data,
    load_experiment,
    load_fit_config,
)
from ms_perception_training.logs import Logger
from ms_perception_training.models.config import ModelConfig
from ms_perception_training.models.build import build_model
from ms_perception_training.objectives import Objective, detection_loss  # noqa: F401 (re-export)

from ms_perception.core import jsonio


def lr_at(it: int, cfg: FitConfig) -> float:
    if cfg.lr_schedule == "step":   # no warmup; x0.1 at 2/3 and at 8/9 of the iterations (Detectron's 1x steps)
        return cfg.lr * 0.1 ** ((3 * it >= 2 * cfg.iterations) + (9 * it >= 8 * cfg.iterations))
    if it < cfg.warmup_iterations:
        return 1e-6 + (cfg.lr - 1e-6) * it / max(1, cfg.warmup_iterations)
    t = (it - cfg.warmup_iterations) / max(1, cfg.iterations - cfg.warmup_iterations)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


def resolve_device(cfg: FitConfig, d: Dist | None = None) -> str:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("fit.device is 'cuda' but PyTorch sees no CUDA device; use device: auto or cpu")
    return f"cuda:{d.local_rank if d else 0}"


def _train_mode(cfg, *modules) -> None:
    """Training mode for the student and the distiller's trainable modules; with ``bn: frozen``
    every BatchNorm of both keeps its running statistics (eval mode, affine still trained)."""
    for mod in modules:
        if mod is None:
            continue
        mod.train()
        if cfg.bn == "frozen":
            for m in mod.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()


def fit(cfg: FitConfig, mcfg: ModelConfig, out_dir: Path, log=print, resume: bool = False,
        stop_after: int | None = None, teacher_cfg: ModelConfig | None = None, pool=None, val_pool=None) -> dict:
    """Train; ``resume`` continues exactly from ``out_dir/last.pt`` (same result as an
    uninterrupted run); ``stop_after`` ends the run after that many iterations (an interruption,
    for tests) after writing a checkpoint. ``pool``/``val_pool``: preprocessed PoolItems (the
    active-learning loop passes its labeled subset); default: generated from ``cfg.data``."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    d = init_distributed(device)
    device = resolve_device(cfg, d)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    log = log if d.main else (lambda *a: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(mcfg).to(device).train()
    if cfg.init_checkpoint:
        if str(cfg.init_checkpoint).endswith(".onnx") and cfg.bn != "frozen":
            raise ConfigError(f"fit.init_checkpoint {cfg.init_checkpoint} is an ONNX export, whose BatchNorms are "
                              "folded into the convolutions: fine-tune it with fit.bn: frozen (in training mode a "
                              "BatchNorm would renormalize what the export computes)")
        load_weights(model, cfg.init_checkpoint)
        if getattr(model, "onnx_init_filled", None):
            log(f"init: {len(model.onnx_init_filled)} weights the export pruned (unused box branches of the mono "
                f"heads) start from the main head's (e.g. {model.onnx_init_filled[0]})")
    t0 = time.perf_counter()
    if pool is None:
        pool = open_source(mcfg, cfg.data, log=log)
        log(f"data: {cfg.data.type}, {len(pool)} pairs" + (f" (generated and preprocessed in "
            f"{time.perf_counter() - t0:.1f} s)" if cfg.data.type == "synthetic" else f" from {cfg.data.root}"))
    if val_pool is None:
        val_pool = validation_source(cfg, mcfg, log)
    lineage_text = ""
    if d.main:
        lineage_text = run_lineage(cfg, pool, out_dir, resume, log)
    sampler = EpochSampler(len(pool), cfg.batch_size, d, cfg.seed)

    distiller = None
    if cfg.distill.method:
        if teacher_cfg is None:
            raise ConfigError("distill.method is set but no teacher model config was given (distill.teacher)")
        from ms_perception_training.distillers import build_distiller
        teacher = build_model(teacher_cfg).to(device)
        if not cfg.distill.teacher_checkpoint:
            raise ConfigError("distill.teacher_checkpoint is required: train the teacher first "
                              "(ms-perception train fit --config <teacher experiment>) and name its last.pt")
        load_weights(teacher, cfg.distill.teacher_checkpoint)
        probe = make_batch(pool, [0], mcfg, augment=False, device=device)
        distiller = build_distiller(cfg.distill, teacher, teacher_cfg, model, mcfg, probe).to(device).train()
        log(f"distillation: {cfg.distill.method} from {teacher_cfg.name} ({cfg.distill.teacher_checkpoint})")

    if d.world > 1 and d.backend == "nccl" and cfg.sync_bn and cfg.bn == "train":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if distiller is not None:
            distiller = torch.nn.SyncBatchNorm.convert_sync_batchnorm(distiller)
    core = model
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.startswith("cuda") else None)
        if distiller is not None and any(p.requires_grad for p in distiller.parameters()):
            distiller = torch.nn.parallel.DistributedDataParallel(
                distiller, device_ids=[d.local_rank] if device.startswith("cuda") else None)
    dist_core = distiller.module if hasattr(distiller, "module") else distiller
    objective = Objective(core, mcfg, cfg.assigner, cfg.mg_sigma, cfg.balanced_l1, cfg.guidance_weight,
                          cfg.cfr_weight, cfg.seg_aux_weight, reduce_sum=d.sum_int, world_size=d.world)
    params = list(core.parameters()) + (list(dist_core.parameters()) if dist_core is not None else [])
    opt = torch.optim.SGD(params, lr=1e-6, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    history, start = [], 0
    # the run's time over every invocation (a resumed, chunked or killed-and-resumed run): carried in
    # last.pt, so an invocation killed between checkpoints loses only the time since its last one
    prior = {"seconds": 0.0, "images": 0.0, "wait": 0.0, "compute": 0.0, "from_iteration": 0.0}
    ckpt = out_dir / "last.pt"
    if resume:
        start, history, prior = load_checkpoint(ckpt, core, opt, scaler, dist_core, cfg)
        log(f"resumed from {ckpt} at iteration {start}")
    elif d.main:
        (out_dir / "eval_curve.jsonl").unlink(missing_ok=True)   # a fresh run starts a fresh curve
    logger = Logger(out_dir, d.main, log, cfg.tensorboard, cfg.iterations)
    evals = []
    best = BestKeeper(out_dir, cfg.eval.keep_best and d.main, start if resume else 0, log)

    def keep_if_best(r: dict) -> None:
        if best.improves(r):
            save_checkpoint(best.path, core, opt, scaler, dist_core, r["iteration"], history, cfg, lineage_text,
                            extra={"best_eval": r})
            best.kept(r)

    if cfg.init_checkpoint and not resume and val_pool is not None and d.main and cfg.eval.every:
        # a fine-tune's curve starts from the weights it was given: did the fine-tuning help?
        keep_if_best(evaluate_point(core, mcfg, val_pool, device, 0, out_dir, logger, log))
    loader = train_loader(pool, mcfg, sampler, start, cfg.iterations, cfg.seed, cfg.mixup, cfg.data.workers,
                          pin_memory=device.startswith("cuda"))
    batches = iter(loader)
    t0 = time.perf_counter()
    wait = compute = 0.0
    images = 0

    def progress() -> dict:
        return {"seconds": prior["seconds"] + time.perf_counter() - t0, "images": prior["images"] + images,
                "wait": prior["wait"] + wait, "compute": prior["compute"] + compute,
                "from_iteration": prior["from_iteration"]}
    try:
        for it in range(start, cfg.iterations):
            t_wait = time.perf_counter()
            batch = to_batch(next(batches), mcfg, device)
            t_compute = time.perf_counter()
            wait += t_compute - t_wait
            _train_mode(cfg, core, distiller)     # every iteration: evaluation switches to eval and back
            lr = lr_at(it, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            if cfg.multi_scale:
                w, h = cfg.multi_scale[int(np.random.default_rng([cfg.seed, it]).integers(len(cfg.multi_scale)))]
                batch = rescale_batch(batch, (h, w))
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                parts = compute_losses(model, core, mcfg, distiller, dist_core, objective, batch)
            loss = finite_loss(parts, it, ckpt)
            optimizer_step(loss, opt, scaler, params, cfg.grad_clip)
            value = d.mean_float(loss.item())      # .item() waits for the device: compute ends here
            compute += time.perf_counter() - t_compute
            images += batch.visible.shape[0] * d.world
            history.append(value)
            logger.progress(it, value, lr, time.perf_counter() - t0, it + 1 - start)
            if it % 20 == 0 or it == cfg.iterations - 1:
                logger.scalars(it, {"loss": value, "lr": lr, **{k: d.mean_float(float(v.detach())) for k, v in parts.items()}})
            last = it == cfg.iterations - 1
            if val_pool is not None and d.main and ((cfg.eval.every and (it + 1) % cfg.eval.every == 0) or last):
                evals.append(evaluate_point(core, mcfg, val_pool, device, it + 1, out_dir, logger, log))
                keep_if_best(evals[-1])
            stopping = stop_after is not None and it + 1 - start >= stop_after
            if d.main and ((it + 1) % cfg.checkpoint_every == 0 or last or stopping):
                save_checkpoint(ckpt, core, opt, scaler, dist_core, it + 1, history, cfg, lineage_text,
                                extra={"progress": progress()})
            if stopping:
                break
    finally:
        logger.close()
        del batches, loader                      # stops the workers
    speed = {"images_per_second": round(images / max(1e-9, wait + compute), 2),
             "data_wait_seconds": round(wait, 2), "compute_seconds": round(compute, 2),
             "data_wait_fraction": round(wait / max(1e-9, wait + compute), 3), "workers": cfg.data.workers}
    run = progress()
    speed["run"] = {"seconds": round(run["seconds"], 1), "from_iteration": int(run["from_iteration"]),
                    "images_per_second": round(run["images"] / max(1e-9, run["wait"] + run["compute"]), 2),
                    "data_wait_fraction": round(run["wait"] / max(1e-9, run["wait"] + run["compute"]), 3)}
    log(f"throughput: {speed['images_per_second']} images/s; waited {speed['data_wait_seconds']} s for data "
        f"against {speed['compute_seconds']} s of compute ({100 * speed['data_wait_fraction']:.1f} % waiting, "
        f"{cfg.data.workers} loader workers)")
    k = max(1, min(20, len(history) // 5))
    summary = {"first_loss": float(np.mean(history[:k])), "last_loss": float(np.mean(history[-k:])),
               "iterations": len(history), "checkpoint": str(ckpt), "seconds": round(time.perf_counter() - t0, 1),
               "world_size": d.world, "device": device, **speed}
    if evals:
        summary["eval"] = evals[-1]
    if best.record is not None:
        summary["best"] = {**best.record, "checkpoint": str(best.path)}
    curve = out_dir / "eval_curve.jsonl"
    if d.main and curve.exists():
        summary["curve"] = read_curve(curve)
    if d.main:
        (out_dir / "history.json").write_text(jsonio.dumps(history))
    if d.world > 1:
        torch.distributed.barrier()
    return summary



def finite_loss(parts: dict, it: int, ckpt: Path) -> torch.Tensor:
    """The summed loss; a non-finite one stops the run, naming the parts and the last good checkpoint."""
    loss = sum(parts.values())
    if not torch.isfinite(loss):
        vals = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}
        bad = {k: v for k, v in vals.items() if not math.isfinite(v)}
        raise RuntimeError(f"loss became {float(loss.detach())} at iteration {it} (non-finite parts: {bad}; all: "
                           f"{ {k: round(v, 4) for k, v in vals.items()} }); the last good "
                           f"checkpoint is {ckpt if ckpt.exists() else 'none (none written yet)'}. Lower "
                           "fit.lr, check the data, or turn off amp")
    return loss


def optimizer_step(loss: torch.Tensor, opt, scaler, params: list, grad_clip: float) -> None:
    """Backward, gradient clipping and the SGD step (through the GradScaler under AMP)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()


def evaluate_point(core, mcfg, val_pool, device: str, iteration: int, out_dir: Path, logger, log) -> dict:
    """One point of the learning curve: held-out metrics, appended to ``eval_curve.jsonl`` (kept
    across resumes), TensorBoard and the log."""
    from ms_perception_training.evaluate import evaluate
    r = {"iteration": iteration, **evaluate(core, mcfg, val_pool, device=device)}
    with open(out_dir / "eval_curve.jsonl", "a") as f:
        f.write(jsonio.dumps(r) + "\n")
    logger.scalars(iteration, {k: v for k, v in r.items() if k != "iteration"}, "eval")
    log(f"eval at {iteration}: {jsonio.dumps({k: v for k, v in r.items() if k != 'iteration'})}")
    return r

class BestKeeper:
    """``eval.keep_best``: which held-out evaluation was the best so far (lowest overall person miss
    rate; the earlier point wins a tie), so that ``best.pt`` holds its weights. A resumed run takes
    the best of its curve up to the checkpoint it resumes from, the point ``best.pt`` was kept at."""

    def __init__(self, out_dir: Path, on: bool, start: int, log=print):
        self.on, self.path, self.record = on, Path(out_dir) / "best.pt", None
        curve = Path(out_dir) / "eval_curve.jsonl"
        if on and start and curve.exists() and self.path.exists():
            earlier = [r for r in read_curve(curve) if r["iteration"] <= start]
            if earlier:
                self.record = min(earlier, key=self.key)
                log(f"keep_best: the best so far is iteration {self.record['iteration']} "
                    f"(miss rate {self.key(self.record)})")

    @staticmethod
    def key(r: dict) -> float:
        mr = r.get("miss_rate", {}).get("all")
        return float("inf") if mr is None or not math.isfinite(mr) else float(mr)

    def improves(self, r: dict) -> bool:
        return self.on and math.isfinite(self.key(r)) and (self.record is None or self.key(r) < self.key(self.record))

    def kept(self, r: dict) -> None:
        self.record = r


def read_curve(path: Path) -> list[dict]:
    """The held-out evaluations of a run (``eval_curve.jsonl``), one per iteration: a run resumed
    from an earlier checkpoint re-evaluates some iterations, and the later line wins."""
    by_it = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_it[r["iteration"]] = r
    return [by_it[k] for k in sorted(by_it)]


def run_lineage(cfg: FitConfig, pool, out_dir: Path, resume: bool, log=print) -> str:
    """The run's lineage as JSON text (``lineage.py``): computed at the start (content hashes read
    every item once), written to ``out_dir/lineage.json``; a resumed run reuses that file."""
    from ms_perception_training import lineage as L
    path = out_dir / "lineage.json"
    if resume and path.exists():
        return path.read_text()
    t0 = time.perf_counter()
    lin = L.build_lineage(cfg, L.source_parts(cfg.data, pool))
    L.write_lineage(out_dir, lin)
    log(f"lineage: generation {lin['generation']}, " + ", ".join(
        f"{e['type']} {e['items']} items sha256 {e['content_sha256'][:12]}" for e in lin["datasets"]) +
        f", {lin['fleet_frames']} labeled fleet frames (hashed in {time.perf_counter() - t0:.1f} s)")
    return jsonio.dumps(lin, sort_keys=True)


def validation_source(cfg: FitConfig, mcfg: ModelConfig, log=print):
    """The held-out items evaluated during training: synthetic ``eval.pairs`` from ``eval.seed``,
    or a disk dataset's ``eval.split``; None when evaluation is off."""
    from dataclasses import replace
    if cfg.data.type == "synthetic":
        return open_one(mcfg, held_out_data(cfg)) if cfg.eval.pairs else None
    if not cfg.eval.split:
        return None
    return open_one(mcfg, replace(cfg.data, limit=cfg.eval.pairs), split=cfg.eval.split, log=log)


def compute_losses(model, core, mcfg, distiller, dist_core, objective, batch) -> dict:
    out = model(*core.inputs(batch.visible, batch.thermal))
    hw = tuple(batch.visible.shape[-2:])
    parts = {}
    if dist_core is None or not dist_core.replaces_task_loss:
        parts.update(objective.task_losses(out, batch.targets, batch.semantic))
    else:  # cross-modal: the distillation terms carry the main branch's hard-label losses
        others = [b for b in out.branches if b != out.main_branch]
        parts.update(objective.task_losses(out, batch.targets, batch.semantic, branches=others))
    parts.update(objective.module_losses(out, batch.targets, hw))
    if dist_core is not None:
        t_out = dist_core.forward_teacher(batch)
        parts.update(distiller(core, out, t_out, batch, objective))   # DDP-wrapped or not
    if dist_core is not None and dist_core.replaces_task_loss and "seg_aux" in parts:
        parts.pop("seg_aux")          # eq. 18 replaces the plain auxiliary CE
    return parts


