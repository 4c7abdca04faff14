"""Static IoU anchor assignment (RetinaNet; METHODS.md §2 first paragraph)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

POS_IOU, NEG_IOU = 0.5, 0.4


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-9)


@dataclass
class AssignResult:
    """labels: (A,) 1 positive, 0 negative, -1 ignored; gt_index: (A,) matched object (−1 none);
    num_pos / num_ignored: (G,) per object, the Np / Ni that Mutual Guidance reuses."""
    labels: torch.Tensor
    gt_index: torch.Tensor
    num_pos: torch.Tensor
    num_ignored: torch.Tensor


class IoUAssigner:
    """1. IoU of every anchor with every object. 2. Each anchor takes its best object:
    positive if IoU ≥ 0.5, negative if < 0.4, ignored between. 3. Each object's best anchor
    becomes positive for it even below 0.5 (at least one positive per object)."""

    def __init__(self, pos_iou: float = POS_IOU, neg_iou: float = NEG_IOU):
        self.pos_iou, self.neg_iou = pos_iou, neg_iou

    @torch.no_grad()
    def assign(self, anchors: torch.Tensor, gt_boxes: torch.Tensor) -> AssignResult:
        a = anchors.shape[0]
        if gt_boxes.numel() == 0:
            z = torch.zeros(0, dtype=torch.long)
            return AssignResult(torch.zeros(a, dtype=torch.long), torch.full((a,), -1, dtype=torch.long), z, z)
        iou = box_iou(anchors, gt_boxes)                 # (A, G)
        best, idx = iou.max(1)
        labels = torch.full((a,), -1, dtype=torch.long)
        labels[best < self.neg_iou] = 0
        labels[best >= self.pos_iou] = 1
        gt_best = iou.argmax(0)                          # (G,)
        labels[gt_best] = 1
        idx[gt_best] = torch.arange(gt_boxes.shape[0])
        gt_index = torch.where(labels >= 0, idx, idx)
        gt_index = torch.where(labels == 0, torch.full_like(idx, -1), gt_index)
        g = gt_boxes.shape[0]
        num_pos = torch.bincount(idx[labels == 1], minlength=g)
        num_ign = torch.bincount(idx[labels == -1], minlength=g)
        return AssignResult(labels, gt_index, num_pos, num_ign)
