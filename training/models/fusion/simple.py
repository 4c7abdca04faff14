"""Baseline halfway fusion (METHODS.md §4 "Baselines"): add, average, or concat + 1x1."""
from __future__ import annotations

from torch import nn


class SimpleFusion(nn.Module):
    """f_fused = f_v + f_t | (f_v + f_t) / 2 | ReLU(conv1x1(concat(f_v, f_t))).

    concat follows halfway fusion of Liu et al. (2016): a 1x1 "network-in-network" layer
    brings 2C channels back to C so the rest of the backbone is unchanged.
    """

    MODES = ("add", "avg", "concat")

    def __init__(self, channels: int, mode: str = "add"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"fusion mode {mode!r} is not one of {self.MODES}")
        self.mode, self.out_channels = mode, channels
        self.reduce = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True)) if mode == "concat" else None

    def forward(self, f_v, f_t):
        if self.mode == "add":
            return f_v + f_t, {}
        if self.mode == "avg":
            return (f_v + f_t) / 2, {}
        import torch
        return self.reduce(torch.cat([f_v, f_t], 1)), {}
