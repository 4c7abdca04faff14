"""Semantic segmentation metrics (numpy): per-class accuracy (recall), IoU, their means.

Convention, stated once: class 0 is *unlabeled* in MFNet and in the synthetic data. Pixels
whose ground truth equals ``ignore_index`` (default 0) are excluded from every count, and
class 0 is excluded from the means. MFNet papers that report 9-class numbers with
"unlabeled" included can pass ``ignore_index=None, include_classes=range(9)``.
A class absent from the ground truth has undefined accuracy (NaN) and is left out of the
means (``nanmean``), like the MFNet evaluation code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass
class SegmentationResult:
    confusion: np.ndarray  # (K, K), rows = ground truth, cols = prediction
    accuracy: np.ndarray  # (K,) per-class recall, NaN when class absent in GT
    iou: np.ndarray  # (K,) NaN when class absent in both GT and prediction
    mean_accuracy: float
    miou: float
    pixel_accuracy: float
    classes: tuple[int, ...]  # classes that enter the means

    def as_dict(self, names: Sequence[str] | None = None) -> dict:
        names = names or [str(i) for i in range(len(self.accuracy))]
        return {"mAcc": self.mean_accuracy, "mIoU": self.miou, "pixel_acc": self.pixel_accuracy,
                "acc": {names[c]: _f(self.accuracy[c]) for c in self.classes},
                "iou": {names[c]: _f(self.iou[c]) for c in self.classes}}


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_index: int | None = 0) -> np.ndarray:
    """(K, K) int64 confusion of one label map pair (any shape, same for both)."""
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"label map sizes differ: ground truth {gt.size} px, prediction {pred.size} px")
    keep = (gt >= 0) & (gt < num_classes)
    if ignore_index is not None:
        keep &= gt != ignore_index
    bad = (pred[keep] < 0) | (pred[keep] >= num_classes)
    if bad.any():
        raise ValueError(f"prediction holds class ids outside [0, {num_classes}): {np.unique(pred[keep][bad])[:5]}")
    return np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray, ignore_index: int | None = 0,
                         include_classes: Iterable[int] | None = None) -> SegmentationResult:
    conf = np.asarray(confusion, dtype=np.float64)
    k = conf.shape[0]
    tp = np.diag(conf)
    gt_count = conf.sum(1)
    pred_count = conf.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
        union = gt_count + pred_count - tp
        iou = np.where(union > 0, tp / union, np.nan)
    classes = tuple(include_classes) if include_classes is not None else \
        tuple(c for c in range(k) if c != ignore_index)
    sel = np.array(classes, dtype=int)
    m_acc = float(np.nanmean(acc[sel])) if np.isfinite(acc[sel]).any() else float("nan")
    m_iou = float(np.nanmean(iou[sel])) if np.isfinite(iou[sel]).any() else float("nan")
    total = conf.sum()
    return SegmentationResult(conf.astype(np.int64), acc, iou, m_acc, m_iou,
                              float(tp.sum() / total) if total else float("nan"), classes)


def evaluate_segmentation(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int,
                          ignore_index: int | None = 0) -> SegmentationResult:
    """Accumulate over (gt, pred) label maps, then compute the metrics."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for gt, pred in pairs:
        conf += confusion_matrix(gt, pred, num_classes, ignore_index)
    return segmentation_metrics(conf, ignore_index)
