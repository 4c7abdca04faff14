"""The training objective of every architecture: task losses of each branch and the losses
its fusion module is trained with (METHODS.md §1, §4).

- RetinaNet heads: focal loss on assigned anchors + balanced L1 (or smooth L1 as the switch
  off) on regression positives, normalized by the number of positives (IoU assignment or
  Mutual Guidance).
- SSD heads: softmax cross-entropy with 3:1 hard negative mining + smooth L1 (Liu et al. 2016).
- Segmentation heads: pixel cross-entropy, padding ignored.
- GAFF: L_intra (Dice vs ellipse masks) + L_inter (CE vs margin labels), eq. 4.17.
- CFR: Dice between each refined mono feature's mask and the object mask (box-filled: the
  datasets have boxes only).
- Segmentation auxiliary head (CFL paper §III-C): CE against box-filled class masks.
- CFL/decision models train the per-modality heads and the combined (MAF) output.

The losses themselves (focal, balanced L1, smooth L1, Dice, cross-entropy with ignore) and the
masks drawn from boxes (GAFF's ellipses, CFR's and the auxiliary head's filled boxes) are here
too, so one file holds everything between a model's output and its loss.

Normalizers: the positive count is summed over every process of a DDP run (``reduce_sum``),
so the gradient DDP averages equals the gradient of the combined batch.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from ms_perception_training.assign import (
    IoUAssigner,
    MutualGuidanceAssigner,
    decode_boxes_torch,
    encode_boxes_torch,
)
from ms_perception_training.models.fusion.gaff import IGNORE, gaff_inter_labels
from ms_perception_training.models.multispectral import flatten_levels

from ms_perception.core.anchors import BoxCoder, grid_anchors

# ---------------------------------------------------------------- the losses, from their papers
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0                  # Lin et al. 2017 (RetinaNet)
BL1_ALPHA, BL1_BETA, BL1_GAMMA = 0.5, 1.0, 1.5        # Pang et al. 2019; thesis Table 3.2


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """FL(p_t) = −α_t (1 − p_t)^γ log(p_t), elementwise (sum/normalize outside)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return a_t * (1 - p_t) ** gamma * ce


def balanced_l1_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = BL1_ALPHA, beta: float = BL1_BETA,
                     gamma: float = BL1_GAMMA) -> torch.Tensor:
    """Balanced L1 (Libra R-CNN, eq. 7), elementwise, with b from α ln(b + 1) = γ (gradient continuity):
        |x| < β: α/b (b|x| + 1) ln(b|x|/β + 1) − α|x|;   else γ|x| + γ/b − αβ."""
    x = (pred - target).abs()
    b = math.exp(gamma / alpha) - 1
    return torch.where(x < beta, alpha / b * (b * x + 1) * torch.log(b * x / beta + 1) - alpha * x,
                       gamma * x + gamma / b - alpha * beta)


def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0 / 9) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="none")


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − 2Σ(p·g) / (Σp + Σg), per sample then averaged; p are probabilities (N, 1, H, W)."""
    p, g = pred.flatten(1), target.flatten(1)
    return (1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


def cross_entropy_ignore(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel/anchor cross-entropy averaged over the non-ignored targets (0 if all are ignored)."""
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


# ---------------------------------------------------------------- masks drawn from boxes (torch)
# the mirrors of data.transforms.ellipse_mask / box_mask (tested equal), on the targets' device
def _centres(size, device):
    w, h = size
    return (torch.arange(w, device=device, dtype=torch.float64) + 0.5,
            torch.arange(h, device=device, dtype=torch.float64) + 0.5)


