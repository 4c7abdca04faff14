"""Exact inference-time folds: BatchNorm into the preceding convolution (thesis Table 3.2), and
the repeated gray thermal channels into the first convolution.

    w' = w · γ / sqrt(σ² + ε),   b' = (b − μ) · γ / sqrt(σ² + ε) + β
A BatchNorm is folded when it is registered right after a Conv2d in the same parent
(nn.Sequential, ResNet blocks: conv1/bn1, conv2/bn2, downsample.0/.1) and applied to its
output; the BN becomes Identity. Other BNs (FSSD's BN after a concat) stay. Tested: same
outputs before and after on every preset.

Thermal repeat: with ``thermal_channels: 3`` the normalized gray thermal image t is repeated
to three identical channels so that ImageNet RGB kernels apply (METHODS §1; the MD paper's
6-channel image-level input). Convolution is linear and the zero padding is the same in the
three channels, so  W_0 * t + W_1 * t + W_2 * t = (W_0 + W_1 + W_2) * t  everywhere, borders
included: the first conv can take t once with the three kernels summed. Same outputs (float
summation order aside), one thermal input channel instead of three.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold in place (model must be in eval mode); returns the number of folded BNs."""
    if model.training:
        raise RuntimeError("fold_batchnorm needs model.eval(): folding uses the running statistics")
    n = 0
    for parent in model.modules():
        children = list(parent.named_children())
        for (_, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.num_features == a.out_channels:
                fold_conv_bn(a, b)
                setattr(parent, name_b, nn.Identity()) if not isinstance(parent, nn.Sequential) else \
                    parent._modules.__setitem__(name_b, nn.Identity())
                n += 1
    return n


@torch.no_grad()
def fold_thermal_repeat(model: nn.Module) -> int:
    """Fold in place the thermal repeat of a ``MultispectralModel`` with ``thermal_channels == 3``:
    the first conv of each backbone that takes the thermal image gets the sum of its three thermal
    input kernels, and the model stops repeating. Returns the number of convs folded (0 when the
    model does not repeat, or sees no thermal image)."""
    from ms_perception_training.models.multispectral import OneStream
    if getattr(model, "thermal_channels", 1) != 3 or not model.uses_thermal:
        return 0
    enc = model.encoder
    if isinstance(enc, OneStream):   # thermal-only: channels 0..2; image-level: [RGB, t, t, t], channels 3..5
        targets = [(enc.backbone, 3 if enc.inputs == "image" else 0)]
    elif hasattr(enc, "backbone_t"):
        targets = [(enc.backbone_t, 0)]
    else:
        raise ValueError(f"fold_thermal_repeat: no rule for the {type(enc).__name__} encoder")
    for backbone, c0 in targets:
        conv = backbone.get_submodule(backbone.first_conv_name())
        if conv.in_channels != c0 + 3 or conv.groups != 1:
            raise ValueError(f"fold_thermal_repeat: expected a first conv with {c0 + 3} input channels, "
                             f"got {conv.in_channels} (groups {conv.groups})")
        w = conv.weight
        conv.weight = nn.Parameter(torch.cat([w[:, :c0], w[:, c0:c0 + 3].sum(1, keepdim=True)], 1))
        conv.in_channels = c0 + 1
    model.thermal_channels = 1
    return len(targets)
