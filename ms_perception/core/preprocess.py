"""Preprocessing for real cameras: image encodings, radiometric thermal, registration, letterbox.

Visible encodings: rgb8, bgr8, mono8 (and rgba8/bgra8). Thermal encodings: mono8 (already
8-bit), mono16 / 16UC1 (raw radiometric counts), 32FC1 (°C). 16-bit thermal is mapped to
[0, 1] by a fixed raw window or a percentile stretch of this frame — never by cv_bridge's
lossy 16→8 scaling. A calibration YAML gives the homography from thermal to visible pixels;
the thermal image is warped once, straight into the model's thermal input grid (which is
smaller than the visible grid for the MD student). Letterboxing keeps the aspect ratio;
:class:`Letterbox` maps boxes and masks back to visible-image pixels.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ms_perception.core.frames import Frame

VISIBLE_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")
THERMAL_ENCODINGS = ("mono8", "mono16", "16UC1", "32FC1")
_EXPECT = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
           "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1)}


class InputError(ValueError):
    """An input frame cannot be used as given; the message names the fix."""


def _check(frame: Frame, stream: str, allowed: tuple[str, ...]) -> np.ndarray:
    enc = frame.encoding
    if enc not in allowed:
        raise InputError(f"{stream} image encoding {enc!r} is not supported; use one of {list(allowed)}"
                         + (" (16-bit thermal: publish mono16/16UC1 raw counts, not a color image)"
                            if stream == "thermal" else ""))
    dtype, ch = _EXPECT[enc]
    a = np.asarray(frame.data)
    got_ch = 1 if a.ndim == 2 else a.shape[2] if a.ndim == 3 else -1
    if a.dtype != dtype or got_ch != ch or a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
        raise InputError(f"{stream} image says {enc!r} (expects {np.dtype(dtype).name} with {ch} channel(s)) but "
                         f"holds {a.dtype.name} {a.shape}; fix the encoding field or the publisher")
    return a if a.ndim == 2 else a if ch > 1 else a[..., 0]


def check_thermal(frame: Frame) -> np.ndarray:
    """The thermal frame's array, after the encoding/dtype checks (InputError names the fix)."""
    return _check(frame, "thermal", THERMAL_ENCODINGS)


def visible_to_rgb(frame: Frame) -> np.ndarray:
    """Any supported visible encoding -> (H, W, 3) uint8 RGB."""
    a = _check(frame, "visible", VISIBLE_ENCODINGS)
    enc = frame.encoding
    if enc == "rgb8":
        return np.ascontiguousarray(a)
    if enc == "bgr8":
        return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)
    if enc == "rgba8":
        return cv2.cvtColor(a, cv2.COLOR_RGBA2RGB)
    if enc == "bgra8":
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)


@dataclass
class ThermalNormalization:
    """How thermal values become [0, 1].

    mode "window": the fixed range celsius_min..celsius_max. 32FC1 images are in °C; 16-bit
    counts are radiometric, T[K] = count * kelvin_per_count + offset_kelvin, so the window in
    counts is derived from the °C window unless raw_min/raw_max are given in counts.
    Common radiometric modes: 0.01 K per count (FLIR/Teledyne "TLinear" high resolution, Boson,
    Lepton 3.5: the default), 0.04 K per count (the FLIR A-series/Ax5 low-resolution 16-bit mode),
    Optris ((count - 1000) / 10 °C: kelvin_per_count 0.1, offset_kelvin 173.15).
    mode "percentile": stretch between the low/high percentiles of each frame (robust to a hot
    engine in view); NaNs (32FC1 dropouts) are ignored and become 0.
    """
    mode: str = "window"
    raw_min: float | None = None   # counts; None = celsius_min through the radiometric scale
    raw_max: float | None = None
    celsius_min: float = -10.0
    celsius_max: float = 50.0
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    kelvin_per_count: float = 0.01
    offset_kelvin: float = 0.0

    def lut16(self) -> np.ndarray:
        """(65536,) uint8: the 8-bit model input of every 16-bit count in window mode, computed with the
        float32 arithmetic of :func:`thermal_to_unit` (then ×255, rounded), once per normalization."""
        lut = self.__dict__.get("_lut16")
        if lut is None:
            x = np.arange(65536, dtype=np.float32)
            lo, scale = float(self.raw_min), float(self.raw_max) - float(self.raw_min)
            unit = np.clip((x - np.float32(lo)) / np.float32(scale if scale > 0 else 1.0), 0.0, 1.0)
            lut = self.__dict__["_lut16"] = np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)
        return lut

    def counts(self, celsius: float) -> float:
        """The 16-bit count of a temperature under this radiometric scale."""
        return (celsius + 273.15 - self.offset_kelvin) / self.kelvin_per_count

    def __post_init__(self):
        if not (np.isfinite(self.kelvin_per_count) and self.kelvin_per_count > 0 and np.isfinite(self.offset_kelvin)):
            raise ValueError(f"thermal radiometric scale: kelvin_per_count must be > 0 (got {self.kelvin_per_count}) "
                             f"and offset_kelvin finite (got {self.offset_kelvin})")
        if self.raw_min is None:
            self.raw_min = self.counts(self.celsius_min)
        if self.raw_max is None:
            self.raw_max = self.counts(self.celsius_max)
        if self.mode not in ("window", "percentile"):
            raise ValueError(f"thermal normalization mode must be 'window' or 'percentile', got {self.mode!r}")
        if self.mode == "window" and not (self.raw_max > self.raw_min and self.celsius_max > self.celsius_min):
            raise ValueError("thermal window: max must be greater than min")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("thermal percentiles must satisfy 0 <= low < high <= 100")


