"""PS-Fuse: Progressive Spectral Fusion (thesis §4.2, eqs. 4.6-4.8; METHODS.md §4).

PS-Fuse replaces a backbone stage (VGG-16 conv4_1..conv4_3) with three streams. Level i:
    f_t^i = F1(concat(f_t^{i-1}, f_f^{i-1}))                    asymmetric (conv3x3+BN+ReLU)
    f_v^i = F2(concat(f_v^{i-1}, f_f^{i-1}))
    f_f^i = ReLU(avg(F3(concat(f_t^{i-1}, f_f^{i-1})), F4(concat(f_v^{i-1}, f_f^{i-1}))))
                                                                 symmetric (F3, F4: conv3x3+BN)
The fused share grows with depth. Channel schedules (C = the replaced stage's width, 512):
    setting A (mono halved per level):   mono C/2, C/4, C/8;  fused C/4, C/2, C
    setting B (fused doubled per level): mono C/2, C/2, C/2;  fused C/4, C/2, C
The thesis states the rule ("monospectral features halved" / "fused features doubled after
a convolution level") but not the widths or the level-0 fused feature. Our reading: start
from f_f^0 = (f_t^0 + f_v^0) / 2 (the baseline average fusion of the incoming conv3
features) and output f_f^L (C channels) so the next stage is unchanged. With it setting A
is cheaper than the two conv4 stages it replaces and B is dearer. The last level computes only
the fused feature: its mono convolutions F1, F2 would produce features nothing uses (0.44 M
parameters in A, 2.36 M in B at C = 512), so they are not built (the thesis has both
cheaper, Table 4.4; its absolute counts come from a smaller VGG than torchvision's).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(cin, cout, relu=True):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def schedule(setting: str, channels: int, levels: int = 3) -> tuple[list[int], list[int]]:
    """(mono widths, fused widths) per level for setting 'A' or 'B'."""
    c = channels
    if setting == "A":
        return [max(4, c // 2 ** (i + 1)) for i in range(levels)], [max(4, c // 2 ** (levels - 1 - i)) for i in range(levels)]
    if setting == "B":
        return [max(4, c // 2)] * levels, [max(4, c // 2 ** (levels - 1 - i)) for i in range(levels)]
    raise ValueError(f"PS-Fuse setting must be 'A' or 'B', got {setting!r}")


class PSFuse(nn.Module):
    replaces_stage = True

    def __init__(self, in_channels: int, out_channels: int = 512, setting: str = "A", levels: int = 3):
        super().__init__()
        mono, fused = schedule(setting, out_channels, levels)
        self.setting, self.out_channels, self.mono_channels = setting, out_channels, mono
        self.f1, self.f2, self.f3, self.f4 = (nn.ModuleList() for _ in range(4))
        cm, cf = in_channels, in_channels
        for i, (m, f) in enumerate(zip(mono, fused)):
            if i < levels - 1:        # the last level's mono features would feed nothing: no F1/F2 there
                self.f1.append(_conv(cm + cf, m))
                self.f2.append(_conv(cm + cf, m))
            self.f3.append(_conv(cm + cf, f, relu=False))
            self.f4.append(_conv(cm + cf, f, relu=False))
            cm, cf = m, f

    def forward(self, f_v: torch.Tensor, f_t: torch.Tensor):
        """-> (f_f^L, {"mono_t": f_t^{L-1}, "mono_v": f_v^{L-1}}: the mono inputs of the last level)."""
        f_f = (f_t + f_v) / 2
        for i, (f3, f4) in enumerate(zip(self.f3, self.f4)):
            tf, vf = torch.cat([f_t, f_f], 1), torch.cat([f_v, f_f], 1)
            if i < len(self.f1):
                f_t, f_v = self.f1[i](tf), self.f2[i](vf)
            f_f = torch.relu((f3(tf) + f4(vf)) / 2)
        return f_f, {"mono_t": f_t, "mono_v": f_v}
