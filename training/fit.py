"""A first trainer: the GAFF (three-branch) RetinaNet on synthetic data, on the CPU.

Scope (the full trainer with DDP, resume, AMP, mixup, Mutual Guidance and every
distillation method is issue [training]): SGD + momentum, linear warmup from 1e-6 then
cosine decay, focal loss + balanced L1 on IoU-assigned anchors for every branch, and GAFF's
guidance losses (Dice on the intra masks against ellipse masks, cross-entropy on the inter
masks against margin labels), L = L_det + L_intra + L_inter (thesis eq. 4.17).

Training images go through the RUNTIME's preprocessing (letterbox, 16-bit window,
registration warp), so the model learns exactly what the robot will feed it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ms_perception_training.assign import IoUAssigner, MutualGuidanceAssigner
from ms_perception_training.config import ConfigError, from_dict, load_yaml
from ms_perception_training.data.transforms import ellipse_mask
from ms_perception_training.export.onnx_export import decode_boxes_torch
from ms_perception_training.losses import balanced_l1_loss, dice_loss, sigmoid_focal_loss
from ms_perception_training.models.config import ModelConfig, load_model_config
from ms_perception_training.models.fusion.gaff import IGNORE, gaff_inter_labels
from ms_perception_training.models.heads import flatten_levels
from ms_perception_training.models.multispectral import build_model

from ms_perception.core.anchors import BoxCoder, grid_anchors
from ms_perception.core.frames import Frame
from ms_perception.core.preprocess import Letterbox, ThermalNormalization, thermal_to_unit, warp_thermal
from ms_perception.synth.generator import CLASS_NAMES, SynthConfig, SyntheticGenerator


@dataclass
class SynthDataConfig:
    pairs: int = 400                  # pool of generated pairs, reused across epochs with flips
    width: int = 640                  # rig resolution (the runtime letterboxes to the model input)
    height: int = 512
    thermal_factor: int = 4
    night_fraction: float = 0.4
    seed: int = 1


@dataclass
class FitConfig:
    model: str = ""                   # model config YAML (relative to this file)
    data: SynthDataConfig = field(default_factory=SynthDataConfig)
    iterations: int = 300
    batch_size: int = 8
    lr: float = 0.01                  # thesis: SGD lr 1e-2, warmup from 1e-6, cosine decay
    warmup_iterations: int = 100      # thesis: 500 (shortened for short CPU runs)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    guidance_weight: float = 1.0      # L_intra and L_inter weights (eq. 4.17: 1)
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 100       # iterations between checkpoints (always one at the end)
    assigner: str = "iou"             # "iou" (static 0.5/0.4) or "mutual_guidance" (thesis §3.2)
    mg_sigma: float = 2.0             # Mutual Guidance σ (> 1; the thesis does not state its value)

    def __post_init__(self):
        if self.assigner not in ("iou", "mutual_guidance"):
            raise ConfigError(f"fit.assigner must be 'iou' or 'mutual_guidance', got {self.assigner!r}")


def lr_at(it: int, cfg: FitConfig) -> float:
    if it < cfg.warmup_iterations:
        return 1e-6 + (cfg.lr - 1e-6) * it / max(1, cfg.warmup_iterations)
    t = (it - cfg.warmup_iterations) / max(1, cfg.iterations - cfg.warmup_iterations)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


def make_pool(mcfg: ModelConfig, d: SynthDataConfig):
    """Generated pairs preprocessed like the runtime: uint8 visible/thermal at the model input."""
    gen = SyntheticGenerator(SynthConfig(width=d.width, height=d.height, thermal_factor=d.thermal_factor,
                                         night_fraction=d.night_fraction, misregistration_px=0.0), d.seed)
    H, W = mcfg.input.height, mcfg.input.width
    norm = ThermalNormalization()
    pool = []
    for sp in gen.pairs(d.pairs):
        lb = Letterbox.fit(sp.visible.shape[:2], (H, W))
        vis = lb.apply(sp.visible)
        unit = thermal_to_unit(Frame(sp.thermal_raw, 0, "mono16"), norm)
        th = np.clip(np.rint(warp_thermal(unit, sp.homography, lb, mcfg.input.thermal_hw) * 255), 0, 255)
        objs = [o for o in sp.objects if CLASS_NAMES[o.class_id] in mcfg.class_names]
        boxes = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
        boxes = np.concatenate([boxes[:, :2] * lb.scale_xy + lb.pad, boxes[:, 2:] * lb.scale_xy + lb.pad], 1) \
            if len(boxes) else boxes
        labels = np.array([mcfg.class_names.index(CLASS_NAMES[o.class_id]) for o in objs], np.int64)
        pool.append((vis, th.astype(np.uint8), boxes, labels))
    return pool


def batch_tensors(samples, mcfg: ModelConfig, rng: np.random.Generator):
    mean = torch.tensor(mcfg.input.visible_mean).view(1, 3, 1, 1)
    std = torch.tensor(mcfg.input.visible_std).view(1, 3, 1, 1)
    vs, ts, targets = [], [], []
    W = mcfg.input.width
    for vis, th, boxes, labels in samples:
        b = boxes.copy()
        if rng.random() < 0.5:  # horizontal flip of both images and the boxes
            vis, th = vis[:, ::-1], th[:, ::-1]
            if len(b):
                b[:, [0, 2]] = W - b[:, [2, 0]]
        vs.append(torch.from_numpy(np.ascontiguousarray(vis)).permute(2, 0, 1))
        ts.append(torch.from_numpy(np.ascontiguousarray(th))[None])
        targets.append((torch.from_numpy(b), torch.from_numpy(labels)))
    v = (torch.stack(vs).float() / 255 - mean) / std
    t = (torch.stack(ts).float() / 255 - mcfg.input.thermal_mean) / mcfg.input.thermal_std
    return v, t, targets


def detection_loss(branch, anchors, targets, num_classes, coder: BoxCoder, assigner):
    """Focal loss on assigned anchors + balanced L1 on regression positives, normalized by the
    number of classification positives. ``assigner``: IoUAssigner (the same anchors classify and
    regress) or MutualGuidanceAssigner (classification labels from the regressed boxes,
    regression positives from the amplified IoU; the predictions are read without gradient)."""
    cls = flatten_levels(branch.cls_logits, num_classes)       # (N, A, K)
    box = flatten_levels(branch.box_deltas, 4)                  # (N, A, 4)
    total_cls, total_box, npos = 0.0, 0.0, 0
    mutual = isinstance(assigner, MutualGuidanceAssigner)
    for i, (gt, lab) in enumerate(targets):
        if mutual:
            with torch.no_grad():
                pred = decode_boxes_torch(anchors, box[i].detach(), coder.weights, coder.clip)
                res = assigner.assign(anchors, gt, lab, pred, torch.sigmoid(cls[i].detach()))
            labels, cls_gt, reg_gt = res.cls_labels, res.cls_gt_index, res.reg_gt_index
        else:
            res = assigner.assign(anchors, gt)
            labels, cls_gt = res.labels, res.gt_index
            reg_gt = torch.where(labels == 1, res.gt_index, torch.full_like(res.gt_index, -1))
        valid = labels >= 0
        tgt = torch.zeros_like(cls[i])
        pos = labels == 1
        if pos.any():
            tgt[pos, lab[cls_gt[pos]]] = 1.0
        reg = reg_gt >= 0
        if reg.any():
            deltas = torch.from_numpy(coder.encode(anchors[reg].numpy(), gt[reg_gt[reg]].numpy()))
            total_box = total_box + balanced_l1_loss(box[i][reg], deltas).sum()
        total_cls = total_cls + sigmoid_focal_loss(cls[i][valid], tgt[valid]).sum()
        npos += int(pos.sum())
    n = max(1, npos)
    return total_cls / n, total_box / n


def guidance_loss(out, targets, model, margin: float):
    """GAFF L_intra (Dice vs ellipse masks) + L_inter (CE vs margin labels) on every fused level."""
    li, le = 0.0, 0.0
    keys = sorted({k.rsplit(".", 1)[0] for k in out.attention if k.endswith(".intra_v")}) or [""]
    for key in keys:
        pre = f"{key}." if key else ""
        m_v, m_t = out.attention[pre + "intra_v"], out.attention[pre + "intra_t"]
        n, _, h, w = m_v.shape
        stride_x, stride_y = model.cfg.input.width / w, model.cfg.input.height / h
        gt = torch.stack([torch.from_numpy(ellipse_mask(b.numpy() / np.array([stride_x, stride_y] * 2), (w, h)))
                          for b, _ in targets]).float()[:, None]
        li = li + dice_loss(m_v, gt) + dice_loss(m_t, gt)
        labels = gaff_inter_labels(m_v.detach(), m_t.detach(), gt, margin)
        if (labels != IGNORE).any():
            le = le + F.cross_entropy(out.attention[pre + "inter_logits"], labels, ignore_index=IGNORE)
    return li, le


def _save_checkpoint(path: Path, model, opt, it: int, rng: np.random.Generator, history: list, cfg: FitConfig):
    """Everything exact resume needs: weights, optimizer (momentum), iteration, both RNG states."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                "history": torch.tensor(history, dtype=torch.float64), "seed": cfg.seed,
                "total_iterations": cfg.iterations}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, model, opt, rng: np.random.Generator, cfg: FitConfig) -> tuple[int, list]:
    if not path.exists():
        raise RuntimeError(f"--resume: no checkpoint at {path}; start without --resume")
    ck = torch.load(path, map_location="cpu", weights_only=True)   # never unpickles code
    if "optimizer" not in ck:
        raise RuntimeError(f"{path} holds weights only (no optimizer/RNG state); it cannot be resumed exactly")
    if int(ck["total_iterations"]) != cfg.iterations or int(ck["seed"]) != cfg.seed:
        raise RuntimeError(f"{path} was written by a run of {int(ck['total_iterations'])} iterations with seed "
                           f"{int(ck['seed'])}; this config has {cfg.iterations} and {cfg.seed} (the schedule would "
                           "differ): use the same config to resume")
    missing, unexpected = model.load_state_dict(ck["model"], strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path} does not match the model config: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
    opt.load_state_dict(ck["optimizer"])
    rng.bit_generator.state = json.loads(ck["numpy_rng"])
    torch.set_rng_state(ck["torch_rng"])
    return int(ck["iteration"]), ck["history"].tolist()


