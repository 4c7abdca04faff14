"""PyTorch datasets over :mod:`readers`: each item is ``(visible, thermal, target)``.

- ``visible``: uint8 tensor (3, H, W), RGB;
- ``thermal``: tensor (C, h, w) as stored (uint8 8-bit renderings, int32 for 16-bit
  radiometric counts, since torch has no uint16 arithmetic), or ``None`` for mono datasets;
- ``target``: dict with ``boxes`` (N, 4) float32 xyxy visible pixels, ``labels`` (N,)
  int64, ``ignore`` (N,) bool, ``occlusion`` (N,) int64, ``height`` (N,) float32,
  ``box_weights`` (N,) float32, ``mask`` (H, W) int64 when the dataset has label maps,
  ``condition`` ("day" / "night" / None) and ``name``.

The same target structure for every dataset, detection or segmentation, so models and
losses do not care where data came from.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from ms_perception_training.data import readers
from ms_perception_training.data.transforms import Sample
from torch.utils.data import Dataset


class MultispectralDataset(Dataset):
    def __init__(self, records: Sequence[readers.Record], classes: Sequence[str],
                 transform: Callable[[Sample, np.random.Generator], Sample] | None = None, seed: int = 0):
        if not records:
            raise ValueError("the dataset is empty: check the root folder and the split/list name")
        self.records, self.classes, self.transform, self.seed = list(records), tuple(classes), transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness depends on (seed, epoch, index): reproducible, per-epoch fresh."""
        self.epoch = epoch

    def load_sample(self, i: int) -> Sample:
        r = self.records[i]
        vis = readers.load_visible(r.visible_path)
        th = readers.load_thermal(r.thermal_path) if r.thermal_path is not None else None
        mask = readers.load_label_map(r.label_path) if r.label_path is not None else None
        if mask is not None and mask.shape != vis.shape[:2]:
            raise ValueError(f"{r.label_path}: label map is {mask.shape[::-1]} but the image is {vis.shape[1::-1]} (w, h)")
        return Sample(vis, th, r.boxes.copy(), r.labels.copy(), r.ignore.copy(), r.occlusion.copy(), mask,
                      condition=r.condition, extra={"name": r.name})

    def __getitem__(self, i: int):
        s = self.load_sample(i)
        if self.transform is not None:
            s = self.transform(s, np.random.default_rng([self.seed, self.epoch, i]))
        return to_tensors(s)


def to_tensors(s: Sample):
    vis = torch.from_numpy(np.ascontiguousarray(s.visible.transpose(2, 0, 1)))
    th = None
    if s.thermal is not None:
        t = s.thermal if s.thermal.ndim == 3 else s.thermal[..., None]
        t = np.ascontiguousarray(t.transpose(2, 0, 1))
        th = torch.from_numpy(t.astype(np.int32) if t.dtype == np.uint16 else t)
    target = {"boxes": torch.from_numpy(s.boxes.astype(np.float32)), "labels": torch.from_numpy(s.labels.astype(np.int64)),
              "ignore": torch.from_numpy(s.ignore.astype(bool)), "occlusion": torch.from_numpy(s.occlusion.astype(np.int64)),
              "height": torch.from_numpy((s.boxes[:, 3] - s.boxes[:, 1]).astype(np.float32)),
              "box_weights": torch.from_numpy(s.box_weights.astype(np.float32)),
              "condition": s.condition, "name": s.extra.get("name")}
    if s.mask is not None:
        target["mask"] = torch.from_numpy(s.mask.astype(np.int64))
    return vis, th, target


def collate(batch):
    """Stack images of equal size; targets stay a list."""
    vis = torch.stack([b[0] for b in batch])
    th = None if batch[0][1] is None else torch.stack([b[1] for b in batch])
    return vis, th, [b[2] for b in batch]


def kaist(root, image_set="test", annotations="annotations", transform=None, **kw) -> MultispectralDataset:
    return MultispectralDataset(readers.read_kaist(root, image_set, annotations), readers.KAIST_CLASSES, transform, **kw)


def flir_aligned(root, split="train", transform=None, **kw) -> MultispectralDataset:
    return MultispectralDataset(readers.read_flir_aligned(root, split), readers.FLIR_CLASSES, transform, **kw)


def mfnet(root, split="train", transform=None, **kw) -> MultispectralDataset:
    return MultispectralDataset(readers.read_mfnet(root, split), readers.MFNET_CLASSES, transform, **kw)


def vedai(root, fold, resolution=512, transform=None, **kw) -> MultispectralDataset:
    return MultispectralDataset(readers.read_vedai(root, fold, resolution), readers.VEDAI_CLASSES, transform, **kw)


def llvip(root, split="train", transform=None, **kw) -> MultispectralDataset:
    return MultispectralDataset(readers.read_llvip(root, split), readers.LLVIP_CLASSES, transform, **kw)


def voc(root, image_set="trainval", transform=None, **kw) -> MultispectralDataset:
    return MultispectralDataset(readers.read_voc(root, image_set), readers.VOC_CLASSES, transform, **kw)


def coco(annotation_file, image_root=None, transform=None, **kw) -> MultispectralDataset:
    records, classes = readers.read_coco(annotation_file, image_root)
    return MultispectralDataset(records, classes, transform, **kw)
