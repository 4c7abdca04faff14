"""The trainer: every model and method of METHODS.md from one experiment YAML.

- SGD + momentum, linear warmup from 1e-6 then cosine decay (thesis §3.4.1), gradient
  clipping, deterministic seeding, exact resume (model, optimizer, distiller modules, GradScaler,
  RNG, iteration; the sample order and augmentation are functions of (seed, epoch, index)).
- Switches (Table 3.2): ``mixup``, ``balanced_l1``, CEM (model config ``neck.cem``), warmup.
  ``multi_scale``: per-iteration input size from a list (same on every process).
  ``amp``: float16 autocast + GradScaler on CUDA (ignored on the CPU).
- Losses: ``objectives.Objective`` (task + fusion-module losses) and, with ``distill:``, a
  frozen teacher and the method's losses (``distillers``).
- Multi-GPU / multi-node: run under ``torchrun``; DistributedDataParallel, a
  DistributedSampler with ``set_epoch``, rank-0 logging/checkpoints/evaluation, SyncBatchNorm
  only with NCCL. ``batch_size`` is the GLOBAL batch (split over the processes) and the
  positive-count normalizers are summed over processes, so N processes train like one with
  the combined batch (exactly so with ``bn: frozen``; with ``bn: train`` each process's
  BatchNorm sees its own part, unless SyncBatchNorm).
- Failure handling: a NaN/inf loss stops with the parts that went bad and the last good
  checkpoint; checkpoints are written atomically and loaded with ``weights_only=True``.
- Logs: console (a progress bar with ETA on a terminal, lines otherwise), ``metrics.jsonl``,
  and TensorBoard event files when the ``tensorboard`` package is installed.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ms_perception.core import jsonio
from ms_perception_training.config import ConfigError, from_dict, load_yaml
from ms_perception_training.models.config import ModelConfig, load_model_config
from ms_perception_training.models.multispectral import build_model
from ms_perception_training.objectives import Objective, detection_loss  # noqa: F401 (re-export)
from ms_perception_training.synthdata import SynthDataConfig, make_batch, make_pool, rescale_batch, thermal_for


@dataclass
class DistillConfig:
    method: str = ""                  # "" (none) | pdf | modality | crossmodal
    teacher: str = ""                 # teacher model config YAML (relative to the experiment file)
    teacher_checkpoint: str = ""      # its trained weights (relative to the experiment file)
    # PDF-Distil (thesis §3.3)
    pdf_weights: str = "soft"         # soft (PDF-Distil) | uniform (FitNets) | hard (top-k ablation)
    pdf_metric: str = "l2"            # l2 (best) | l1 | kl
    pdf_top_fraction: float = 0.25    # hard sampling: top 25% / 50%
    pdf_weight: float = 1.0
    # Modality Distillation (WACV 2022)
    md_stage: str = ""                # default: the teacher's fusion stage
    md_attention: bool = True
    md_semantic: str = "f_mse"        # f_mse | mse (ablation) | none
    md_attention_weight: float = 1.0
    md_semantic_weight: float = 1.0
    # Cross-modal distillation (Liu et al., eq. 14-18)
    cm_stage: str = ""                # default: the student's last neck input stage
    lam: float = 1.0                  # λ (regression)
    eta: float = 1.0                  # η (segmentation)
    rho: float = 0.5                  # ρ (feature)
    zeta: float = 0.5                 # ζ (hard vs soft classification)
    epsilon: float = 0.5              # ε (teacher-bounded regression term)
    xi: float = 0.5                   # ξ (hard vs soft segmentation)
    temperature: float = 1.0
    delta: float = 0.0                # δ margin of eq. 17 (not given in the paper)

    def __post_init__(self):
        if self.method not in ("", "pdf", "modality", "crossmodal"):
            raise ConfigError(f"distill.method must be one of '', 'pdf', 'modality', 'crossmodal'; got {self.method!r}")
        if self.pdf_weights not in ("soft", "uniform", "hard"):
            raise ConfigError(f"distill.pdf_weights must be soft, uniform or hard; got {self.pdf_weights!r}")
        if self.pdf_metric not in ("l2", "l1", "kl"):
            raise ConfigError(f"distill.pdf_metric must be l2, l1 or kl; got {self.pdf_metric!r}")
        if self.md_semantic not in ("f_mse", "mse", "none"):
            raise ConfigError(f"distill.md_semantic must be f_mse, mse or none; got {self.md_semantic!r}")


@dataclass
class EvalConfig:
    pairs: int = 0                    # validation pairs (0: no evaluation)
    seed: int = 1001                  # generator seed (distinct from the training pool's)
    every: int = 0                    # iterations between evaluations (0: only at the end)


@dataclass
class FitConfig:
    model: str = ""                   # model config YAML (relative to this file)
    data: SynthDataConfig = field(default_factory=SynthDataConfig)
    iterations: int = 300
    batch_size: int = 8               # global batch (split over DDP processes)
    lr: float = 0.01                  # thesis: SGD lr 1e-2, warmup from 1e-6, cosine decay
    warmup_iterations: int = 100      # thesis: 500 (shortened for short CPU runs)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    guidance_weight: float = 1.0      # L_intra and L_inter weights (eq. 4.17: 1)
    cfr_weight: float = 1.0           # CFR mask Dice weight
    seg_aux_weight: float = 1.0       # segmentation auxiliary head (CFL paper: η = 1)
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 100       # iterations between checkpoints (always one at the end)
    assigner: str = "iou"             # "iou" (static 0.5/0.4) or "mutual_guidance" (thesis §3.2)
    mg_sigma: float = 2.0             # Mutual Guidance σ (> 1; the thesis does not state its value)
    balanced_l1: bool = True          # False: smooth L1 (the Table 3.2 switch)
    mixup: float = 0.0                # probability that a sample is mixed (0: off)
    multi_scale: list[list[int]] = field(default_factory=list)   # [[width, height], ...]
    amp: bool = True                  # CUDA only
    device: str = "auto"              # auto | cpu | cuda
    bn: str = "train"                 # train | frozen (BatchNorm in eval mode, affine still trained)
    sync_bn: bool = True              # SyncBatchNorm under DDP with NCCL
    tensorboard: bool = True
    init_checkpoint: str = ""         # start from these weights (fine-tuning; not a resume)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        if self.assigner not in ("iou", "mutual_guidance"):
            raise ConfigError(f"fit.assigner must be 'iou' or 'mutual_guidance', got {self.assigner!r}")
        if self.bn not in ("train", "frozen"):
            raise ConfigError(f"fit.bn must be 'train' or 'frozen', got {self.bn!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"fit.device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"fit.mixup is a probability in [0, 1], got {self.mixup}")
        for s in self.multi_scale:
            if len(s) != 2 or min(s) <= 0:
                raise ConfigError(f"fit.multi_scale entries are [width, height], got {s}")
        if self.iterations <= 0 or self.batch_size <= 0:
            raise ConfigError("fit.iterations and fit.batch_size must be positive")


def lr_at(it: int, cfg: FitConfig) -> float:
    if it < cfg.warmup_iterations:
        return 1e-6 + (cfg.lr - 1e-6) * it / max(1, cfg.warmup_iterations)
    t = (it - cfg.warmup_iterations) / max(1, cfg.iterations - cfg.warmup_iterations)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_int(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return int(t.item())

    def mean_float(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world


def init_distributed(device: str) -> Dist:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), backend)


class EpochSampler:
    """Iteration → the indices of this process: a DistributedSampler (shuffle, drop_last) per
    epoch, ``set_epoch`` at each epoch boundary, ``per_rank`` indices per iteration."""

    def __init__(self, n: int, batch_size: int, d: Dist, seed: int):
        from torch.utils.data import DistributedSampler
        if batch_size % d.world:
            raise ConfigError(f"fit.batch_size {batch_size} must divide evenly over {d.world} processes")
        self.per_rank = batch_size // d.world
        if n < batch_size:
            raise ConfigError(f"fit.batch_size {batch_size} is larger than the pool of {n} pairs (data.pairs)")
        self.sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.per_epoch = len(self.sampler) // self.per_rank
        self._epoch, self._order = None, None

    def indices(self, it: int) -> tuple[int, list[int]]:
        epoch, k = divmod(it, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        return epoch, self._order[k * self.per_rank:(k + 1) * self.per_rank]


# ----------------------------------------------------------------------------- checkpoints

def _save_checkpoint(path: Path, model, opt, scaler, distiller, it: int, history: list, cfg: FitConfig):
    """Everything exact resume needs: weights, optimizer (momentum), AMP scaler, the distiller's
    student-side modules, iteration, the torch RNG state. Written atomically."""
    tmp = path.with_suffix(".pt.tmp")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
             "torch_rng": torch.get_rng_state(), "history": torch.tensor(history, dtype=torch.float64),
             "seed": cfg.seed, "total_iterations": cfg.iterations}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if distiller is not None:
        state["distill"] = distiller.state_dict()
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, model, opt, scaler, distiller, cfg: FitConfig) -> tuple[int, list]:
    if not path.exists():
        raise RuntimeError(f"--resume: no checkpoint at {path}; start without --resume")
    ck = _read(path)
    if "optimizer" not in ck:
        raise RuntimeError(f"{path} holds weights only (no optimizer/RNG state); it cannot be resumed exactly")
    if int(ck["total_iterations"]) != cfg.iterations or int(ck["seed"]) != cfg.seed:
        raise RuntimeError(f"{path} was written by a run of {int(ck['total_iterations'])} iterations with seed "
                           f"{int(ck['seed'])}; this config has {cfg.iterations} and {cfg.seed} (the schedule would "
                           "differ): use the same config to resume")
    _load_state(model, ck["model"], path)
    if distiller is not None:
        if "distill" not in ck:
            raise RuntimeError(f"{path} has no distillation modules; it was not written by this distillation config")
        _load_state(distiller, ck["distill"], path)
    opt.load_state_dict(ck["optimizer"])
    if scaler is not None and "scaler" in ck:
        scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["torch_rng"])
    return int(ck["iteration"]), ck["history"].tolist()


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)   # never unpickles code
    except Exception as exc:  # pickle/zip errors come in many types
        raise RuntimeError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None


def _load_state(module, state: dict, path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        detail = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                  f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                  (f"{len(shape)} with other shapes (e.g. {shape[0]}: checkpoint {tuple(state[shape[0]].shape)}, "
                   f"config {tuple(own[shape[0]].shape)})") if shape else ""]
        raise RuntimeError(f"{path} does not match the model config: " + "; ".join(x for x in detail if x))
    module.load_state_dict(state)


def load_weights(model, path: str | Path) -> None:
    p = Path(path)
    if not p.exists():
        raise RuntimeError(f"checkpoint not found: {p}")
    ck = _read(p)
    _load_state(model, ck["model"] if isinstance(ck, dict) and isinstance(ck.get("model"), dict) else ck, p)


# ----------------------------------------------------------------------------- logging

class Logger:
    """Console + metrics.jsonl + TensorBoard (when installed) on the main process."""

    def __init__(self, out_dir: Path, enabled: bool, log, tensorboard: bool, total: int):
        self.enabled, self.log, self.total = enabled, log, total
        self.tty = enabled and log is print and sys.stdout.isatty()
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log("TensorBoard logs off: the 'tensorboard' package is not installed (pip install tensorboard); "
                    "the scalars are in metrics.jsonl")

    def scalars(self, it: int, values: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        flat = _flatten(values)
        self.jsonl.write(jsonio.dumps({"iteration": it, "kind": prefix, **flat}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{prefix}/{k}", v, it)

    def progress(self, it: int, loss: float, lr: float, elapsed: float, done: int) -> None:
        if not self.enabled:
            return
        eta = elapsed / max(1, done) * (self.total - it - 1)
        if self.tty:
            n = int(30 * (it + 1) / self.total)
            sys.stdout.write(f"\r[{'#' * n}{'.' * (30 - n)}] {it + 1}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                             f"ETA {eta:.0f}s ")
            sys.stdout.flush()
            if it + 1 == self.total:
                sys.stdout.write("\n")
        elif it % 20 == 0 or it == self.total - 1:
            self.log(f"it {it:5d}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {elapsed:.0f}s elapsed, ETA {eta:.0f}s")

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _flatten(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{pre}{k}/"))
        else:
            out[f"{pre}{k}"] = v
    return out


# ----------------------------------------------------------------------------- fit

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
        load_weights(model, cfg.init_checkpoint)
    t0 = time.perf_counter()
    if pool is None:
        pool = make_pool(mcfg, cfg.data)
        log(f"generated and preprocessed {len(pool)} pairs in {time.perf_counter() - t0:.1f} s")
    if val_pool is None and cfg.eval.pairs:
        from dataclasses import replace
        val_pool = make_pool(mcfg, replace(cfg.data, pairs=cfg.eval.pairs, seed=cfg.eval.seed))
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
    ckpt = out_dir / "last.pt"
    if resume:
        start, history = _load_checkpoint(ckpt, core, opt, scaler, dist_core, cfg)
        log(f"resumed from {ckpt} at iteration {start}")
    logger = Logger(out_dir, d.main, log, cfg.tensorboard, cfg.iterations)
    evals = []
    t0 = time.perf_counter()
    try:
        for it in range(start, cfg.iterations):
            _train_mode(cfg, core, distiller)     # every iteration: evaluation switches to eval and back
            lr = lr_at(it, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            epoch, idx = sampler.indices(it)
            batch = make_batch(pool, idx, mcfg, cfg.seed, epoch, augment=True, mixup=cfg.mixup, device=device)
            if cfg.multi_scale:
                w, h = cfg.multi_scale[int(np.random.default_rng([cfg.seed, it]).integers(len(cfg.multi_scale)))]
                batch = rescale_batch(batch, (h, w))
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                parts = compute_losses(model, core, mcfg, distiller, dist_core, objective, batch)
            loss = sum(parts.values())
            if not torch.isfinite(loss):
                bad = {k: float(v) for k, v in parts.items() if not math.isfinite(float(v))}
                raise RuntimeError(f"loss became {float(loss)} at iteration {it} (non-finite parts: {bad}; all: "
                                   f"{ {k: round(float(v), 4) for k, v in parts.items()} }); the last good "
                                   f"checkpoint is {ckpt if ckpt.exists() else 'none (none written yet)'}. Lower "
                                   "fit.lr, check the data, or turn off amp")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            value = d.mean_float(loss.item())
            history.append(value)
            logger.progress(it, value, lr, time.perf_counter() - t0, it + 1 - start)
            if it % 20 == 0 or it == cfg.iterations - 1:
                logger.scalars(it, {"loss": value, "lr": lr, **{k: d.mean_float(float(v.detach())) for k, v in parts.items()}})
            last = it == cfg.iterations - 1
            if val_pool is not None and d.main and ((cfg.eval.every and (it + 1) % cfg.eval.every == 0) or last):
                from ms_perception_training.evaluate import evaluate
                r = evaluate(core, mcfg, val_pool, device=device)
                evals.append({"iteration": it + 1, **r})
                logger.scalars(it + 1, r, "eval")
                log(f"eval at {it + 1}: {jsonio.dumps(r)}")
            stopping = stop_after is not None and it + 1 - start >= stop_after
            if d.main and ((it + 1) % cfg.checkpoint_every == 0 or last or stopping):
                _save_checkpoint(ckpt, core, opt, scaler, dist_core, it + 1, history, cfg)
            if stopping:
                break
    finally:
        logger.close()
    k = max(1, min(20, len(history) // 5))
    summary = {"first_loss": float(np.mean(history[:k])), "last_loss": float(np.mean(history[-k:])),
               "iterations": len(history), "checkpoint": str(ckpt), "seconds": round(time.perf_counter() - t0, 1),
               "world_size": d.world, "device": device}
    if evals:
        summary["eval"] = evals[-1]
    if d.main:
        (out_dir / "history.json").write_text(jsonio.dumps(history))
    if d.world > 1:
        torch.distributed.barrier()
    return summary


def compute_losses(model, core, mcfg, distiller, dist_core, objective, batch) -> dict:
    out = model(batch.visible if mcfg.uses_visible else None, thermal_for(mcfg, batch.thermal))
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


def load_fit_config(path: str | Path) -> tuple[FitConfig, ModelConfig]:
    cfg, mcfg, _ = load_experiment(path)
    return cfg, mcfg


def load_experiment(path: str | Path) -> tuple[FitConfig, ModelConfig, ModelConfig | None]:
    """The fit config, its model config and (with ``distill``) the teacher's; relative paths in
    the file are resolved against its folder."""
    p = Path(path)
    data = load_yaml(p)
    cfg = from_dict(FitConfig, data, "fit")
    if not cfg.model:
        raise ConfigError(f"{p}: 'model' must name a model config YAML")

    def rel(x: str) -> str:
        return str(p.parent / x) if x and not Path(x).is_absolute() else x
    mcfg = load_model_config(rel(cfg.model))
    tcfg = None
    if cfg.distill.method:
        if not cfg.distill.teacher:
            raise ConfigError(f"{p}: distill.method {cfg.distill.method!r} needs distill.teacher (a model config)")
        tcfg = load_model_config(rel(cfg.distill.teacher))
        cfg.distill.teacher_checkpoint = rel(cfg.distill.teacher_checkpoint)
    cfg.init_checkpoint = rel(cfg.init_checkpoint)
    return cfg, mcfg, tcfg
