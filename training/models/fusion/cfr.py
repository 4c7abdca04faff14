"""CFR: Cyclic Fuse-and-Refine (thesis §4.1, eqs. 4.1-4.5; METHODS.md §4).

For i = 1..I, with f^0 the incoming mono features (N, C, H, W):
    f_f^i = BN(conv3x3(concat(f_t^{i-1}, f_v^{i-1})))
    f_t^i = ReLU(f_t^{i-1} + f_f^i),   f_v^i = ReLU(f_v^{i-1} + f_f^i)
Each refined mono feature gets a 1x1 mask head (Dice-supervised in training).
    f_final = (Σ_i f_t^i + Σ_i f_v^i) / (2I)
The originals f^0 are excluded from the average: they are the inconsistent features the
loop exists to refine. "Folded" (shared F across loops, the thesis' Figure 4.1 left) is the
default; I = 3 was best (Table 4.3).

Folded, the 3×3 convolution (and the mask heads) are shared across loops but each loop keeps
its own BatchNorm: the loops see inputs of different scale (f^{i} grows with i), so one shared
BN's running statistics would be a blend of all loops and fit none of them at inference. On
the synthetic benchmark a shared BN trained to the baseline's loss but scored AP50 0.0 in
eval mode (bench/RESULTS.md, CFR diagnosis). Per-loop BN adds 2C parameters per loop, below
the precision of the thesis' 16.53M for every I (Table 4.3), so it is consistent with it.
"""
from __future__ import annotations

import torch
from torch import nn

LOOPS = 3


class CFR(nn.Module):
    def __init__(self, channels: int, loops: int = LOOPS, shared: bool = True, mask_heads: bool = True):
        super().__init__()
        if loops < 1:
            raise ValueError(f"CFR needs at least one loop, got {loops}")
        self.loops, self.shared, self.out_channels = loops, shared, channels
        n = 1 if shared else loops
        self.fuse = nn.ModuleList(nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False) for _ in range(n))
        self.norm = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(loops))
        self.mask_t = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in range(n)) if mask_heads else None
        self.mask_v = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in range(n)) if mask_heads else None

    def forward(self, f_v: torch.Tensor, f_t: torch.Tensor):
        extras = {}
        acc = 0
        for i in range(self.loops):
            j = 0 if self.shared else i
            f_f = self.norm[i](self.fuse[j](torch.cat([f_t, f_v], 1)))
            f_t = torch.relu(f_t + f_f)
            f_v = torch.relu(f_v + f_f)
            acc = acc + f_t + f_v
            if self.mask_t is not None:
                extras[f"mask_logits_t{i + 1}"] = self.mask_t[j](f_t)
                extras[f"mask_logits_v{i + 1}"] = self.mask_v[j](f_v)
        extras["refined_t"], extras["refined_v"] = f_t, f_v
        return acc / (2 * self.loops), extras
