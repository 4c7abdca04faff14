"""Anchor layout and box coding shared by training (torch) and the runtime (numpy).

One implementation of the anchor grid: the exporter writes the layout (``AnchorLevel`` list)
into the model card, the runtime rebuilds the anchors from it with :func:`grid_anchors`, and
training builds its anchors with the same function (converted to a tensor), so decoding on
the robot cannot drift from what the model learned.

Conventions
- Boxes are ``xyxy`` in input-image pixels, pixel edges (a box covering pixel 0..9 is 0..10).
- Anchor order is ``(H, W, A)`` row-major per level, levels concatenated fine to coarse;
  heads reshape ``(N, A*K, H, W) -> (N, H*W*A, K)`` to match.
- Deltas are the R-CNN / RetinaNet parametrization ``(dx, dy, dw, dh)`` divided by
  ``weights`` (1, 1, 1, 1 as in RetinaNet; SSD uses the 0.1/0.2 "variances" = 10, 10, 5, 5).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# torchvision det_utils: dw/dh are clamped to log(1000/16) before exp to avoid overflow
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class AnchorLevel:
    """Anchors of one feature level.

    stride: input pixels per feature cell.
    sizes: anchor side lengths sqrt(w*h) in input pixels (RetinaNet: base * 2^(0, 1/3, 2/3)).
    aspect_ratios: h / w of each anchor shape (pedestrians: > 1).
    """
    stride: int
    sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def num_anchors(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"], d["aspect_ratios"] = list(self.sizes), list(self.aspect_ratios)
        return d

    @staticmethod
    def from_dict(d: dict) -> "AnchorLevel":
        return AnchorLevel(int(d["stride"]), tuple(float(s) for s in d["sizes"]),
                           tuple(float(r) for r in d["aspect_ratios"]))


def cell_anchors(level: AnchorLevel) -> np.ndarray:
    """(A, 4) anchors centred on (0, 0); order: for each ratio, each size (ratio-major)."""
    out = []
    for r in level.aspect_ratios:
        for s in level.sizes:
            w = s / math.sqrt(r)
            h = s * math.sqrt(r)
            out.append((-w / 2, -h / 2, w / 2, h / 2))
    return np.asarray(out, np.float32)


def grid_anchors(levels: list[AnchorLevel], feature_sizes: list[tuple[int, int]]) -> np.ndarray:
    """All anchors, (sum_l H_l*W_l*A_l, 4) float32 xyxy; cell centres at (i + 0.5) * stride."""
    if len(levels) != len(feature_sizes):
        raise ValueError(f"{len(levels)} anchor levels but {len(feature_sizes)} feature maps")
    chunks = []
    for lvl, (h, w) in zip(levels, feature_sizes):
        ys = (np.arange(h, dtype=np.float32) + 0.5) * lvl.stride
        xs = (np.arange(w, dtype=np.float32) + 0.5) * lvl.stride
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.stack([cx, cy, cx, cy], -1).reshape(h * w, 1, 4)
        chunks.append((centres + cell_anchors(lvl)[None]).reshape(-1, 4))
    return np.concatenate(chunks, 0)


def level_sizes_for_input(strides: list[int], height: int, width: int) -> list[tuple[int, int]]:
    """Feature map sizes of a conv net with 'same' padding: ceil(size / stride) per level."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


@dataclass(frozen=True)
class BoxCoder:
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    clip: float = field(default=BBOX_XFORM_CLIP)

    def encode(self, anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(M, 4) anchors and matched (M, 4) boxes -> (M, 4) deltas."""
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
        wx, wy, ww, wh = self.weights
        return np.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah,
                         ww * np.log(bw / aw), wh * np.log(bh / ah)], -1).astype(np.float32)

    def decode(self, anchors: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """(M, 4) anchors, (..., M, 4) deltas -> (..., M, 4) xyxy boxes."""
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = np.minimum(deltas[..., 2] / ww, self.clip)
        dh = np.minimum(deltas[..., 3] / wh, self.clip)
        cx, cy = dx * aw + ax, dy * ah + ay
        w, h = np.exp(dw) * aw, np.exp(dh) * ah
        return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1).astype(np.float32)
