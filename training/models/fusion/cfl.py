"""CFL: Cross-modal Feature Learning (Liu et al. 2021, §III-B, eqs. 2-7; METHODS.md §4).

Per modality m, input x^m (N, C, H, W) split into the first αC and the last (1-α)C channels:
    S^m = W · x^m[:αC]                    1x1 conv αC -> C, weights SHARED by both modalities
    R^m = P^m * z^m + V^m · x^m[αC:]      group conv (G groups, 3x3) + point-wise 1x1, both
                                          modality-specific, (1-α)C -> C, summed
    s = GAP(S^m), r = GAP(R^m);  β_c = e^{s_c} / (e^{s_c} + e^{r_c}),  γ = 1 - β
    o^m = β ⊙ S^m + γ ⊙ R^m               (parameter-free aggregation)
Defaults α = 0.5, G = 2 (§IV-A). The paper inserts CFL after conv1..conv5 of VGG-16; on our
SSD-style VGG-16 the fifth stage ends with fc6/fc7, so the fifth CFL (and MAF, and the
cross-modal L_F) sit after fc7, not conv5_3 (config/models/cfl_vgg16_retinanet.yaml says why).
α = 0 or 1 (the ablations of Table II) drop the specific or shared part.
"""
from __future__ import annotations

import torch
from torch import nn

ALPHA, GROUPS = 0.5, 2


class CFL(nn.Module):
    two_stream_output = True

    def __init__(self, channels: int, alpha: float = ALPHA, groups: int = GROUPS, group_kernel: int = 3):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"CFL alpha must be in [0, 1], got {alpha}")
        self.c_shared = int(round(alpha * channels))
        c_spec = channels - self.c_shared
        if c_spec and c_spec % groups:
            raise ValueError(f"CFL: (1-α)C = {c_spec} channels cannot be split into G = {groups} groups")
        self.out_channels, self.groups = channels, groups
        self.shared = nn.Conv2d(self.c_shared, channels, 1) if self.c_shared else None
        if c_spec:
            p = group_kernel // 2
            self.group = nn.ModuleDict({m: nn.Conv2d(c_spec, channels, group_kernel, padding=p, groups=groups)
                                        for m in ("v", "t")})
            self.point = nn.ModuleDict({m: nn.Conv2d(c_spec, channels, 1) for m in ("v", "t")})
        else:
            self.group = self.point = None

    def branch(self, x: torch.Tensor, m: str) -> tuple[torch.Tensor, dict]:
        s_feat = self.shared(x[:, :self.c_shared]) if self.shared is not None else None
        r_feat = None
        if self.group is not None:
            z = x[:, self.c_shared:]
            r_feat = self.group[m](z) + self.point[m](z)
        if s_feat is None:
            return r_feat, {}
        if r_feat is None:
            return s_feat, {}
        s, r = s_feat.mean((2, 3), keepdim=True), r_feat.mean((2, 3), keepdim=True)   # (N, C, 1, 1)
        beta = torch.softmax(torch.stack([s, r]), 0)[0]                                 # e^s / (e^s + e^r)
        return beta * s_feat + (1 - beta) * r_feat, {"beta": beta}

    def forward(self, f_v: torch.Tensor, f_t: torch.Tensor):
        o_v, ev = self.branch(f_v, "v")
        o_t, et = self.branch(f_t, "t")
        extras = {f"{k}_v": v for k, v in ev.items()} | {f"{k}_t": v for k, v in et.items()}
        return (o_v, o_t), extras
