"""MAF: Modality Attention-based Fusion of decisions (Liu et al. 2021, §III-D, eqs. 10-13).

    w = MLP(concat_m flatten(o^m)),  μ = softmax(w),  d_final = Σ_m μ_m d_m,  t_final = Σ_m μ_m t_m
o^m are the last CFL outputs of each branch (N, C, H, W). Flattening a full 640x512 conv5
map would give the MLP ~10^8 weights; the paper's two-stage detector flattened small maps,
so we first average-pool o^m to a fixed ``grid`` x ``grid`` (exact adaptive average pooling
written as two matrix products so it exports to ONNX for any input size).
"""
from __future__ import annotations

import torch
from ms_perception_training.models.layers import AdaptiveAvgPoolMatmul
from torch import nn


class MAF(nn.Module):
    def __init__(self, channels: int, modalities: int = 2, grid: int = 4, hidden: int = 256):
        super().__init__()
        self.pool = AdaptiveAvgPoolMatmul(grid)
        self.mlp = nn.Sequential(nn.Linear(modalities * channels * grid * grid, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, modalities))

    def weights(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(N, M) modality weights μ, rows sum to 1."""
        flat = torch.cat([self.pool(f).flatten(1) for f in feats], 1)
        return torch.softmax(self.mlp(flat), 1)

    @staticmethod
    def combine(mu: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Σ_m μ_m · x_m for per-modality outputs of any shape (N, ...)."""
        shape = (mu.shape[0],) + (1,) * (outputs[0].dim() - 1)
        return sum(mu[:, m].reshape(shape) * o for m, o in enumerate(outputs))
