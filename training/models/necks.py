"""Necks: FPN, PAFPN, Context Enhancement Module, SSD extra layers, FSSD feature fusion.

All take a list of feature maps fine to coarse and return a list fine to coarse.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ms_perception_training.models.layers import conv_bn_relu
from torch import nn


class CEM(nn.Module):
    """Context Enhancement Module (ThunderNet; thesis Table 3.2 "best practices").

    Three 1x1 convs merge local and global context at the resolution of the finer input:
        CEM = conv1x1(C_a) + up(conv1x1(C_b)) + broadcast(conv1x1(GAP(C_b)))
    with C_a, C_b the two coarsest backbone levels. The FPN adds it to its top-down
    feature at C_a's level before the output conv.
    """

    def __init__(self, c_fine: int, c_coarse: int, out_channels: int):
        super().__init__()
        self.fine = nn.Conv2d(c_fine, out_channels, 1)
        self.coarse = nn.Conv2d(c_coarse, out_channels, 1)
        self.glob = nn.Conv2d(c_coarse, out_channels, 1)

    def forward(self, c_fine, c_coarse):
        size = c_fine.shape[-2:]
        up = F.interpolate(self.coarse(c_coarse), size=size, mode="nearest")
        g = self.glob(c_coarse.mean((2, 3), keepdim=True))
        return self.fine(c_fine) + up + g


class FPN(nn.Module):
    """Feature Pyramid Network (RetinaNet variant).

    Laterals 1x1 -> top-down nearest upsampling + add -> 3x3 output convs; ``extra_levels``
    stride-2 3x3 convs on the coarsest *input* (RetinaNet P6 from C5, P7 from ReLU(P6)).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_levels: int = 2, cem: bool = False):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList()
        cin = in_channels[-1]
        for _ in range(extra_levels):
            self.extra.append(nn.Conv2d(cin, out_channels, 3, 2, 1))
            cin = out_channels
        self.cem = CEM(in_channels[-2], in_channels[-1], out_channels) if cem and len(in_channels) >= 2 else None
        if cem and self.cem is None:
            raise ValueError("CEM needs at least two input levels")
        self.out_channels = out_channels
        self.num_levels = len(in_channels) + extra_levels

    def top_down(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        if self.cem is not None:
            lat[-2] = lat[-2] + self.cem(feats[-2], feats[-1])
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [o(x) for o, x in zip(self.output, lat)]

    def extras(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs, x = [], feats[-1]
        for i, conv in enumerate(self.extra):
            x = conv(x if i == 0 else F.relu(x))
            outs.append(x)
        return outs

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.top_down(feats) + self.extras(feats)


class PAFPN(FPN):
    """PANet: FPN plus a bottom-up path, N_i = conv3x3(N_{i-1} ↓2 (stride-2 conv) + P_i)."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_levels: int = 2, cem: bool = False):
        super().__init__(in_channels, out_channels, extra_levels, cem)
        n = len(in_channels) - 1
        self.down = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, 2, 1) for _ in range(n))
        self.pa_out = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(n))

    def forward(self, feats):
        p = self.top_down(feats)
        n = [p[0]]
        for i in range(1, len(p)):
            d = self.down[i - 1](n[-1])
            if d.shape[-2:] != p[i].shape[-2:]:
                d = d[..., :p[i].shape[-2], :p[i].shape[-1]]
            n.append(self.pa_out[i - 1](F.relu(d + p[i])))
        return n + self.extras(feats)


class L2Norm(nn.Module):
    """SSD's per-location L2 normalization of conv4_3 with a learned scale (init 20)."""

    def __init__(self, channels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x):
        return x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) * self.weight.view(1, -1, 1, 1)


class SSDExtras(nn.Module):
    """SSD extra layers after fc7: (1x1 c/2, 3x3 s2 c) blocks, each adding a coarser source.

    Sources: [L2Norm(conv4_3), fc7, extra_1, ..., extra_n].
    """

    def __init__(self, in_channels: list[int], channels: list[int] = (512, 256, 256, 256), width: float = 1.0):
        super().__init__()
        from ms_perception_training.models.backbones import scaled
        self.norm = L2Norm(in_channels[0])
        self.blocks = nn.ModuleList()
        cin = in_channels[-1]
        for c in channels:
            c = scaled(c, width)
            self.blocks.append(nn.Sequential(nn.Conv2d(cin, c // 2, 1), nn.ReLU(inplace=True),
                                             nn.Conv2d(c // 2, c, 3, 2, 1), nn.ReLU(inplace=True)))
            cin = c
        self.out_channels_list = list(in_channels) + [scaled(c, width) for c in channels]

    def forward(self, feats):
        outs = [self.norm(feats[0])] + list(feats[1:])
        x = feats[-1]
        for b in self.blocks:
            x = b(x)
            outs.append(x)
        return outs


class FSSDFusion(nn.Module):
    """FSSD (Li & Zhou 2017): fuse conv4_3, fc7 and one more coarse map, then a new pyramid.

    Each input -> 1x1 conv to ``c`` -> bilinear resize to the finest size -> concat -> BN,
    then a pyramid: 3x3 s1 to ``pyramid[0]``, then 3x3 s2 convs (conv+BN+ReLU).
    """

    def __init__(self, in_channels: list[int], c: int = 256, pyramid: list[int] = (512, 512, 256, 256, 256, 256)):
        super().__init__()
        self.transform = nn.ModuleList(nn.Sequential(nn.Conv2d(ci, c, 1), nn.ReLU(inplace=True)) for ci in in_channels)
        self.bn = nn.BatchNorm2d(c * len(in_channels))
        self.pyramid = nn.ModuleList()
        cin = c * len(in_channels)
        for i, co in enumerate(pyramid):
            self.pyramid.append(conv_bn_relu(cin, co, 3, 1 if i == 0 else 2))
            cin = co
        self.out_channels_list = list(pyramid)

    def forward(self, feats):
        size = feats[0].shape[-2:]
        xs = [t(f) for t, f in zip(self.transform, feats)]
        xs = [xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]]
        x = self.bn(torch.cat(xs, 1))
        outs = []
        for p in self.pyramid:
            x = p(x)
            outs.append(x)
        return outs


class SSDNeck(nn.Module):
    """VGG sources -> SSD extras, optionally followed by FSSD fusion (feeds the FSSD pyramid
    with [conv4_3, fc7, extra_1]); output strides 8, 16, 32, 64, 128, 256."""

    def __init__(self, in_channels: list[int], fssd: bool = True, width: float = 1.0):
        super().__init__()
        from ms_perception_training.models.backbones import scaled
        self.extras = SSDExtras(in_channels, width=width) if not fssd else None
        if fssd:
            self.extra1 = nn.Sequential(nn.Conv2d(in_channels[-1], scaled(256, width), 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(scaled(256, width), scaled(512, width), 3, 2, 1), nn.ReLU(inplace=True))
            self.fssd = FSSDFusion(list(in_channels) + [scaled(512, width)], scaled(256, width),
                                   [scaled(c, width) for c in (512, 512, 256, 256, 256, 256)])
            self.out_channels_list = self.fssd.out_channels_list
        else:
            self.out_channels_list = self.extras.out_channels_list

    def forward(self, feats):
        if self.extras is not None:
            return self.extras(feats)
        return self.fssd(list(feats) + [self.extra1(feats[-1])])