def thermal_to_unit(frame: Frame, norm: ThermalNormalization) -> np.ndarray:
    """Thermal frame -> (H, W) float32 in [0, 1]."""
    a = _check(frame, "thermal", THERMAL_ENCODINGS)
    if frame.encoding == "mono8":
        return a.astype(np.float32) / 255.0
    x = a.astype(np.float32)
    finite = np.isfinite(x)
    if norm.mode == "percentile":
        vals = x[finite]
        if frame.encoding == "32FC1":
            # float data may span the whole float32 range: numpy's interpolation between two order
            # statistics (b - a) overflows in float32 to inf, and lo became inf (every pixel 0)
            vals = vals.astype(np.float64)
        if vals.size == 0:
            raise InputError("thermal image has no finite value (all NaN/inf); check the camera driver")
        lo, hi = np.percentile(vals, [norm.low_percentile, norm.high_percentile])
        hi = hi if hi > lo else lo + 1.0
    elif frame.encoding == "32FC1":
        lo, hi = norm.celsius_min, norm.celsius_max
    else:
        lo, hi = norm.raw_min, norm.raw_max
    scale = float(hi) - float(lo)
    scale = scale if scale > 0 else 1.0          # flat image (lo == hi even after +1 at float precision)
    if x.dtype == np.float32 and frame.encoding == "32FC1":
        # float data may span the whole float32 range: subtract in float64 so x - lo cannot overflow
        out = ((x.astype(np.float64) - float(lo)) / scale).astype(np.float32)
    else:
        out = ((x - np.float32(lo)) / np.float32(scale)).astype(np.float32, copy=False)
    out[~finite] = 0.0
    return np.clip(out, 0.0, 1.0)


def _sample_stride(shape) -> int:
    """Every k-th row and column: about 5,000 pixels of any camera (80x64 of a 320x256 or a
    640x512 image; stride 4 at least), plenty to tell 90 % of the pixels at one end."""
    return max(4, int(math.sqrt(shape[0] * shape[1] / 5120)))