def ellipse_mask_torch(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) uint8: pixels whose centre lies in some box's inscribed ellipse (transforms.ellipse_mask)."""
    W, H = size
    b = boxes.detach().to(torch.float64).reshape(-1, 4)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if not len(b):
        return torch.zeros((H, W), dtype=torch.uint8, device=boxes.device)
    xs, ys = _centres(size, boxes.device)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    ax, ay = (b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2
    dx = ((xs[None] - cx[:, None]) / ax[:, None]) ** 2            # (n, W)
    dy = ((ys[None] - cy[:, None]) / ay[:, None]) ** 2            # (n, H)
    return (dy[:, :, None] + dx[:, None, :] <= 1.0).any(0).to(torch.uint8)


def box_mask_torch(boxes: torch.Tensor, size: tuple[int, int], labels: torch.Tensor | None = None) -> torch.Tensor:
    """(H, W) int64: each box filled with its label (1 without labels), later boxes on top;
    pixel (i, j) is inside ``[x0, x1) x [y0, y1)`` when its centre is (transforms.box_mask)."""
    W, H = size
    b = boxes.detach().to(torch.float64).reshape(-1, 4)
    out = torch.zeros((H, W), dtype=torch.int64, device=boxes.device)
    if not len(b):
        return out
    xs, ys = _centres(size, boxes.device)
    c0, r0 = torch.ceil(b[:, 0] - 0.5), torch.ceil(b[:, 1] - 0.5)
    c1, r1 = torch.ceil(b[:, 2] - 0.5), torch.ceil(b[:, 3] - 0.5)
    inx = (xs[None] - 0.5 >= c0[:, None]) & (xs[None] - 0.5 < c1[:, None])     # (n, W)
    iny = (ys[None] - 0.5 >= r0[:, None]) & (ys[None] - 0.5 < r1[:, None])     # (n, H)
    inside = iny[:, :, None] & inx[:, None, :]                                 # (n, H, W)
    order = torch.arange(1, len(b) + 1, device=boxes.device)[:, None, None]
    top = (inside * order).amax(0)                                              # last box covering each pixel
    lab = torch.ones(len(b), dtype=torch.int64, device=boxes.device) if labels is None else labels.to(torch.int64)
    return torch.where(top > 0, lab[(top - 1).clamp(min=0)], out)


SEG_IGNORE = 255


def _targets3(targets):
    return [(t[0], t[1], t[2] if len(t) > 2 else torch.ones(len(t[0]), device=t[0].device)) for t in targets]


def assign_image(anchors, gt, lab, box_pred, cls_logits, coder: BoxCoder, assigner):
    """Per-anchor classification labels (1 pos, 0 neg, −1 ignore), the GT each positive
    classifies, and the GT each regression positive regresses to (−1: none)."""
    if isinstance(assigner, MutualGuidanceAssigner):
        with torch.no_grad():
            pred = decode_boxes_torch(anchors, box_pred.detach(), coder.weights, coder.clip)
            res = assigner.assign(anchors, gt, lab, pred, torch.sigmoid(cls_logits.detach()))
        return res.cls_labels, res.cls_gt_index, res.reg_gt_index
    res = assigner.assign(anchors, gt)
    reg = torch.where(res.labels == 1, res.gt_index, torch.full_like(res.gt_index, -1))
    return res.labels, res.gt_index, reg


def detection_loss_sums(branch, anchors, targets, num_classes, coder: BoxCoder, assigner, balanced_l1: bool = True):
    """Un-normalized (Σ focal, Σ box loss, number of positives) of one RetinaNet branch. Box
    weights (mixup) scale both terms of the objects they belong to."""
    cls = flatten_levels(branch.cls_logits, num_classes)       # (N, A, K)
    box = flatten_levels(branch.box_deltas, 4)                  # (N, A, 4)
    total_cls, total_box, npos = cls.sum() * 0.0, box.sum() * 0.0, 0
    reg_loss = balanced_l1_loss if balanced_l1 else smooth_l1_loss
    for i, (gt, lab, wt) in enumerate(_targets3(targets)):
        labels, cls_gt, reg_gt = assign_image(anchors, gt, lab, box[i], cls[i], coder, assigner)
        valid = labels >= 0
        tgt = torch.zeros_like(cls[i])
        weight = torch.ones(cls.shape[1], device=cls.device)
        pos = labels == 1
        if pos.any():
            tgt[pos, lab[cls_gt[pos]]] = 1.0
            weight[pos] = wt[cls_gt[pos]]
        reg = reg_gt >= 0
        if reg.any():
            deltas = encode_boxes_torch(anchors[reg], gt[reg_gt[reg]], coder.weights).to(box)
            total_box = total_box + (reg_loss(box[i][reg], deltas).sum(1) * wt[reg_gt[reg]]).sum()
        total_cls = total_cls + (sigmoid_focal_loss(cls[i][valid], tgt[valid]).sum(1) * weight[valid]).sum()
        npos += int(pos.sum())
    return total_cls, total_box, npos


def detection_loss(branch, anchors, targets, num_classes, coder: BoxCoder, assigner, balanced_l1: bool = True):
    """(focal, box) of one RetinaNet branch normalized by its positive count (one process)."""
    c, b, n = detection_loss_sums(branch, anchors, targets, num_classes, coder, assigner, balanced_l1)
    return c / max(1, n), b / max(1, n)


def multibox_loss_sums(branch, anchors, targets, num_classes, coder: BoxCoder, assigner, neg_pos_ratio: int = 3):
    """SSD: softmax CE (background = class 0) over the positives and the hardest 3× as many
    negatives per image + smooth L1 (β 1) on positives; un-normalized, with the positive count."""
    cls = flatten_levels(branch.cls_logits, num_classes + 1)   # (N, A, K+1)
    box = flatten_levels(branch.box_deltas, 4)
    total_cls, total_box, npos = cls.sum() * 0.0, box.sum() * 0.0, 0
    for i, (gt, lab, wt) in enumerate(_targets3(targets)):
        res = assigner.assign(anchors, gt)
        target = torch.zeros(cls.shape[1], dtype=torch.long, device=cls.device)
        pos = res.labels == 1
        target[pos] = lab[res.gt_index[pos]] + 1
        ce = F.cross_entropy(cls[i], target, reduction="none")
        n_pos = int(pos.sum())
        neg = res.labels == 0
        k = min(int(neg.sum()), max(1, neg_pos_ratio * n_pos))
        hard = torch.zeros_like(neg)
        if k:
            cand = torch.where(neg, ce.detach(), torch.full_like(ce, -1.0))
            hard[cand.topk(k).indices] = True
        w = torch.ones_like(ce)
        if n_pos:
            w[pos] = wt[res.gt_index[pos]]
            deltas = encode_boxes_torch(anchors[pos], gt[res.gt_index[pos]], coder.weights).to(box)
            total_box = total_box + (smooth_l1_loss(box[i][pos], deltas, beta=1.0).sum(1) * w[pos]).sum()
        total_cls = total_cls + (ce * w)[pos | hard].sum()
        npos += n_pos
    return total_cls, total_box, npos


def guidance_loss(out, targets, input_hw, margin: float):
    """GAFF L_intra (Dice vs ellipse masks) + L_inter (CE vs margin labels) on every fused level."""
    li, le = 0.0, 0.0
    keys = sorted({k.rsplit(".", 1)[0] for k in out.attention if k.endswith(".intra_v")}) or [""]
    for key in keys:
        pre = f"{key}." if key else ""
        if pre + "intra_v" not in out.attention:
            continue
        m_v, m_t = out.attention[pre + "intra_v"], out.attention[pre + "intra_t"]
        gt = object_masks(targets, m_v, input_hw, ellipse=True)
        li = li + dice_loss(m_v, gt) + dice_loss(m_t, gt)
        if pre + "inter_logits" in out.attention:
            labels = gaff_inter_labels(m_v.detach(), m_t.detach(), gt, margin)
            if (labels != IGNORE).any():
                le = le + F.cross_entropy(out.attention[pre + "inter_logits"], labels, ignore_index=IGNORE)
    return li, le


def object_masks(targets, like: torch.Tensor, input_hw, ellipse: bool) -> torch.Tensor:
    """(N, 1, h, w) float object masks at ``like``'s resolution from the boxes (ellipses for
    GAFF, filled boxes otherwise)."""
    n, _, h, w = like.shape
    H, W = input_hw
    s = torch.tensor([w / W, h / H] * 2, dtype=torch.float64, device=like.device)
    draw = ellipse_mask_torch if ellipse else box_mask_torch
    return torch.stack([draw(t[0].to(like.device) * s, (w, h)) for t in targets]).float()[:, None]


def cfr_mask_loss(out, targets, input_hw) -> torch.Tensor:
    """CFR: Σ over loops and modalities of Dice(σ(mask logits of the refined feature), object mask)."""
    keys = sorted(k for k in out.attention if "mask_logits_" in k)
    if not keys:
        return None
    gt = object_masks(targets, out.attention[keys[0]], input_hw, ellipse=False)
    return sum(dice_loss(torch.sigmoid(out.attention[k]), gt) for k in keys)


def seg_aux_loss(out, targets, input_hw) -> torch.Tensor | None:
    """CFL paper's segmentation auxiliary loss: CE of the 1×1 head against box-filled class maps
    (0 background, k+1 class k)."""
    logits = out.aux.get("seg_logits")
    if logits is None:
        return None
    return cross_entropy_ignore(logits, seg_aux_target(targets, logits, input_hw))


def seg_aux_target(targets, logits, input_hw) -> torch.Tensor:
    n, _, h, w = logits.shape
    H, W = input_hw
    s = torch.tensor([w / W, h / H] * 2, dtype=torch.float64, device=logits.device)
    return torch.stack([box_mask_torch(t[0].to(logits.device) * s, (w, h), t[1].to(logits.device) + 1)
                        for t in targets])


class Objective:
    """All task and module losses of one model; ``reduce_sum`` sums a count over processes."""

    def __init__(self, model, mcfg, assigner: str = "iou", mg_sigma: float = 2.0, balanced_l1: bool = True,
                 guidance_weight: float = 1.0, cfr_weight: float = 1.0, seg_aux_weight: float = 1.0,
                 reduce_sum: Callable[[int], int] = lambda n: n, world_size: int = 1):
        self.model, self.mcfg = model, mcfg
        self.num_classes, self.task, self.head_type = mcfg.num_classes, mcfg.task, mcfg.head.type
        self.coder = BoxCoder(tuple(mcfg.head.box_coder_weights))
        self.assigner = MutualGuidanceAssigner(mg_sigma) if assigner == "mutual_guidance" else IoUAssigner()
        if assigner == "mutual_guidance" and mcfg.head.type == "ssd":
            raise ValueError("Mutual Guidance is implemented for sigmoid (RetinaNet) heads; use assigner: iou with SSD")
        self.iou_assigner = IoUAssigner()
        self.balanced_l1 = balanced_l1
        self.weights = {"guidance": guidance_weight, "cfr": cfr_weight, "seg_aux": seg_aux_weight}
        self.reduce_sum, self.world = reduce_sum, world_size
        self._anchors: dict = {}

    def anchors(self, branch) -> torch.Tensor:
        sizes = tuple(tuple(x.shape[-2:]) for x in branch.cls_logits)
        if sizes not in self._anchors:
            a = torch.from_numpy(grid_anchors(self.model.anchor_levels(), list(sizes)))
            self._anchors[sizes] = a.to(branch.cls_logits[0].device)
        return self._anchors[sizes]

    def task_losses(self, out, targets, semantic=None, branches=None) -> dict[str, torch.Tensor]:
        parts = {}
        names = branches if branches is not None else list(out.branches)
        if self.task == "segmentation":
            for name in names:
                parts[f"{name}_seg"] = cross_entropy_ignore(out.branches[name].mask_logits, semantic, SEG_IGNORE)
            return parts
        for name in names:
            br = out.branches[name]
            a = self.anchors(br)
            if self.head_type == "ssd":
                c, b, n = multibox_loss_sums(br, a, targets, self.num_classes, self.coder, self.iou_assigner)
            else:
                c, b, n = detection_loss_sums(br, a, targets, self.num_classes, self.coder, self.assigner,
                                              self.balanced_l1)
            norm = max(1, self.reduce_sum(n) if self.world > 1 else n) / self.world
            parts[f"{name}_cls"], parts[f"{name}_box"] = c / norm, b / norm
        return parts

    def module_losses(self, out, targets, input_hw) -> dict[str, torch.Tensor]:
        parts = {}
        fc = self.mcfg.fusion
        if fc.module == "gaff" and fc.scheme == "halfway" and (fc.gaff.intra or fc.gaff.inter):
            li, le = guidance_loss(out, targets, input_hw, fc.gaff.margin)
            # the intra masks are predicted and supervised whenever GAFF has them (inter-only included:
            # its labels come from them); they are applied to the features only when intra is on
            if torch.is_tensor(li):
                parts["intra"] = self.weights["guidance"] * li
            if fc.gaff.inter and torch.is_tensor(le):
                parts["inter"] = self.weights["guidance"] * le
        if fc.module == "cfr":
            lc = cfr_mask_loss(out, targets, input_hw)
            if lc is not None:
                parts["cfr_masks"] = self.weights["cfr"] * lc
        la = seg_aux_loss(out, targets, input_hw)
        if la is not None:
            parts["seg_aux"] = self.weights["seg_aux"] * la
        return parts
