"""Detection and guidance losses, each from its paper's formula with the paper's defaults."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
