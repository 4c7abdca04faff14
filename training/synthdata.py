"""Training/validation pools from the synthetic multispectral generator, and batches.

Images go through the RUNTIME's preprocessing (letterbox, 16-bit window, registration warp),
so a model learns exactly what the robot feeds it. The thermal image is kept at the model's
full input resolution; a model with a low-resolution thermal input (the MD student,
``input.thermal_factor``) gets it downsampled bilinearly in the batch (MD paper §3: bilinear
down, then bilinear up inside the model), so a teacher and its student see one pool.

Augmentation is drawn from a generator seeded by (seed, epoch, sample index), never from a
shared stream: the same sample gets the same flip and mixup partner whichever process or
batch it lands in, so 2-process DDP training equals 1-process training with the combined
batch, and a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from ms_perception_training.data.transforms import sample_mixup_lambda

from ms_perception.core.frames import Frame
from ms_perception.core.preprocess import Letterbox, ThermalNormalization, thermal_to_unit, warp_thermal
from ms_perception.synth.generator import CLASS_NAMES, SynthConfig, SyntheticGenerator

SEG_IGNORE = 255                      # letterbox padding in label maps
_SEG_ALIASES = {"bicycle": ("bicycle", "bike"), "person": ("person", "pedestrian"), "car": ("car",)}


@dataclass
class SynthDataConfig:
    pairs: int = 400                  # pool of generated pairs, reused across epochs with flips
    width: int = 640                  # rig resolution (the runtime letterboxes to the model input)
    height: int = 512
    thermal_factor: int = 4           # the synthetic thermal CAMERA's pixel factor (not the model's)
    night_fraction: float = 0.4
    seed: int = 1


@dataclass
class PoolItem:
    visible: np.ndarray               # (H, W, 3) uint8 at the model input
    thermal: np.ndarray               # (H, W) uint8, registered, full model resolution
    boxes: np.ndarray                 # (n, 4) xyxy at the model input
    labels: np.ndarray                # (n,) model class indices
    semantic: np.ndarray              # (H, W) uint8 model class ids (SEG_IGNORE on padding)
    condition: str                    # "day" | "night" | ...
    rig_boxes: np.ndarray             # (n, 4) in rig pixels (evaluation)
    occlusion: np.ndarray             # (n,)
    letterbox: Letterbox


@dataclass
class Batch:
    visible: torch.Tensor             # (N, 3, H, W) normalized
    thermal: torch.Tensor             # (N, 1, H, W) normalized, full resolution
    targets: list                     # [(boxes (n,4), labels (n,), weights (n,))]
    semantic: torch.Tensor | None     # (N, H, W) int64
    indices: list = field(default_factory=list)


def seg_class_map(class_names: list[str]) -> np.ndarray:
    """Generator class id -> model class id (0 = the model's first class, background/unlabeled)."""
    lut = np.zeros(256, np.uint8)
    lowered = [c.lower() for c in class_names]
    for gid, name in enumerate(CLASS_NAMES):
        for alias in _SEG_ALIASES.get(name, (name,)):
            if alias in lowered:
                lut[gid] = lowered.index(alias)
                break
    return lut


def make_pool(mcfg, d: SynthDataConfig) -> list[PoolItem]:
    gen = SyntheticGenerator(SynthConfig(width=d.width, height=d.height, thermal_factor=d.thermal_factor,
                                         night_fraction=d.night_fraction, misregistration_px=0.0), d.seed)
    H, W = mcfg.input.height, mcfg.input.width
    norm = ThermalNormalization()
    seg = mcfg.task == "segmentation"
    lut = seg_class_map(mcfg.class_names) if seg else None
    pool = []
    for sp in gen.pairs(d.pairs):
        lb = Letterbox.fit(sp.visible.shape[:2], (H, W))
        vis = lb.apply(sp.visible)
        unit = thermal_to_unit(Frame(sp.thermal_raw, 0, "mono16"), norm)
        th = np.clip(np.rint(warp_thermal(unit, sp.homography, lb, (H, W)) * 255), 0, 255).astype(np.uint8)
        objs = [o for o in sp.objects if CLASS_NAMES[o.class_id] in mcfg.class_names]
        rig = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
        boxes = np.concatenate([rig[:, :2] * lb.scale_xy + lb.pad, rig[:, 2:] * lb.scale_xy + lb.pad], 1) \
            if len(rig) else rig.copy()
        labels = np.array([mcfg.class_names.index(CLASS_NAMES[o.class_id]) for o in objs], np.int64)
        if seg:
            sem = _letterbox_labels(lut[sp.semantic], lb)
        else:
            sem = np.zeros((0, 0), np.uint8)
        pool.append(PoolItem(vis, th, boxes.astype(np.float32), labels, sem, sp.condition, rig,
                             np.array([o.occlusion for o in objs], np.int64), lb))
    return pool


def _letterbox_labels(labels: np.ndarray, lb: Letterbox) -> np.ndarray:
    import cv2
    (nh, nw), (px, py), (h, w) = lb.size_hw, lb.pad, lb.dst_hw
    r = cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(r, py, h - nh - py, px, w - nw - px, cv2.BORDER_CONSTANT, value=SEG_IGNORE)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def make_batch(pool: list[PoolItem], indices, mcfg, seed: int = 0, epoch: int = 0, augment: bool = True,
               mixup: float = 0.0, device="cpu") -> Batch:
    """Flip (p 0.5) and, with probability ``mixup``, mix with another pool item: images
    λa + (1−λ)b, λ ~ Beta(1, 1), boxes of both with loss weights λ and 1−λ (METHODS §1)."""
    mean = torch.tensor(mcfg.input.visible_mean).view(1, 3, 1, 1)
    std = torch.tensor(mcfg.input.visible_std).view(1, 3, 1, 1)
    seg = mcfg.task == "segmentation"
    if seg and mixup:
        raise ValueError("mixup is defined for detection (mixed box weights); label maps cannot be mixed: "
                         "set mixup: 0 for segmentation")
    W = mcfg.input.width
    vs, ts, targets, sems = [], [], [], []
    for i in indices:
        it = pool[i]
        rng = sample_rng(seed, epoch, int(i))
        vis, th, sem = it.visible.astype(np.float32), it.thermal.astype(np.float32), it.semantic
        boxes, labels = it.boxes.copy(), it.labels.copy()
        weights = np.ones(len(boxes), np.float32)
        if augment and mixup and rng.random() < mixup:
            j = int(rng.integers(len(pool)))
            lam = sample_mixup_lambda(rng)
            other = pool[j]
            vis = lam * vis + (1 - lam) * other.visible.astype(np.float32)
            th = lam * th + (1 - lam) * other.thermal.astype(np.float32)
            boxes = np.concatenate([boxes, other.boxes])
            labels = np.concatenate([labels, other.labels])
            weights = np.concatenate([weights * lam, np.full(len(other.boxes), 1 - lam, np.float32)])
        if augment and rng.random() < 0.5:
            vis, th = vis[:, ::-1], th[:, ::-1]
            sem = sem[:, ::-1] if seg else sem
            if len(boxes):
                boxes[:, [0, 2]] = W - boxes[:, [2, 0]]
        vs.append(torch.from_numpy(np.ascontiguousarray(vis)).permute(2, 0, 1))
        ts.append(torch.from_numpy(np.ascontiguousarray(th))[None])
        targets.append((torch.from_numpy(boxes).to(device), torch.from_numpy(labels).to(device),
                        torch.from_numpy(weights).to(device)))
        if seg:
            sems.append(torch.from_numpy(np.ascontiguousarray(sem)).long())
    v = ((torch.stack(vs) / 255 - mean) / std).to(device)
    t = ((torch.stack(ts) / 255 - mcfg.input.thermal_mean) / mcfg.input.thermal_std).to(device)
    return Batch(v, t, targets, torch.stack(sems).to(device) if seg else None, list(indices))


def thermal_for(mcfg, thermal: torch.Tensor) -> torch.Tensor | None:
    """The thermal input a model expects: None for RGB-only models, bilinearly downsampled for a
    low-resolution thermal input (MD student), else as is."""
    if not mcfg.uses_thermal:
        return None
    lf = mcfg.input.linear_factor
    hw = (thermal.shape[-2] // lf, thermal.shape[-1] // lf)
    if tuple(thermal.shape[-2:]) != hw:
        thermal = F.interpolate(thermal, size=hw, mode="bilinear", align_corners=False)
    return thermal


def rescale_batch(b: Batch, size_hw: tuple[int, int]) -> Batch:
    """Multi-scale training: resize the batch's images (bilinear), label maps (nearest) and boxes."""
    H, W = b.visible.shape[-2:]
    h, w = size_hw
    if (h, w) == (H, W):
        return b
    sx, sy = w / W, h / H
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    v = F.interpolate(b.visible, size=(h, w), mode="bilinear", align_corners=False)
    t = F.interpolate(b.thermal, size=(h, w), mode="bilinear", align_corners=False)
    sem = None if b.semantic is None else \
        F.interpolate(b.semantic[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    targets = [(bx * scale.to(bx.device), lab, wt) for bx, lab, wt in b.targets]
    return Batch(v, t, targets, sem, b.indices)
