"""Box coding and box-drawn masks in torch, on the tensors' own device (no host copies).

Mirrors of the runtime's numpy code, tested equal: ``ms_perception.core.anchors.BoxCoder``
(encode/decode) and ``data.transforms.ellipse_mask`` / ``box_mask`` (the GAFF, CFR and CFL
targets). The runtime keeps its numpy versions (it never imports torch).
"""
from __future__ import annotations

import torch


def encode_boxes_torch(anchors: torch.Tensor, boxes: torch.Tensor, weights) -> torch.Tensor:
    """(M, 4) anchors and matched (M, 4) xyxy boxes -> (M, 4) deltas (BoxCoder.encode)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    wx, wy, ww, wh = weights
    return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], -1)


def decode_boxes_torch(anchors: torch.Tensor, deltas: torch.Tensor, weights, clip: float) -> torch.Tensor:
    """(M, 4) anchors, (..., M, 4) deltas -> (..., M, 4) xyxy boxes (BoxCoder.decode)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    wx, wy, ww, wh = weights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    cx, cy = dx * aw + ax, dy * ah + ay
    w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def _centres(size, device):
    w, h = size
    return (torch.arange(w, device=device, dtype=torch.float64) + 0.5,
            torch.arange(h, device=device, dtype=torch.float64) + 0.5)


def ellipse_mask_torch(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) uint8: pixels whose centre lies in some box's inscribed ellipse (transforms.ellipse_mask)."""
    W, H = size
    b = boxes.detach().to(torch.float64).reshape(-1, 4)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if not len(b):
        return torch.zeros((H, W), dtype=torch.uint8, device=boxes.device)
    xs, ys = _centres(size, boxes.device)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    ax, ay = (b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2
    dx = ((xs[None] - cx[:, None]) / ax[:, None]) ** 2            # (n, W)
    dy = ((ys[None] - cy[:, None]) / ay[:, None]) ** 2            # (n, H)
    return (dy[:, :, None] + dx[:, None, :] <= 1.0).any(0).to(torch.uint8)


def box_mask_torch(boxes: torch.Tensor, size: tuple[int, int], labels: torch.Tensor | None = None) -> torch.Tensor:
    """(H, W) int64: each box filled with its label (1 without labels), later boxes on top;
    pixel (i, j) is inside ``[x0, x1) x [y0, y1)`` when its centre is (transforms.box_mask)."""
    W, H = size
    b = boxes.detach().to(torch.float64).reshape(-1, 4)
    out = torch.zeros((H, W), dtype=torch.int64, device=boxes.device)
    if not len(b):
        return out
    xs, ys = _centres(size, boxes.device)
    c0, r0 = torch.ceil(b[:, 0] - 0.5), torch.ceil(b[:, 1] - 0.5)
    c1, r1 = torch.ceil(b[:, 2] - 0.5), torch.ceil(b[:, 3] - 0.5)
    inx = (xs[None] - 0.5 >= c0[:, None]) & (xs[None] - 0.5 < c1[:, None])     # (n, W)
    iny = (ys[None] - 0.5 >= r0[:, None]) & (ys[None] - 0.5 < r1[:, None])     # (n, H)
    inside = iny[:, :, None] & inx[:, None, :]                                 # (n, H, W)
    order = torch.arange(1, len(b) + 1, device=boxes.device)[:, None, None]
    top = (inside * order).amax(0)                                              # last box covering each pixel
    lab = torch.ones(len(b), dtype=torch.int64, device=boxes.device) if labels is None else labels.to(torch.int64)
    return torch.where(top > 0, lab[(top - 1).clamp(min=0)], out)
