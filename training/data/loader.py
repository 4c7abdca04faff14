"""From source items to training batches: augmentation, collation, the DataLoader.

The thermal image is kept at the model's full input resolution; a model with a low-resolution
thermal input (the MD student, ``input.thermal_factor``) gets it downsampled bilinearly on the
device (MD paper §3: bilinear down, then bilinear up inside the model), so a teacher and its
student read one source.

Augmentation (``transforms.py``: mixup, horizontal flip) is drawn from a generator seeded by
(seed, epoch, sample index), never from a shared stream: the same sample gets the same flip and
mixup partner in whichever process, worker or batch it lands, so 2-process DDP training equals
1-process training with the combined batch and a resumed run equals an uninterrupted one.

Workers return uint8 images (a quarter of the float bytes through shared memory and the pinned
host-to-device copy); normalization happens on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from ms_perception_training.data.transforms import (
    HorizontalFlip,
    Sample,
    mixup,
    sample_mixup_lambda,
)


@dataclass
class Batch:
    visible: torch.Tensor             # (N, 3, H, W) normalized
    thermal: torch.Tensor             # (N, 1, H, W) normalized, full resolution
    targets: list                     # [(boxes (n,4), labels (n,), weights (n,))]
    semantic: torch.Tensor | None     # (N, H, W) int64
    indices: list = field(default_factory=list)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _as_sample(it) -> Sample:
    """A source item as a transforms.Sample; ignore regions are left out of the training targets."""
    keep = ~it.ignore
    return Sample(it.visible, it.thermal, it.boxes[keep], it.labels[keep], np.zeros(int(keep.sum()), bool),
                  it.occlusion[keep], it.semantic if it.semantic.size else None)


def train_sample(pool, i: int, mcfg, seed: int = 0, epoch: int = 0, augment: bool = True,
                 mixup_p: float = 0.0) -> dict:
    """Item ``i`` augmented by its own (seed, epoch, i) draws: with probability ``mixup_p`` mixed
    with another item (images λa + (1−λ)b rounded to uint8, λ ~ Beta(1, 1), boxes of both with loss
    weights λ and 1−λ; METHODS §1), then flipped with probability 0.5."""
    seg = mcfg.task == "segmentation"
    if seg and mixup_p:
        raise ValueError("mixup is defined for detection (mixed box weights); label maps cannot be mixed: "
                         "set mixup: 0 for segmentation")
    s = _as_sample(pool[i])
    rng = sample_rng(seed, epoch, int(i))
    if augment and mixup_p and rng.random() < mixup_p:
        j = int(rng.integers(len(pool)))
        lam = sample_mixup_lambda(rng)
        s = mixup(s, _as_sample(pool[j]), lam)
    if augment:
        s = HorizontalFlip(0.5)(s, rng)
    out = {"visible": torch.from_numpy(np.ascontiguousarray(s.visible)).permute(2, 0, 1),
           "thermal": torch.from_numpy(np.ascontiguousarray(s.thermal))[None],
           "boxes": torch.from_numpy(s.boxes.astype(np.float32)), "labels": torch.from_numpy(s.labels.astype(np.int64)),
           "weights": torch.from_numpy(s.box_weights.astype(np.float32)), "index": int(i)}
    if seg:
        out["semantic"] = torch.from_numpy(np.ascontiguousarray(s.mask)).long()
    return out


def collate(samples: list[dict]) -> dict:
    out = {"visible": torch.stack([s["visible"] for s in samples]),
           "thermal": torch.stack([s["thermal"] for s in samples]),
           "targets": [(s["boxes"], s["labels"], s["weights"]) for s in samples],
           "indices": [s["index"] for s in samples]}
    if "semantic" in samples[0]:
        out["semantic"] = torch.stack([s["semantic"] for s in samples])
    return out


def to_batch(c: dict, mcfg, device="cpu") -> Batch:
    """Collated uint8 samples -> a normalized Batch on ``device``."""
    nb = str(device).startswith("cuda")
    mean = torch.tensor(mcfg.input.visible_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(mcfg.input.visible_std, device=device).view(1, 3, 1, 1)
    v = (c["visible"].to(device, non_blocking=nb).float() / 255 - mean) / std
    t = (c["thermal"].to(device, non_blocking=nb).float() / 255 - mcfg.input.thermal_mean) / mcfg.input.thermal_std
    targets = [tuple(x.to(device, non_blocking=nb) for x in tgt) for tgt in c["targets"]]
    sem = c["semantic"].to(device, non_blocking=nb) if "semantic" in c else None
    return Batch(v, t, targets, sem, list(c["indices"]))


def make_batch(pool, indices, mcfg, seed: int = 0, epoch: int = 0, augment: bool = True,
               mixup: float = 0.0, device="cpu") -> Batch:
    """The items ``indices`` as one batch, in this process (what the DataLoader's workers do)."""
    return to_batch(collate([train_sample(pool, i, mcfg, seed, epoch, augment, mixup) for i in indices]), mcfg,
                    device)


class _Samples(torch.utils.data.Dataset):
    """Keyed by (epoch, index), so a worker needs no shared epoch state."""

    def __init__(self, pool, mcfg, seed: int, mixup_p: float, augment: bool = True):
        self.pool, self.mcfg, self.seed, self.mixup_p, self.augment = pool, mcfg, seed, mixup_p, augment

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, key):
        epoch, i = key
        return train_sample(self.pool, i, self.mcfg, self.seed, epoch, self.augment, self.mixup_p)


class _IterationBatches:
    """Iterations ``start..total`` -> the (epoch, index) keys of this process's part of each batch
    (the EpochSampler: a DistributedSampler per epoch)."""

    def __init__(self, sampler, start: int, total: int):
        self.sampler, self.start, self.total = sampler, start, total

    def __iter__(self):
        for it in range(self.start, self.total):
            epoch, idx = self.sampler.indices(it)
            yield [(epoch, i) for i in idx]

    def __len__(self) -> int:
        return self.total - self.start


def train_loader(pool, mcfg, sampler, start: int, total: int, seed: int, mixup_p: float, workers: int,
                 pin_memory: bool) -> torch.utils.data.DataLoader:
    """Batches for iterations ``start..total`` through worker processes (``workers`` 0: in this
    process), pinned host memory for CUDA, workers kept for the whole run."""
    return torch.utils.data.DataLoader(
        _Samples(pool, mcfg, seed, mixup_p), batch_sampler=_IterationBatches(sampler, start, total),
        collate_fn=collate, num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None)
    # no worker_init_fn setting thread counts: DataLoader already gives each worker one torch
    # thread, and cv2.setNumThreads in a forked worker deadlocks on the parent's pool (measured)


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
