"""Detection and segmentation heads.

Detection heads return two lists over levels: class logits (N, A*K, H, W) and box deltas
(N, A*4, H, W). :func:`flatten_levels` turns them into (N, sum H*W*A, K) in the anchor order
of ``ms_perception.core.anchors`` (H, W, A).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from ms_perception_training.models.layers import AdaptiveAvgPoolMatmul, conv_bn_relu
from torch import nn

PRIOR_PROB = 0.01  # RetinaNet (Lin et al. 2017 §4.1): classifier bias so that σ(b) = π at init


class RetinaHead(nn.Module):
    """RetinaNet class/box subnets shared across levels: ``num_convs`` 3x3 conv+ReLU towers,
    then 3x3 convs to A*K and A*4. Classifier bias -log((1-π)/π) (π = 0.01) so focal loss
    does not start with a flood of background loss."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, channels: int = 256,
                 num_convs: int = 4, prior_prob: float = PRIOR_PROB):
        super().__init__()

        def tower():
            layers, c = [], in_channels
            for _ in range(num_convs):
                layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
                c = channels
            return nn.Sequential(*layers), c

        self.cls_tower, c = tower()
        self.box_tower, _ = tower()
        self.cls_logits = nn.Conv2d(c, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, num_anchors * 4, 3, padding=1)
        self.num_anchors, self.num_classes = num_anchors, num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]):
        return ([self.cls_logits(self.cls_tower(f)) for f in feats],
                [self.bbox_pred(self.box_tower(f)) for f in feats])


class SSDHead(nn.Module):
    """SSD: one 3x3 conv per level for classes (K+1 with background at index 0, softmax)
    and one for boxes."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int):
        super().__init__()
        k = num_classes + 1
        self.cls = nn.ModuleList(nn.Conv2d(c, a * k, 3, padding=1) for c, a in zip(in_channels, num_anchors))
        self.box = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, num_anchors))
        self.num_classes = num_classes

    def forward(self, feats):
        return [c(f) for c, f in zip(self.cls, feats)], [b(f) for b, f in zip(self.box, feats)]


def flatten_levels(per_level: list[torch.Tensor], k: int) -> torch.Tensor:
    """[(N, A*K, H, W)] -> (N, sum H*W*A, K)."""
    out = []
    for x in per_level:
        n, _, h, w = x.shape
        # (N, A*K, H, W) -> (N, A, K, H, W) -> (N, H, W, A, K) -> (N, H*W*A, K)
        out.append(x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k))
    return torch.cat(out, 1)


def class_probabilities(per_level: list[torch.Tensor], k: int, activation: str) -> torch.Tensor:
    """Per-anchor class probabilities (N, A, K) as the exported model computes them: a sigmoid
    per class (RetinaNet heads), or a softmax over the K + 1 classes with the background
    (class 0) dropped (SSD heads)."""
    if activation == "sigmoid":
        return torch.sigmoid(flatten_levels(per_level, k))
    return torch.softmax(flatten_levels(per_level, k + 1), -1)[..., 1:]


def level_class_probabilities(x: torch.Tensor, k: int, activation: str) -> torch.Tensor:
    """One level's (N, A*K[+1], H, W) logits -> (N, A*K, H, W) class probabilities (as above)."""
    if activation == "sigmoid":
        return torch.sigmoid(x)
    n, _, h, w = x.shape
    return torch.softmax(x.view(n, -1, k + 1, h, w), 2)[:, :, 1:].reshape(n, -1, h, w)


def anchors_per_level(per_level: list[torch.Tensor], k: int, activation: str) -> list[int]:
    kk = k if activation == "sigmoid" else k + 1
    return [x.shape[1] // kk * x.shape[2] * x.shape[3] for x in per_level]


class PSPHead(nn.Module):
    """PSPNet pyramid pooling (Zhao et al. 2017): bins (1, 2, 3, 6), each avg-pool -> 1x1
    conv (C/4) + BN + ReLU -> bilinear up; concat with the input -> 3x3 conv+BN+ReLU ->
    dropout 0.1 -> 1x1 to classes. Logits are returned at the feature resolution."""

    def __init__(self, in_channels: int, num_classes: int, bins: tuple[int, ...] = (1, 2, 3, 6), channels: int = 512):
        super().__init__()
        r = max(4, in_channels // len(bins))
        self.stages = nn.ModuleList(nn.Sequential(AdaptiveAvgPoolMatmul(b), conv_bn_relu(in_channels, r, 1)) for b in bins)
        self.bottleneck = conv_bn_relu(in_channels + r * len(bins), channels, 3)
        self.drop = nn.Dropout2d(0.1)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        pyr = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.cls(self.drop(self.bottleneck(torch.cat(pyr, 1))))


class Conv1x1SegHead(nn.Module):
    """The active-learning paper's segmentation branch: "simply one layer of convolution
    whose number of output channels is equal to the number of classes" (§4)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        return self.cls(x)
