"""Small shared layers."""
from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _pool_matrix(n_in: int, n_out: int, device=None, dtype=None) -> torch.Tensor:
    """(n_out, n_in) averaging matrix with PyTorch's adaptive pooling bins: [floor(i*n/o), ceil((i+1)*n/o))."""
    m = torch.zeros(n_out, n_in, device=device, dtype=dtype)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


class AdaptiveAvgPoolMatmul(nn.Module):
    """Exactly ``F.adaptive_avg_pool2d(x, size)`` as P_h @ x @ P_w^T.

    ONNX export of adaptive pooling fails when the input is not a multiple of the output
    size (PSPNet bins 3 and 6 on a 20x16 map); two MatMuls export for any size and are
    identical in value (tested).
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph = _pool_matrix(int(h), self.size, x.device, x.dtype)
        pw = _pool_matrix(int(w), self.size, x.device, x.dtype)
        return ph @ x @ pw.t()