class SaturationMonitor:
    """Detects a thermal input clipped at one end of the window: at least ``fraction`` of the pixels
    at 0 or at 1 for ``frames`` frames in a row (a wrong radiometric scale makes every pixel 0 with
    no other symptom). ``update`` returns a warning the first time only; ``saturated_frames`` counts."""

    def __init__(self, fraction: float = 0.9, frames: int = 5):
        self.fraction, self.frames = fraction, frames
        self.run = 0
        self.saturated_frames = 0
        self.warning = ""

    def update(self, frame: Frame, unit: np.ndarray | None, norm: ThermalNormalization) -> str:
        """``unit``: the frame through :func:`thermal_to_unit`, or None to read the raw values against
        the window (the same test: a value maps to 0 exactly when it is at or below the window's low
        end, or not finite; to 1 at or above its high end), which the runtime does to skip the
        full-size float image."""
        if frame.encoding == "mono8" or norm.mode == "percentile":
            self.run = 0
            return ""
        if unit is not None:
            k = _sample_stride(unit.shape)
            sub = unit[::k, ::k]
            low, high = float((sub <= 0.0).mean()), float((sub >= 1.0).mean())
        else:
            data = np.asarray(frame.data)
            k = _sample_stride(data.shape)
            sub = data[::k, ::k]
            lo, hi = (norm.celsius_min, norm.celsius_max) if frame.encoding == "32FC1" else (norm.raw_min, norm.raw_max)
            if sub.dtype.kind == "f":
                finite = np.isfinite(sub)
                low = float(((sub <= lo) | ~finite).mean())
                high = float(((sub >= hi) & finite).mean())
            else:
                n = sub.size
                low, high = np.count_nonzero(sub <= lo) / n, np.count_nonzero(sub >= hi) / n
        if max(low, high) < self.fraction:
            self.run = 0
            return ""
        self.saturated_frames += 1
        self.run += 1
        if self.run < self.frames or self.warning:
            return ""
        end = "low" if low >= high else "high"
        med = float(np.nanmedian(np.asarray(frame.data, np.float64)[::4, ::4]))
        if frame.encoding == "32FC1":
            seen = f"median {med:.1f} degC"
            fix = "check that the driver publishes degC, or set the window (thermal_celsius_min/max)"
        else:
            c = med * norm.kelvin_per_count + norm.offset_kelvin - 273.15
            at = {k: med * k - 273.15 for k in (0.01, 0.04)}
            seen = f"median count {med:.0f} = {c:.1f} degC at {norm.kelvin_per_count:g} K/count"
            fix = ("the camera's radiometric scale is probably different: set thermal_kelvin_per_count "
                   f"(--thermal-kelvin-per-count; this median would be {at[0.01]:.1f} degC at 0.01 and "
                   f"{at[0.04]:.1f} degC at 0.04 K/count) and thermal_offset_kelvin, or the window, or "
                   "thermal_normalization: percentile")
        self.warning = (f"thermal input saturated: {100 * max(low, high):.0f}% of the pixels at the {end} end of the "
                        f"window ({norm.celsius_min:g}..{norm.celsius_max:g} degC) for {self.run} frames in a row "
                        f"({seen}); {fix}")
        return self.warning


