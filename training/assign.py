"""Anchor targets: which anchor learns which object, and the box deltas it regresses to.

- Box coding in torch on the tensors' own device (no host copies), the mirror of the runtime's
  numpy ``ms_perception.core.anchors.BoxCoder`` (tested equal; the runtime never imports torch).
- Static IoU assignment (RetinaNet; METHODS.md §2 first paragraph).
- Mutual Guidance (METHODS.md §2), which reuses the IoU assignment's counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

POS_IOU, NEG_IOU = 0.5, 0.4


def encode_boxes_torch(anchors: torch.Tensor, boxes: torch.Tensor, weights) -> torch.Tensor:
    """(M, 4) anchors and matched (M, 4) xyxy boxes -> (M, 4) deltas (BoxCoder.encode)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    wx, wy, ww, wh = weights
    return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], -1)


def decode_boxes_torch(anchors: torch.Tensor, deltas: torch.Tensor, weights, clip: float) -> torch.Tensor:
    """(M, 4) anchors, (..., M, 4) deltas -> (..., M, 4) xyxy boxes (BoxCoder.decode)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    wx, wy, ww, wh = weights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    cx, cy = dx * aw + ax, dy * ah + ay
    w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


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
        a, dev = anchors.shape[0], anchors.device     # everything stays on the anchors' device
        if gt_boxes.numel() == 0:
            z = torch.zeros(0, dtype=torch.long, device=dev)
            return AssignResult(torch.zeros(a, dtype=torch.long, device=dev),
                                torch.full((a,), -1, dtype=torch.long, device=dev), z, z)
        iou = box_iou(anchors, gt_boxes)                 # (A, G)
        best, idx = iou.max(1)
        labels = torch.full((a,), -1, dtype=torch.long, device=dev)
        labels[best < self.neg_iou] = 0
        labels[best >= self.pos_iou] = 1
        gt_best = iou.argmax(0)                          # (G,)
        labels[gt_best] = 1
        idx[gt_best] = torch.arange(gt_boxes.shape[0], device=dev)
        gt_index = torch.where(labels >= 0, idx, idx)
        gt_index = torch.where(labels == 0, torch.full_like(idx, -1), gt_index)
        g = gt_boxes.shape[0]
        num_pos = torch.bincount(idx[labels == 1], minlength=g)
        num_ign = torch.bincount(idx[labels == -1], minlength=g)
        return AssignResult(labels, gt_index, num_pos, num_ign)


@dataclass
class MutualGuidanceResult:
    """cls_labels: (A,) 1 positive / 0 negative / -1 ignored for classification (Localize to
    Classify); cls_gt_index: (A,) object of each classification positive (−1 otherwise);
    reg_gt_index: (A,) object each anchor regresses to (Classify to Localize; −1 = no regression)."""
    cls_labels: torch.Tensor
    cls_gt_index: torch.Tensor
    reg_gt_index: torch.Tensor


class MutualGuidanceAssigner:
    """Mutual Guidance (thesis §3.2; METHODS.md §2), a no-grad assigner.

    The static IoU assignment gives each object its counts Np (positives) and Ni (ignored).
    Localize to Classify: per object, the Np anchors with the highest IoU(decoded prediction, GT)
    are classification positives, the next Ni ignored, the rest negative (the Np-th and
    (Np+Ni)-th largest values are the dynamic thresholds). Classify to Localize: per object, the
    Np anchors with the highest IoU_anchor ** ((σ − p) / σ), p = the predicted probability of
    the object's class, regress to it. An anchor picked by several objects goes to the one
    where its ranking value is highest. σ = 2: the thesis requires σ > 1 and plots 1, 2, 3
    without stating its choice (our default, configurable).
    """

    def __init__(self, sigma: float = 2.0, pos_iou: float = POS_IOU, neg_iou: float = NEG_IOU):
        if sigma <= 1:
            raise ValueError(f"Mutual Guidance needs sigma > 1 (thesis §3.2.2), got {sigma}")
        self.sigma = sigma
        self.static = IoUAssigner(pos_iou, neg_iou)

    @staticmethod
    def _top(values: torch.Tensor, counts: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """(A, G) bool: for each object g, the anchors ranked [offset_g, offset_g + counts_g) by values[:, g]."""
        a, g = values.shape
        order = values.argsort(0, descending=True)                       # (A, G)
        rank = torch.empty_like(order)
        rank.scatter_(0, order, torch.arange(a, device=values.device).unsqueeze(1).expand(a, g))
        lo = torch.zeros_like(counts) if offset is None else offset
        return (rank >= lo.unsqueeze(0)) & (rank < (lo + counts).unsqueeze(0))

    @torch.no_grad()
    def assign(self, anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
               pred_boxes: torch.Tensor, pred_scores: torch.Tensor) -> MutualGuidanceResult:
        """anchors, pred_boxes: (A, 4) xyxy; gt_boxes (G, 4); gt_labels (G,) class index into
        pred_scores (A, K) probabilities."""
        a, dev = anchors.shape[0], anchors.device
        none = torch.full((a,), -1, dtype=torch.long, device=dev)
        if gt_boxes.numel() == 0:
            return MutualGuidanceResult(torch.zeros(a, dtype=torch.long, device=dev), none, none.clone())
        static = self.static.assign(anchors, gt_boxes)
        np_, ni = static.num_pos, static.num_ignored
        # Localize to Classify
        # only predictions that overlap the object may be chosen: with fewer than Np overlapping, the
        # top-Np ranking would otherwise make anchors far from it positives (ties at IoU 0)
        iou_reg = box_iou(pred_boxes.float(), gt_boxes.float())                 # (A, G)
        overlap = iou_reg > 0
        pos = self._top(iou_reg, np_) & overlap
        ign = self._top(iou_reg, ni, np_) & overlap
        masked = torch.where(pos, iou_reg, torch.full_like(iou_reg, -1.0))
        best_val, best_g = masked.max(1)
        cls_labels = torch.zeros(a, dtype=torch.long, device=dev)
        cls_labels[ign.any(1)] = -1
        is_pos = best_val >= 0
        cls_labels[is_pos] = 1
        cls_gt = torch.where(is_pos, best_g, none)
        # Classify to Localize
        iou_anchor = box_iou(anchors.float(), gt_boxes.float())
        p = pred_scores.float()[:, gt_labels.long()]                              # (A, G)
        amplified = iou_anchor.pow((self.sigma - p) / self.sigma)
        reg = self._top(amplified, np_) & (iou_anchor > 0)                        # anchors on the object only
        masked = torch.where(reg, amplified, torch.full_like(amplified, -1.0))
        rbest_val, rbest_g = masked.max(1)
        reg_gt = torch.where(rbest_val >= 0, rbest_g, none)
        return MutualGuidanceResult(cls_labels, cls_gt, reg_gt)