def fit(cfg: FitConfig, mcfg: ModelConfig, out_dir: Path, log=print, resume: bool = False,
        stop_after: int | None = None) -> dict:
    """Train; ``resume`` continues exactly from ``out_dir/last.pt`` (same result as an
    uninterrupted run); ``stop_after`` ends the run after that many iterations (an interruption,
    for tests) after writing a checkpoint."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(mcfg).train()
    t0 = time.perf_counter()
    pool = make_pool(mcfg, cfg.data)
    log(f"generated and preprocessed {len(pool)} pairs in {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        probe = model.eval()(*batch_tensors(pool[:1], mcfg, rng)[:2])
    model.train()
    sizes = [tuple(x.shape[-2:]) for x in probe.main.cls_logits]
    anchors = torch.from_numpy(grid_anchors(model.anchor_levels(), sizes))
    coder = BoxCoder(tuple(mcfg.head.box_coder_weights))
    assigner = MutualGuidanceAssigner(cfg.mg_sigma) if cfg.assigner == "mutual_guidance" else IoUAssigner()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history, start = [], 0
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "last.pt"
    if resume:
        start, history = _load_checkpoint(ckpt, model, opt, rng, cfg)
        log(f"resumed from {ckpt} at iteration {start}")
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        for g in opt.param_groups:
            g["lr"] = lr_at(it, cfg)
        idx = rng.choice(len(pool), cfg.batch_size, replace=False)
        v, t, targets = batch_tensors([pool[i] for i in idx], mcfg, rng)
        out = model(v, t)
        loss_parts = {}
        for name, br in out.branches.items():
            c, b = detection_loss(br, anchors, targets, mcfg.num_classes, coder, assigner)
            loss_parts[f"{name}_cls"], loss_parts[f"{name}_box"] = c, b
        if mcfg.fusion.module == "gaff":
            li, le = guidance_loss(out, targets, model, mcfg.fusion.gaff.margin)
            loss_parts["intra"], loss_parts["inter"] = cfg.guidance_weight * li, cfg.guidance_weight * le
        loss = sum(loss_parts.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {float(loss)} at iteration {it} ({ {k: float(v) for k, v in loss_parts.items()} }); "
                               f"the last good checkpoint is {out_dir / 'last.pt'}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        history.append(loss.item())
        if it % 20 == 0 or it == cfg.iterations - 1:
            el = time.perf_counter() - t0
            eta = el / (it + 1 - start) * (cfg.iterations - it - 1)
            log(f"it {it:5d}/{cfg.iterations}  loss {loss.item():.4f}  lr {lr_at(it, cfg):.2e}  "
                f"{el:.0f}s elapsed, ETA {eta:.0f}s")
        stopping = stop_after is not None and it + 1 - start >= stop_after
        if (it + 1) % cfg.checkpoint_every == 0 or it == cfg.iterations - 1 or stopping:
            _save_checkpoint(ckpt, model, opt, it + 1, rng, history, cfg)
        if stopping:
            break
    k = max(1, min(20, len(history) // 5))
    summary = {"first_loss": float(np.mean(history[:k])), "last_loss": float(np.mean(history[-k:])),
               "iterations": len(history), "checkpoint": str(ckpt),
               "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "history.json").write_text(json.dumps(history))
    return summary


def load_fit_config(path: str | Path) -> tuple[FitConfig, ModelConfig]:
    p = Path(path)
    data = load_yaml(p)
    cfg = from_dict(FitConfig, data, "fit")
    if not cfg.model:
        raise ConfigError(f"{p}: 'model' must name a model config YAML")
    mpath = (p.parent / cfg.model) if not Path(cfg.model).is_absolute() else Path(cfg.model)
    return cfg, load_model_config(mpath)
