"""Paired augmentation for visible + thermal samples (numpy / OpenCV).

Every geometric transform is applied identically to both images, to the boxes and to the
label maps; photometric transforms are per modality. The thermal image may have a lower
resolution than the visible one (the MD student's low-resolution thermal camera): it is
transformed in proportional coordinates, and crop offsets are snapped to the resolution
ratio so both images stay exactly registered.

Boxes are ``xyxy`` float32 in visible pixel edges. Transforms take and return a
:class:`Sample`; each one takes its randomness from the ``rng`` passed to ``__call__``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import cv2
import numpy as np


@dataclass
class Sample:
    visible: np.ndarray  # (H, W, 3) uint8 RGB
    thermal: np.ndarray | None  # (h, w) or (h, w, 3); uint8 / uint16 / float32
    boxes: np.ndarray  # (N, 4) float32 xyxy
    labels: np.ndarray  # (N,) int64
    ignore: np.ndarray  # (N,) bool
    occlusion: np.ndarray | None = None  # (N,) int64
    mask: np.ndarray | None = None  # (H, W) int64 semantic label map at the visible size
    box_weights: np.ndarray | None = None  # (N,) float32 loss weight per box (mixup lambda)
    condition: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.boxes)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(n, 4)
        if self.occlusion is None:
            self.occlusion = np.zeros(n, np.int64)
        if self.box_weights is None:
            self.box_weights = np.ones(n, np.float32)

    @property
    def size(self) -> tuple[int, int]:
        return self.visible.shape[1], self.visible.shape[0]

    def ratio(self) -> tuple[float, float]:
        """thermal px per visible px, (x, y)."""
        if self.thermal is None:
            return 1.0, 1.0
        return self.thermal.shape[1] / self.visible.shape[1], self.thermal.shape[0] / self.visible.shape[0]

    def select(self, keep: np.ndarray) -> "Sample":
        return replace(self, boxes=self.boxes[keep], labels=self.labels[keep], ignore=self.ignore[keep],
                       occlusion=self.occlusion[keep], box_weights=self.box_weights[keep])


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, s: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            s = t(s, rng)
        return s


# ------------------------------------------------------------------------- geometric


class HorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, s: Sample, rng) -> Sample:
        if rng.random() >= self.p:
            return s
        W = s.size[0]
        b = s.boxes.copy()
        b[:, [0, 2]] = W - s.boxes[:, [2, 0]]
        return replace(s, visible=s.visible[:, ::-1].copy(),
                       thermal=None if s.thermal is None else s.thermal[:, ::-1].copy(),
                       mask=None if s.mask is None else s.mask[:, ::-1].copy(), boxes=b)


def _resize_img(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


class Resize:
    """Resize to (W, H); thermal keeps its resolution ratio to the visible image."""

    def __init__(self, size: tuple[int, int]):
        self.size = tuple(size)

    def __call__(self, s: Sample, rng=None) -> Sample:
        W, H = s.size
        w, h = self.size
        sx, sy = w / W, h / H
        rx, ry = s.ratio()
        th = None
        if s.thermal is not None:
            th = _resize_img(s.thermal, (max(1, int(round(w * rx))), max(1, int(round(h * ry)))))
        mask = None if s.mask is None else _resize_img(s.mask.astype(np.int32), (w, h), nearest=True).astype(np.int64)
        return replace(s, visible=_resize_img(s.visible, (w, h)), thermal=th, mask=mask,
                       boxes=s.boxes * np.array([sx, sy, sx, sy], np.float32))


class RandomResize:
    """Multi-scale training: resize to one of ``sizes`` (W, H) chosen at random."""

    def __init__(self, sizes: Sequence[tuple[int, int]]):
        self.sizes = [tuple(x) for x in sizes]

    def __call__(self, s: Sample, rng) -> Sample:
        return Resize(self.sizes[int(rng.integers(len(self.sizes)))])(s)


class RandomCrop:
    """SSD-style crop: a random window of scale ``min_scale..1`` and aspect ``0.5..2``, kept
    when it overlaps some box with IoU >= a threshold drawn from ``min_ious``; boxes whose
    centre falls outside are dropped, the others clipped."""

    def __init__(self, min_scale: float = 0.3, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7), trials: int = 50):
        self.min_scale, self.min_ious, self.trials = min_scale, tuple(min_ious), trials

    def __call__(self, s: Sample, rng) -> Sample:
        W, H = s.size
        rx, ry = s.ratio()
        # snap the window to whole thermal pixels so both images stay registered
        qx, qy = (max(1, int(round(1 / rx))), max(1, int(round(1 / ry)))) if s.thermal is not None else (1, 1)
        thr = self.min_ious[int(rng.integers(len(self.min_ious)))]
        for _ in range(self.trials):
            scale = rng.uniform(self.min_scale, 1.0)
            aspect = rng.uniform(0.5, 2.0)
            w = int(min(W, W * scale * math.sqrt(aspect))) // qx * qx
            h = int(min(H, H * scale / math.sqrt(aspect))) // qy * qy
            if w < qx * 2 or h < qy * 2:
                continue
            x0 = int(rng.integers(0, (W - w) // qx + 1)) * qx
            y0 = int(rng.integers(0, (H - h) // qy + 1)) * qy
            win = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if len(s.boxes):
                iou = _iou(s.boxes, win[None])[:, 0]
                if iou.max() < thr:
                    continue
            return crop(s, (x0, y0, w, h))
        return s


def crop(s: Sample, window: tuple[int, int, int, int]) -> Sample:
    """Crop ``(x0, y0, w, h)`` (visible px; multiples of the thermal ratio)."""
    x0, y0, w, h = window
    rx, ry = s.ratio()
    c = (s.boxes[:, :2] + s.boxes[:, 2:]) / 2
    keep = (c[:, 0] >= x0) & (c[:, 0] < x0 + w) & (c[:, 1] >= y0) & (c[:, 1] < y0 + h)
    s2 = s.select(keep)
    b = s2.boxes - np.array([x0, y0, x0, y0], np.float32)
    b = np.clip(b, 0, np.array([w, h, w, h], np.float32))
    th = None
    if s.thermal is not None:
        tx0, ty0 = int(round(x0 * rx)), int(round(y0 * ry))
        th = s.thermal[ty0:ty0 + int(round(h * ry)), tx0:tx0 + int(round(w * rx))].copy()
    return replace(s2, visible=s.visible[y0:y0 + h, x0:x0 + w].copy(), thermal=th, boxes=b,
                   mask=None if s.mask is None else s.mask[y0:y0 + h, x0:x0 + w].copy())


class Expand:
    """Zoom out: place the image on a canvas up to ``max_ratio`` times larger, filled with
    each modality's mean; label maps are padded with ``mask_fill`` (0 = unlabeled)."""

    def __init__(self, max_ratio: float = 4.0, p: float = 0.5, mask_fill: int = 0):
        self.max_ratio, self.p, self.mask_fill = max_ratio, p, mask_fill

    def __call__(self, s: Sample, rng) -> Sample:
        if rng.random() >= self.p:
            return s
        W, H = s.size
        rx, ry = s.ratio()
        qx, qy = (max(1, int(round(1 / rx))), max(1, int(round(1 / ry)))) if s.thermal is not None else (1, 1)
        r = rng.uniform(1.0, self.max_ratio)
        nw, nh = int(W * r) // qx * qx, int(H * r) // qy * qy
        left = int(rng.integers(0, (nw - W) // qx + 1)) * qx
        top = int(rng.integers(0, (nh - H) // qy + 1)) * qy
        vis = np.empty((nh, nw, 3), s.visible.dtype)
        vis[:] = s.visible.reshape(-1, 3).mean(0).astype(s.visible.dtype)
        vis[top:top + H, left:left + W] = s.visible
        th = None
        if s.thermal is not None:
            t = s.thermal
            th = np.full((int(round(nh * ry)), int(round(nw * rx))) + t.shape[2:], t.mean(), t.dtype)
            tt, tl = int(round(top * ry)), int(round(left * rx))
            th[tt:tt + t.shape[0], tl:tl + t.shape[1]] = t
        mask = None
        if s.mask is not None:
            mask = np.full((nh, nw), self.mask_fill, s.mask.dtype)
            mask[top:top + H, left:left + W] = s.mask
        return replace(s, visible=vis, thermal=th, mask=mask, boxes=s.boxes + np.array([left, top, left, top], np.float32))


# ------------------------------------------------------------------------ photometric


class VisiblePhotometric:
    """Brightness, contrast and saturation jitter on the visible image only."""

    def __init__(self, brightness: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5)):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, s: Sample, rng) -> Sample:
        img = s.visible.astype(np.float32)
        img = img * rng.uniform(*self.contrast) + rng.uniform(-self.brightness, self.brightness)
        gray = img.mean(axis=2, keepdims=True)
        img = gray + (img - gray) * rng.uniform(*self.saturation)
        return replace(s, visible=np.clip(img, 0, 255).astype(np.uint8))


class ThermalPhotometric:
    """Gain/offset jitter and sensor noise on the thermal image only (keeps its dtype)."""

    def __init__(self, gain: tuple[float, float] = (0.8, 1.2), offset: float = 0.05, noise: float = 0.01):
        self.gain, self.offset, self.noise = gain, offset, noise

    def __call__(self, s: Sample, rng) -> Sample:
        if s.thermal is None:
            return s
        t = s.thermal
        full = 65535.0 if t.dtype == np.uint16 else 255.0 if t.dtype == np.uint8 else 1.0
        x = t.astype(np.float32)
        mean = x.mean()
        x = (x - mean) * rng.uniform(*self.gain) + mean + rng.uniform(-self.offset, self.offset) * full
        x += rng.standard_normal(x.shape, dtype=np.float32) * self.noise * full
        if t.dtype in (np.uint8, np.uint16):
            x = np.clip(np.rint(x), 0, full).astype(t.dtype)
        return replace(s, thermal=x)


# ---------------------------------------------------------------- thermal / multispectral


class LowResThermal:
    """Simulate a cheap thermal camera: bilinear down by ``factor`` in *pixels* (4, 16, 64 ->
    2x, 4x, 8x per side), then bilinear back up to the thermal image's size (MD, §5.2)."""

    def __init__(self, factor: int = 16):
        lin = math.sqrt(factor)
        if factor < 1 or abs(lin - round(lin)) > 1e-9:
            raise ValueError(f"factor must be a square number of pixels (1, 4, 16, 64), got {factor}")
        self.factor, self.lin = factor, int(round(lin))

    def __call__(self, s: Sample, rng=None) -> Sample:
        if s.thermal is None or self.lin == 1:
            return s
        h, w = s.thermal.shape[:2]
        small = cv2.resize(s.thermal, (max(1, w // self.lin), max(1, h // self.lin)), interpolation=cv2.INTER_LINEAR)
        return replace(s, thermal=cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


class ThermalToVisibleSize:
    """Bilinearly resize thermal to the visible size (image-level fusion needs equal sizes)."""

    def __call__(self, s: Sample, rng=None) -> Sample:
        if s.thermal is None or s.thermal.shape[:2] == s.visible.shape[:2]:
            return s
        return replace(s, thermal=cv2.resize(s.thermal, s.size, interpolation=cv2.INTER_LINEAR))


def thermal_to_3ch(thermal: np.ndarray) -> np.ndarray:
    """Replicate a one-channel thermal image to 3 channels (METHODS §1: not a 4-channel input)."""
    return np.repeat(thermal[..., None], 3, axis=2) if thermal.ndim == 2 else thermal


class Thermal3Ch:
    def __call__(self, s: Sample, rng=None) -> Sample:
        return s if s.thermal is None else replace(s, thermal=thermal_to_3ch(s.thermal))


# -------------------------------------------------------------------------------- mixup


def mixup(a: Sample, b: Sample, lam: float) -> Sample:
    """Mix two samples: images ``lam*a + (1-lam)*b`` (b resized to a's size), boxes of both
    with per-box loss weights ``lam`` and ``1-lam`` (METHODS §1: losses mixed by the same λ).
    Label maps cannot be mixed meaningfully and are taken from ``a``."""
    if b.size != a.size:
        b = Resize(a.size)(b)
    vis = (lam * a.visible.astype(np.float32) + (1 - lam) * b.visible.astype(np.float32))
    th = None
    if a.thermal is not None and b.thermal is not None:
        bt = b.thermal if b.thermal.shape == a.thermal.shape else cv2.resize(b.thermal, a.thermal.shape[1::-1])
        th = lam * a.thermal.astype(np.float32) + (1 - lam) * bt.astype(np.float32)
        if a.thermal.dtype in (np.uint8, np.uint16):
            th = np.rint(th).astype(a.thermal.dtype)
    return replace(a, visible=np.rint(vis).astype(np.uint8), thermal=th,
                   boxes=np.concatenate([a.boxes, b.boxes]), labels=np.concatenate([a.labels, b.labels]),
                   ignore=np.concatenate([a.ignore, b.ignore]), occlusion=np.concatenate([a.occlusion, b.occlusion]),
                   box_weights=np.concatenate([a.box_weights * lam, b.box_weights * (1 - lam)]).astype(np.float32))


def sample_mixup_lambda(rng: np.random.Generator, alpha: float = 1.0, beta: float = 1.0) -> float:
    """λ ~ Beta(1, 1) by default (METHODS §1)."""
    return float(rng.beta(alpha, beta))


# ------------------------------------------------------------------------- object masks


def ellipse_mask(boxes: np.ndarray, size: tuple[int, int], ignore: np.ndarray | None = None) -> np.ndarray:
    """GAFF's object mask: each (non-ignored) box as a filled inscribed ellipse, (H, W) uint8.

    Same pixel convention as :func:`box_mask` (pixel-edge boxes; pixel (i, j) covers
    [j, j+1) x [i, i+1)): a pixel is inside when its centre (j + ½, i + ½) lies in the ellipse
    with the box's centre and half-sizes. Drawing it with cv2.ellipse at the box centre put the
    ellipse half a pixel (at feature-map resolution: half a cell) down-right and one pixel wider
    than the box, because OpenCV puts pixel centres at integer coordinates and draws both ends."""
    W, H = size
    m = np.zeros((H, W), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
        if (ignore is not None and ignore[k]) or x1 <= x0 or y1 <= y0:
            continue
        c0, r0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        c1, r1 = min(W, int(math.ceil(x1))), min(H, int(math.ceil(y1)))
        if c1 <= c0 or r1 <= r0:
            continue
        cx, cy, ax, ay = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        dx = ((np.arange(c0, c1) + 0.5 - cx) / ax) ** 2
        dy = ((np.arange(r0, r1) + 0.5 - cy) / ay) ** 2
        inside = dy[:, None] + dx[None, :] <= 1.0
        m[r0:r1, c0:c1] |= inside.astype(np.uint8)
    return m


def box_mask(boxes: np.ndarray, size: tuple[int, int], labels: np.ndarray | None = None,
             ignore: np.ndarray | None = None) -> np.ndarray:
    """CFL's segmentation target: boxes filled with their class id (1 if no labels), (H, W) int64;
    pixel (i, j) is inside ``[x0, x1) x [y0, y1)`` when its centre is."""
    W, H = size
    m = np.zeros((H, W), np.int64)
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
        if ignore is not None and ignore[k]:
            continue
        c0, r0 = int(math.ceil(x0 - 0.5)), int(math.ceil(y0 - 0.5))
        c1, r1 = int(math.ceil(x1 - 0.5)), int(math.ceil(y1 - 0.5))
        m[max(0, r0):max(0, r1), max(0, c0):max(0, c1)] = 1 if labels is None else labels[k]
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def default_train_transforms(sizes: Sequence[tuple[int, int]] = ((640, 512),), low_res_factor: int = 1) -> Compose:
    """The thesis' augmentation set (§1): photometric per modality, expand, crop, flip, multi-scale."""
    ts: list[Callable] = [VisiblePhotometric(), ThermalPhotometric(), Expand(), RandomCrop(), HorizontalFlip(),
                          RandomResize(sizes)]
    if low_res_factor > 1:
        ts.append(LowResThermal(low_res_factor))
    return Compose(ts)