def load_calibration(path: str | Path) -> np.ndarray:
    """Read a 3x3 thermal->visible homography from YAML (``homography: [[..],[..],[..]]``
    or a 9-element list, optionally under ``thermal_to_visible:``)."""
    import yaml
    p = Path(path)
    if not p.exists():
        raise InputError(f"calibration file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{p}: not valid YAML ({exc})") from None
    if isinstance(data, dict) and "thermal_to_visible" in data:
        data = data["thermal_to_visible"]
    h = data.get("homography") if isinstance(data, dict) else None
    try:
        m = np.asarray(h, np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise InputError(f"{p}: expected 'homography' as a 3x3 (or 9-element) list of numbers, got {h!r}") from None
    if not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-12:
        raise InputError(f"{p}: the homography is not invertible or not finite")
    return m / m[2, 2]


@dataclass(frozen=True)
class Letterbox:
    """Visible image (h0, w0) -> model input (H, W): resize to (nh, nw) keeping the aspect
    ratio, then pad (px, py) pixels left/top with zeros.

    model = s * image + pad per axis (sx = nw / w0, sy = nh / h0); pixel-edge coordinates.
    """
    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]
    size_hw: tuple[int, int]   # (nh, nw) resized content
    pad: tuple[int, int]       # (px, py)

    @staticmethod
    def fit(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> "Letterbox":
        (h0, w0), (h, w) = src_hw, dst_hw
        s = min(h / h0, w / w0)
        nh, nw = min(h, max(1, round(h0 * s))), min(w, max(1, round(w0 * s)))
        return Letterbox((int(h0), int(w0)), (int(h), int(w)), (nh, nw), ((w - nw) // 2, (h - nh) // 2))

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.size_hw[1] / self.src_hw[1], self.size_hw[0] / self.src_hw[0]

    @property
    def matrix(self) -> np.ndarray:
        """3x3 affine image -> model (pixel edges)."""
        sx, sy = self.scale_xy
        return np.array([[sx, 0, self.pad[0]], [0, sy, self.pad[1]], [0, 0, 1]], np.float64)

    @property
    def identity(self) -> bool:
        return self.src_hw == self.dst_hw

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Resize (area filter when shrinking) and pad to the model input size."""
        if self.identity:
            return img
        nh, nw = self.size_hw
        shrink = nh < self.src_hw[0]
        r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        (h, w), (px, py) = self.dst_hw, self.pad
        if (nh, nw) == (h, w):
            return r
        return cv2.copyMakeBorder(r, py, h - nh - py, px, w - nw - px, cv2.BORDER_CONSTANT, value=0)

    def boxes_to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy in model pixels -> image pixels, clipped to the image (float32 arithmetic)."""
        off, scale, hi = self._box_terms
        b = np.subtract(boxes, off, dtype=np.float32)
        b /= scale
        return np.clip(b, 0, hi, out=b)

    @functools.cached_property
    def _box_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (sx, sy), (px, py), (h0, w0) = self.scale_xy, self.pad, self.src_hw
        return (np.array([px, py, px, py], np.float32), np.array([sx, sy, sx, sy], np.float32),
                np.array([w0, h0, w0, h0], np.float32))

    def mask_to_image(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) class-id map in model pixels -> (h0, w0) visible pixels (nearest)."""
        if self.identity:
            return mask
        (nh, nw), (px, py) = self.size_hw, self.pad
        crop = mask[py:py + nh, px:px + nw]
        return cv2.resize(crop, (self.src_hw[1], self.src_hw[0]), interpolation=cv2.INTER_NEAREST)


def _is_identity(m: np.ndarray) -> bool:
    """np.allclose(m, I) for a 3x3 matrix (rtol 1e-5, atol 1e-8), without its per-call cost."""
    return bool(np.all(np.abs(m - _EYE3) <= 1e-8 + 1e-5 * np.abs(_EYE3)))


_EYE3 = np.eye(3)


def _integer_shrink(m: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> bool:
    """``m`` scales pixel-edge coordinates by 1/k (whole k >= 2 per axis), no offset, and the
    output is exactly the shrunk image."""
    if abs(m[0, 1]) > 1e-12 or abs(m[1, 0]) > 1e-12 or abs(m[0, 2]) > 1e-9 or abs(m[1, 2]) > 1e-9 \
            or abs(m[2, 0]) > 1e-15 or abs(m[2, 1]) > 1e-15 or abs(m[2, 2] - 1) > 1e-12:
        return False
    for axis, (src, dst) in enumerate(zip(src_hw, dst_hw)):
        k = src / dst
        if k < 2 - 1e-9 or abs(k - round(k)) > 1e-9 or abs(m[1 - axis, 1 - axis] * k - 1) > 1e-9:
            return False
    return True


def chw_u8(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> a new (1, C, H, W) uint8 array, the engine's layout. A colour
    image is split by OpenCV straight into the planes of the result: one pass, 2.5x faster than
    numpy's strided transpose copy at 320x256 (the planes are (H, W) uint8 C-contiguous views, so
    OpenCV writes into them and never reallocates)."""
    if img.ndim == 2:
        return np.ascontiguousarray(img[None, None])
    h, w, c = img.shape
    out = np.empty((1, c, h, w), np.uint8)
    if img.dtype == np.uint8 and 1 < c <= 4 and img.flags.c_contiguous:
        cv2.split(img, list(out[0]))
    else:
        np.copyto(out[0], img.transpose(2, 0, 1))
    return out


def _warp(img: np.ndarray, m: np.ndarray, dst_hw: tuple[int, int], interpolation, border: float = 0) -> np.ndarray:
    """Warp with a pixel-edge 3x3 matrix (OpenCV uses pixel centres: shift by 0.5); ``border`` fills
    what the source does not cover."""
    h, w = dst_hw
    sh, sw = img.shape[:2]
    if interpolation == cv2.INTER_LINEAR and _integer_shrink(m, (sh, sw), (h, w)):
        # a pure shrink by whole factors (co-boresighted cameras, 640x512 -> 320x256): resize samples
        # the same two neighbours with the same weights, 8x faster (bit-identical for integer
        # images, within 1e-7 for float; tested)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    c = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    mc = np.linalg.inv(c) @ m @ c  # centre coords -> edge, apply, -> centre
    if abs(mc[2, 0]) < 1e-15 and abs(mc[2, 1]) < 1e-15:
        return cv2.warpAffine(img, mc[:2], (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=border)
    return cv2.warpPerspective(img, mc, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def warp_thermal(unit: np.ndarray, thermal_to_visible: np.ndarray, letterbox: Letterbox,
                 out_hw: tuple[int, int]) -> np.ndarray:
    """Thermal [0,1] image -> the model's thermal input grid in ONE warp.

    model-thermal <- (downscale visible-model grid to out_hw) <- letterbox <- homography.
    """
    H, W = letterbox.dst_hw
    down = np.diag([out_hw[1] / W, out_hw[0] / H, 1.0])
    m = down @ letterbox.matrix @ thermal_to_visible
    if _is_identity(m) and unit.shape == tuple(out_hw):
        return unit
    return _warp(unit, m, out_hw, cv2.INTER_LINEAR)


@functools.lru_cache(maxsize=64)
def _registration(thermal_to_visible: bytes, letterbox: Letterbox, out_hw: tuple[int, int],
                  src_hw: tuple[int, int]) -> tuple[np.ndarray, bool, bool]:
    """Camera thermal pixel -> model thermal pixel (3x3, read-only), whether it is the identity
    on a same-size image, and whether it is a whole-factor shrink (``_warp``'s resize path); once
    per calibration, rig and model (the per-frame 3x3 arithmetic and tests cost more than the table
    look-up after the engine has run)."""
    H, W = letterbox.dst_hw
    m = np.diag([out_hw[1] / W, out_hw[0] / H, 1.0]) @ letterbox.matrix @ \
        np.frombuffer(thermal_to_visible, np.float64).reshape(3, 3)
    m.setflags(write=False)
    return m, _is_identity(m) and tuple(src_hw) == tuple(out_hw), _integer_shrink(m, tuple(src_hw), tuple(out_hw))


def thermal_input(frame: Frame, norm: ThermalNormalization, thermal_to_visible: np.ndarray, letterbox: Letterbox,
                  out_hw: tuple[int, int]) -> np.ndarray:
    """Thermal frame -> the model's 8-bit thermal input (``out_hw`` uint8), registered, in one warp.
    The runtime and the training data sources both call this (one definition of the model's input).

    mono8, and 16-bit counts in window mode (the default): the raw image is warped first (linear),
    then windowed through a 65536-entry table: one pass over the camera's pixels and one over the
    model's, no full-size float image. Percentile mode and 32FC1 (°C, possibly NaN) window the
    whole frame first (a percentile is a statistic of the frame), then warp. The two orders differ
    only where a pixel's neighbours straddle the window's ends (windowing after the interpolation
    is what a camera with fewer pixels would see)."""
    a = _check(frame, "thermal", THERMAL_ENCODINGS)
    m, same, shrink = _registration(np.asarray(thermal_to_visible, np.float64).tobytes(), letterbox, tuple(out_hw),
                                    a.shape[:2])
    if frame.encoding == "mono8" or (norm.mode == "window" and a.dtype == np.uint16):
        if same:
            w = a
        elif shrink:   # _warp's whole-factor path, decided once per registration
            w = cv2.resize(np.ascontiguousarray(a), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
        else:
            # outside the camera's view: the count at the window's low end, which the table maps to 0, so
            # the pixels at the view's edge blend towards 0 as the float order blends towards 0.0
            border = 0 if a.dtype == np.uint8 else float(min(max(math.ceil(norm.raw_min), 0), 65535))
            w = _warp(np.ascontiguousarray(a), m, out_hw, cv2.INTER_LINEAR, border)
        return np.ascontiguousarray(w) if a.dtype == np.uint8 else norm.lut16().take(w)
    unit = thermal_to_unit(frame, norm)
    w = unit if same else _warp(unit, m, out_hw, cv2.INTER_LINEAR)
    return np.clip(np.rint(w * 255), 0, 255).astype(np.uint8)
