"""Distillation and auxiliary losses (METHODS.md §3, §5, §6), each written from the paper's
equation; tests check them on hand-computed inputs (test/training/test_distill_losses.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ms_perception_training.objectives import cross_entropy_ignore, smooth_l1_loss  # noqa: F401 (re-exported)


def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Plain MSE (the MD semantic-transfer ablation, FitNets imitation)."""
    return F.mse_loss(student, teacher)


def f_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MD semantic transfer (§5.2): d = (f_S − f_T)²; e[h,w] = Σ_c d; w = softmax of e over all
    (h, w); L = Σ_hw w·e / C, averaged over the batch. (B, C, H, W) inputs."""
    b, c = student.shape[:2]
    e = (student - teacher).pow(2).sum(1).flatten(1)          # (B, HW)
    w = torch.softmax(e, dim=1)
    return ((w * e).sum(1) / c).mean()


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """g(y, φ(d)) = −Σ y log softmax(d) along ``dim``, averaged over the other positions."""
    return -(target_probs * F.log_softmax(logits, dim=dim)).sum(dim).mean()


def classification_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard: torch.Tensor,
                           zeta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Liu et al. eq. 16: ζ·g(y^h, φ(d^s)) + (1 − ζ)·g(φ(d^t / T), φ(d^s)); logits (N, K), hard (N,)
    class indices. The student is not softened (as written in eq. 16)."""
    soft = torch.softmax(teacher_logits.detach() / temperature, dim=1)
    return zeta * F.cross_entropy(student_logits, hard) + (1 - zeta) * soft_cross_entropy(student_logits, soft)


def conditional_regression_distill(t_s: torch.Tensor, t_t: torch.Tensor, y: torch.Tensor, epsilon: float = 0.5,
                                   delta: float = 0.0, beta: float = 1.0 / 9) -> torch.Tensor:
    """Liu et al. eq. 17: smoothL1(t_s, y) + ε·L_b, L_b = ‖t_s − y‖² where ‖t_s − y‖² + δ > ‖t_t − y‖²
    (the teacher bounds the student), else 0. (N, 4) regression targets of positive anchors; the
    smooth-L1 term is summed over coordinates and both are averaged over N. δ (the margin) is not
    given in the paper: 0 by default."""
    if t_s.numel() == 0:
        return t_s.sum() * 0.0
    ds = (t_s - y).pow(2).sum(1)
    dt = (t_t.detach() - y).pow(2).sum(1)
    lb = torch.where(ds + delta > dt, ds, torch.zeros_like(ds))
    sl1 = smooth_l1_loss(t_s, y, beta=beta).sum() / t_s.shape[0]
    return sl1 + epsilon * lb.mean()


def segmentation_distill(student_logits: torch.Tensor, gt: torch.Tensor, teacher_logits: torch.Tensor,
                         xi: float = 0.5, ignore_index: int = 255) -> torch.Tensor:
    """Liu et al. eq. 18: ξ·CE(q^s, q^gt) + (1 − ξ)·CE(q^s, q^t), each averaged over pixels;
    (B, K, H, W) logits, gt (B, H, W); the teacher term uses the teacher's class distribution."""
    soft = torch.softmax(teacher_logits.detach(), dim=1)
    return xi * cross_entropy_ignore(student_logits, gt, ignore_index) + (1 - xi) * soft_cross_entropy(
        student_logits, soft)


def feature_distill(adapted_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Liu et al. L_F = ‖A(E_s) − E_t‖², averaged over elements (A: the caller's 1×1 adapter)."""
    return F.mse_loss(adapted_student, teacher.detach())


# ---------------------------------------------------------------------------------- PDF-Distil

def disagreement_map(p_teacher: torch.Tensor, p_student: torch.Tensor, num_anchors: int,
                     metric: str = "l2") -> torch.Tensor:
    """PDF-Distil (§3.3): D[h,w] = Σ_M Σ_N F(C_t, C_s) over the M anchors and N classes of a
    location. Inputs are class probabilities (B, M·N, H, W) as the head outputs them (anchor-major
    channels). F: "l2" (squared difference, the best), "l1" (absolute) or "kl" (Σ p_t log(p_t/p_s)
    of each binary sigmoid prediction)."""
    pt, ps = p_teacher.detach(), p_student.detach()
    if metric == "l2":
        f = (pt - ps).pow(2)
    elif metric == "l1":
        f = (pt - ps).abs()
    elif metric == "kl":
        eps = 1e-6
        pt_c, ps_c = pt.clamp(eps, 1 - eps), ps.clamp(eps, 1 - eps)
        f = pt_c * (pt_c / ps_c).log() + (1 - pt_c) * ((1 - pt_c) / (1 - ps_c)).log()
    else:
        raise ValueError(f"disagreement metric must be l2, l1 or kl, got {metric!r}")
    b, mn, h, w = f.shape
    if mn % num_anchors:
        raise ValueError(f"{mn} channels are not {num_anchors} anchors x classes")
    return f.sum(1)                                                            # (B, H, W)


def pdf_weights(d: torch.Tensor, mode: str = "soft", top_fraction: float = 0.25) -> torch.Tensor:
    """M[h,w] = H·W·D[h,w] / Σ D (mean 1) per image ("soft", PDF-Distil); "hard": 1 on the top
    fraction of locations by D (the most different teacher-student predictions), 0 elsewhere,
    rescaled to mean 1; "similar": the same on the bottom fraction (the most similar
    predictions); "uniform": all ones (FitNets). Thesis Table 3.5: hard and similar at 25 % and
    50 % are its strategies 2-5.

    Normalization: per image and pyramid level (each level's map has mean 1), as eq. 3.4 is
    written. The authors' code normalizes over the whole batch and all levels at once; the two
    agree exactly for one image and one level, and otherwise differ only in how the total weight
    is shared between images and levels."""
    b, h, w = d.shape
    flat = d.flatten(1)
    if mode == "uniform":
        m = torch.ones_like(flat)
    elif mode == "soft":
        m = h * w * flat / flat.sum(1, keepdim=True).clamp(min=1e-12)
    elif mode in ("hard", "similar"):
        k = max(1, int(round(top_fraction * h * w)))
        idx = flat.topk(k, dim=1, largest=mode == "hard").indices
        m = torch.zeros_like(flat).scatter_(1, idx, 1.0) * (h * w / k)
    else:
        raise ValueError(f"weight mode must be soft, hard, similar or uniform, got {mode!r}")
    return m.view(b, h, w)


def pdf_distill_loss(adapted_student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_kd = Σ_hw (M[h,w] · Σ_c (X_t − X_s)²) / (H·W·C), averaged over the batch."""
    b, c, h, w = teacher.shape
    per_loc = (teacher.detach() - adapted_student).pow(2).sum(1)               # (B, H, W)
    return ((weights.detach() * per_loc).sum((1, 2)) / (h * w * c)).mean()
