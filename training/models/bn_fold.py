"""Fold BatchNorm into the preceding convolution for inference (thesis Table 3.2).

    w' = w · γ / sqrt(σ² + ε),   b' = (b − μ) · γ / sqrt(σ² + ε) + β
A BatchNorm is folded when it is registered right after a Conv2d in the same parent
(nn.Sequential, ResNet blocks: conv1/bn1, conv2/bn2, downsample.0/.1) and applied to its
output; the BN becomes Identity. Other BNs (FSSD's BN after a concat) stay. Tested: same
outputs before and after on every preset.
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
