"""GAFF: Guided Attentive Feature Fusion (thesis §4.4, eqs. 4.10-4.17; METHODS.md §4).

Shapes: f_v, f_t (N, C, H, W); masks (N, 1, H, W).

    m_intra^x = σ(F_intra^x(f^x))                       F_intra^x: 3x3 conv C -> 1
    (m_inter^t, m_inter^v) = softmax_2(F_inter([f^t, f^v]))   F_inter: 3x3 conv 2C -> 2
    f_hybrid^x = f^x ⊗ (1 + m_intra^x) ⊗ (1 + m_inter^x)
    f_fused = (f_hybrid^t + f_hybrid^v) / 2

Three 3x3 convs give 2(9C + 1) + (18C·2 + 2) = 54C + 4 parameters: 13,828 at C = 256,
exactly the ResNet-18 difference of thesis Table 4.12 (23,751,725 -> 23,765,553), and 27,652
at C = 512, the VGG-16 difference (31,403,053 -> 31,430,705). That fixes the kernel size.

Inter-only ablation (``use_intra=False``): as in the thesis, the intra-modality masks are still
predicted (and trained with L_intra) because the inter-modality labels (eq. 4.14) are built from
them; they are only not multiplied into the features. Without them the inter mask had no labels
and trained with no guidance at all.

Residual form (1 + m): applying the masks directly (f ⊗ m) zeroes features where a mask is
wrong early in training; the residual form was 1 point of miss rate better (Table 4.7).
"""
from __future__ import annotations

import torch
from torch import nn

INTER_MARGIN = 0.1  # Table 4.6: margins 0.05 / 0.1 / 0.2 -> 6.92 / 6.48 / 7.47 % MR
THERMAL, VISIBLE, IGNORE = 0, 1, -1  # inter-mask channel order and label values


class GAFF(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3, use_intra: bool = True, use_inter: bool = True,
                 residual: bool = True):
        super().__init__()
        p = kernel_size // 2
        self.out_channels = channels
        self.use_intra, self.use_inter, self.residual = use_intra, use_inter, residual
        if use_intra or use_inter:   # the inter labels need the intra masks even when they are not applied
            self.intra_v = nn.Conv2d(channels, 1, kernel_size, padding=p)
            self.intra_t = nn.Conv2d(channels, 1, kernel_size, padding=p)
        if use_inter:
            self.inter = nn.Conv2d(2 * channels, 2, kernel_size, padding=p)

    def forward(self, f_v: torch.Tensor, f_t: torch.Tensor):
        extras = {}
        g_v, g_t = 1.0, 1.0
        if self.use_intra or self.use_inter:
            m_v, m_t = torch.sigmoid(self.intra_v(f_v)), torch.sigmoid(self.intra_t(f_t))
            extras.update(intra_v=m_v, intra_t=m_t)
            if self.use_intra:
                g_v, g_t = (1 + m_v, 1 + m_t) if self.residual else (m_v, m_t)
        if self.use_inter:
            logits = self.inter(torch.cat([f_t, f_v], 1))            # (N, 2, H, W): [thermal, visible]
            m = torch.softmax(logits, 1)
            m_t, m_v = m[:, THERMAL:THERMAL + 1], m[:, VISIBLE:VISIBLE + 1]
            extras.update(inter_logits=logits, inter_t=m_t, inter_v=m_v)
            g_v = g_v * ((1 + m_v) if self.residual else m_v)
            g_t = g_t * ((1 + m_t) if self.residual else m_t)
        fused = (f_t * g_t + f_v * g_v) / 2
        return fused, extras

    @staticmethod
    def combined_mask(extras: dict) -> torch.Tensor:
        """MD attention-transfer target m_T = m_intra^v m_inter^v + m_intra^t m_inter^t (METHODS.md §5)."""
        return extras["intra_v"] * extras["inter_v"] + extras["intra_t"] * extras["inter_t"]


@torch.no_grad()
def gaff_inter_labels(m_intra_v: torch.Tensor, m_intra_t: torch.Tensor, m_gt: torch.Tensor,
                      margin: float = INTER_MARGIN) -> torch.Tensor:
    """Modality-selection labels for the inter-modality mask (eq. 4.14).

    e^x = |m_intra^x - m_gt|; label THERMAL (0) where e^v - e^t > margin, VISIBLE (1) where
    e^t - e^v > margin, IGNORE (-1) otherwise. Inputs (N, 1, H, W); returns (N, H, W) long.
    Early in training both masks are ~0, so almost everything is ignored: no cold start.
    """
    e_v = (m_intra_v - m_gt).abs()
    e_t = (m_intra_t - m_gt).abs()
    lab = torch.full_like(e_v, IGNORE, dtype=torch.long)
    lab[(e_v - e_t) > margin] = THERMAL
    lab[(e_t - e_v) > margin] = VISIBLE
    return lab[:, 0]
