"""Synthetic visible + thermal pairs whose modalities fail in different, realistic ways.

Numpy + OpenCV only. One :class:`SyntheticGenerator` makes *sequences* of a static
surveillance-style camera rig: a textured background (sky, wall or vegetation, road),
people, cars and bicycles that move smoothly, static occluders (bushes, posts), and
per-modality distractors. Every frame yields a :class:`SynthPair` with

- ``visible``: RGB uint8 (H, W, 3) under an illumination condition (day, dusk, night, fog);
- ``thermal_raw``: uint16 radiometric counts at the thermal camera's own (possibly
  lower) resolution, ``T[°C] = counts * 0.01 - 273.15`` (:data:`COUNTS_PER_KELVIN`; the
  "TLinear, 0.01 K" mode of common LWIR cores); ``thermal8`` is a 1-99 % percentile stretch;
- labels in visible-image pixels: ``semantic`` (class ids, 0 = background/unlabeled),
  ``instances`` (0 = none, k = objects[k-1]) and per-object box, class, occlusion and height;
- ``homography``: the true 3x3 map from thermal pixel coordinates to visible ones;
- ``stamp_visible_ns`` / ``stamp_thermal_ns``: camera stamps with offset and jitter.
- with ``pairs(n, visibility=True)``, ``visibility``: how detectable each object is in each camera,
  the frame against the same frame rendered without the object under the same noise.

How each modality fails (what makes fusion and inconsistency measurable):
- night/dusk: low, uneven illumination (street lights), shot noise and headlight glare;
  most objects are barely visible in RGB while thermal is unaffected;
- fog: RGB contrast falls with distance; thermal (LWIR) passes;
- *thermal crossover*: a configurable fraction of objects is at the temperature of the
  background around it, so it vanishes in thermal while RGB still shows it;
- *hot distractors* (person-shaped warm blobs: vents, animals) exist only in thermal;
  *visible distractors* (posters, mannequins) look like people only in RGB. Neither is
  labeled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

# Canonical class ids (COCO's: person 1, bicycle 2, car 3); 0 = background / unlabeled.
CLASS_NAMES = ("background", "person", "bicycle", "car")
PERSON, BICYCLE, CAR = 1, 2, 3
CONDITIONS = ("day", "dusk", "night", "fog")
# KAIST reports day/night only: fog is daylight, dusk counts as night (illumination-limited).
CONDITION_DAY_NIGHT = {"day": "day", "fog": "day", "dusk": "night", "night": "night"}
COUNTS_PER_KELVIN = 100.0  # radiometric counts per kelvin (0.01 K resolution)
KELVIN_OFFSET = 273.15


def celsius_to_counts(t_c: np.ndarray | float) -> np.ndarray:
    """°C -> uint16 radiometric counts (0.01 K per count)."""
    return np.clip(np.rint((np.asarray(t_c, np.float64) + KELVIN_OFFSET) * COUNTS_PER_KELVIN), 0, 65535).astype(np.uint16)


def counts_to_celsius(counts: np.ndarray) -> np.ndarray:
    """uint16 radiometric counts -> °C (float32)."""
    return (np.asarray(counts, np.float32) / COUNTS_PER_KELVIN - KELVIN_OFFSET).astype(np.float32)


def thermal_to_8bit(counts: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Percentile stretch of radiometric counts to uint8 (KAIST-style 8-bit rendering)."""
    c = counts.astype(np.float32)
    lo, hi = np.percentile(c, (low_pct, high_pct))
    scale = 255.0 / max(hi - lo, 1.0)
    return np.clip((c - lo) * scale, 0, 255).astype(np.uint8)


@dataclass
class SynthConfig:
    """Everything the generator varies. Sizes are in visible-image pixels."""

    width: int = 320
    height: int = 256
    night_fraction: float = 0.3  # share of sequences at night
    dusk_fraction: float = 0.1
    fog_fraction: float = 0.1  # day is the remainder
    objects_per_frame: tuple[int, int] = (2, 7)  # min, max (inclusive) moving objects
    class_weights: tuple[float, float, float] = (0.6, 0.15, 0.25)  # person, bicycle, car
    crossover_fraction: float = 0.1  # objects at background temperature (vanish in thermal)
    hot_distractors: tuple[int, int] = (0, 2)  # thermal-only person-like blobs per sequence
    visible_distractors: tuple[int, int] = (0, 2)  # RGB-only posters/mannequins per sequence
    occluders: tuple[int, int] = (0, 3)  # static bushes / posts drawn in front of objects
    thermal_factor: int = 1  # thermal has this many times FEWER pixels: 1, 4, 16 or 64
    misregistration_px: float = 2.0  # max thermal-to-visible shift (visible px)
    misregistration_deg: float = 0.5  # max rotation
    misregistration_scale: float = 0.01  # max relative scale error
    sequence_length: int = 20  # frames per sequence (one static scene and condition)
    fps: float = 10.0
    thermal_time_offset_s: float = 0.004  # systematic thermal-vs-visible stamp offset
    stamp_jitter_s: float = 0.002  # per-frame stamp jitter (std), each camera
    thermal_netd_k: float = 0.05  # sensor noise (NETD), kelvin
    start_time_s: float = 1_700_000_000.0  # stamp of the first frame

    def __post_init__(self):
        if self.thermal_factor not in (1, 4, 16, 64):
            raise ValueError(f"thermal_factor must be one of 1, 4, 16, 64 (pixel-count ratio), got {self.thermal_factor}")
        lin = int(round(math.sqrt(self.thermal_factor)))
        if self.width % lin or self.height % lin:
            raise ValueError(f"size {self.width}x{self.height} is not divisible by {lin} (sqrt of thermal_factor)")
        if self.width < 64 or self.height < 48:
            raise ValueError(f"size {self.width}x{self.height} is too small; use at least 64x48")
        fr = (self.night_fraction, self.dusk_fraction, self.fog_fraction)
        if any(f < 0 or f > 1 for f in fr) or sum(fr) > 1 + 1e-9:
            raise ValueError(f"condition fractions must lie in [0, 1] and sum to <= 1, got night={fr[0]} "
                             f"dusk={fr[1]} fog={fr[2]}")
        if not 0 <= self.crossover_fraction <= 1:
            raise ValueError(f"crossover_fraction must lie in [0, 1], got {self.crossover_fraction}")
        if self.objects_per_frame[0] < 0 or self.objects_per_frame[1] < self.objects_per_frame[0]:
            raise ValueError(f"objects_per_frame must be (min, max) with 0 <= min <= max, got {self.objects_per_frame}")
        if self.sequence_length < 1 or self.fps <= 0:
            raise ValueError("sequence_length must be >= 1 and fps > 0")

    @property
    def thermal_size(self) -> tuple[int, int]:
        lin = int(round(math.sqrt(self.thermal_factor)))
        return self.width // lin, self.height // lin


@dataclass
class SynthObject:
    """One labeled object in a frame (visible-image pixels)."""

    instance_id: int  # value in SynthPair.instances
    class_id: int  # PERSON, BICYCLE or CAR
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 pixel edges of the full (amodal) shape, clipped to the image
    visible_fraction: float  # unoccluded share of the object's pixels
    occlusion: int  # 0 none (>= 0.8 visible), 1 partial (>= 0.35), 2 heavy
    crossover: bool  # at background temperature: invisible in thermal
    temperature_c: float  # surface temperature of the main body
    track_id: int  # stable across the sequence

    @property
    def height_px(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


@dataclass
class SynthPair:
    visible: np.ndarray  # (H, W, 3) uint8 RGB
    thermal_raw: np.ndarray  # (h, w) uint16 counts
    semantic: np.ndarray  # (H, W) uint8 class ids
    instances: np.ndarray  # (H, W) uint16
    objects: list[SynthObject]
    condition: str  # day / dusk / night / fog
    homography: np.ndarray  # (3, 3) thermal px -> visible px
    stamp_visible_ns: int
    stamp_thermal_ns: int
    sequence_id: int
    frame_index: int
    ambient_c: float
    distractors: list[dict] = field(default_factory=list)  # {kind: hot|visible, box}
    # with pairs(..., visibility=True): per object, {visible_k, thermal_k} (SyntheticGenerator._visibility)
    visibility: list[dict] | None = None

    @property
    def thermal8(self) -> np.ndarray:
        return thermal_to_8bit(self.thermal_raw)

    @property
    def thermal_celsius(self) -> np.ndarray:
        return counts_to_celsius(self.thermal_raw)

    @property
    def day_night(self) -> str:
        return CONDITION_DAY_NIGHT[self.condition]

    def boxes(self) -> np.ndarray:
        return np.array([o.box for o in self.objects], np.float32).reshape(-1, 4)

    def labels(self) -> np.ndarray:
        return np.array([o.class_id for o in self.objects], np.int64)


# ----------------------------------------------------------------------------- scene


def detectability_index(diff: np.ndarray, noise_var) -> float:
    """d' of the ideal observer for a signal known exactly in independent Gaussian noise:
    sqrt(sum(diff^2 / noise_var)) (``noise_var`` a scalar or per element)."""
    d = np.asarray(diff, np.float64)
    return float(np.sqrt(np.sum(d * d / np.asarray(noise_var, np.float64))))


def _noise_texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth value noise in [-1, 1], (h, w) float32: random grid upsampled bicubically."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    t = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(t / 2.0, -1, 1)


@dataclass
class _Track:
    track_id: int
    class_id: int
    x: float  # foot center x
    y: float  # foot y (ground contact)
    vx: float
    vy: float
    colors: np.ndarray  # (3, 3) part colors (albedo, RGB in [0, 1])
    crossover: bool
    running: bool  # cars: engine on (hot)
    body_temp: float  # °C offset or absolute (persons)
    phase: float  # walking phase


class _Scene:
    """Static parts of one sequence: background albedo/temperature, lights, occluders."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator, condition: str):
        W, H = cfg.width, cfg.height
        self.cfg, self.condition = cfg, condition
        self.horizon = int(H * rng.uniform(0.32, 0.45))
        sky_end = int(self.horizon * rng.uniform(0.35, 0.7))
        day_like = condition in ("day", "fog")
        self.ambient = float(rng.uniform(14, 26) if day_like else rng.uniform(4, 16))
        sun = 1.0 if condition == "day" else (0.4 if condition == "fog" else 0.0)

        albedo = np.empty((H, W, 3), np.float32)
        temp = np.empty((H, W), np.float32)
        tex_f = _noise_texture(rng, H, W, 6)
        tex_c = _noise_texture(rng, H, W, 24)
        # sky
        albedo[:sky_end] = (0.62, 0.72, 0.85)
        albedo[:sky_end] += 0.05 * tex_c[:sky_end, :, None]
        temp[:sky_end] = self.ambient - 22 + 2 * tex_c[:sky_end]
        # background band: wall or vegetation segments
        x = 0
        self.region = np.zeros((H, W), np.uint8)  # 0 sky, 1 wall, 2 vegetation, 3 road
        while x < W:
            seg = int(rng.uniform(0.2, 0.6) * W)
            kind = 1 if rng.random() < 0.5 else 2
            sl = (slice(sky_end, self.horizon), slice(x, min(W, x + seg)))
            self.region[sl] = kind
            if kind == 1:  # wall: brick-like, sun-heated by day
                base = rng.uniform(0.35, 0.6, 3).astype(np.float32) * (1.0, 0.8, 0.7)
                albedo[sl] = base + 0.08 * tex_f[sl][..., None]
                temp[sl] = self.ambient + 7 * sun + 0.8 * tex_c[sl]
            else:  # vegetation: evaporative cooling keeps it near ambient
                albedo[sl] = (0.18, 0.38, 0.15) + 0.12 * tex_f[sl][..., None] * (0.5, 1.0, 0.5)
                temp[sl] = self.ambient - 1 + 1.2 * tex_f[sl]
            x += seg
        # road with lane markings: asphalt soaks up sun
        road = (slice(self.horizon, H), slice(0, W))
        self.region[road] = 3
        albedo[road] = 0.28 + 0.05 * tex_f[road][..., None]
        temp[road] = self.ambient + 14 * sun + 2.5 * (1 - sun) + 0.4 * tex_c[road] + 0.3 * tex_f[road]
        lane_y = int(self.horizon + 0.55 * (H - self.horizon))
        for lx in range(int(rng.uniform(0, 40)), W, 48):
            cv2.rectangle(albedo, (lx, lane_y), (lx + 22, lane_y + max(1, H // 120)), (0.85, 0.85, 0.8), -1)
        self.albedo_bg = albedo
        self.temp_bg = temp

        # illumination map (night/dusk: street lights) and static glare sources
        self.lights = []
        if condition in ("night", "dusk"):
            for _ in range(int(rng.integers(1, 4))):
                self.lights.append((float(rng.uniform(0, W)), float(rng.uniform(sky_end, self.horizon)),
                                    float(rng.uniform(0.08, 0.2) * W)))
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        illum = np.full((H, W), {"day": 1.0, "fog": 0.85, "dusk": 0.12, "night": 0.006}[condition], np.float32)
        for lx, ly, r in self.lights:
            illum += (0.12 if condition == "night" else 0.25) * np.exp(-((xx - lx) ** 2 + (yy - ly - 0.3 * r) ** 2) / (2 * r * r))
        self.illum = illum
        self.tint = np.array({"day": (1, 1, 1), "fog": (1, 1, 1), "dusk": (1.0, 0.8, 0.62),
                              "night": (1.0, 0.85, 0.6)}[condition], np.float32)
        # fog: airlight blend growing with distance (rows near the horizon are far away)
        if condition == "fog":
            depth = np.clip(1.0 - (yy[:, :1] - self.horizon) / max(1, H - self.horizon), 0, 1)
            self.fog = (0.45 + 0.5 * depth).astype(np.float32)  # (H, 1)
        else:
            self.fog = None

        # static occluders (drawn over objects): bushes on the road side, posts
        self.occluders = []
        for _ in range(int(rng.integers(cfg.occluders[0], cfg.occluders[1] + 1))):
            oy = float(rng.uniform(self.horizon + 0.2 * (H - self.horizon), H))
            s = self._scale(oy)
            if rng.random() < 0.6:
                self.occluders.append(("bush", float(rng.uniform(0, W)), oy, 0.35 * s, 0.25 * s))
            else:
                self.occluders.append(("post", float(rng.uniform(0, W)), oy, 0.05 * s, 1.3 * s))
        # distractors (static): hot blobs (thermal only) and posters/mannequins (RGB only)
        self.distractors = []
        for kind, (lo, hi) in (("hot", cfg.hot_distractors), ("visible", cfg.visible_distractors)):
            for _ in range(int(rng.integers(lo, hi + 1))):
                dy = float(rng.uniform(self.horizon + 4, H))
                self.distractors.append((kind, float(rng.uniform(0.05 * W, 0.95 * W)), dy,
                                         rng.uniform(0.2, 0.9, 3).astype(np.float32)))
        self.fpn = (rng.standard_normal(cfg.thermal_size[0]).astype(np.float32) * 3.0)  # column fixed-pattern noise, counts
        # residual non-uniformity after the camera's radiometric calibration: +-0.3 K, smooth
        self.nuc_counts = 0.3 * COUNTS_PER_KELVIN * _noise_texture(rng, cfg.thermal_size[1], cfg.thermal_size[0], 64)

    def _scale(self, foot_y: float) -> float:
        """Person height in px for a foot at row ``foot_y`` (ground-plane perspective)."""
        H = self.cfg.height
        return max(4.0, 0.5 * H * (foot_y - self.horizon) / max(1, H - self.horizon))


def _object_box(cls: int, x: float, y: float, s: float) -> tuple[float, float, float, float]:
    """Amodal box (x0, y0, x1, y1) of an object with foot (x, y) and person-height s."""
    if cls == PERSON:
        h, w = s, 0.42 * s
    elif cls == BICYCLE:
        h, w = 0.62 * s, 1.05 * s
    else:
        h, w = 0.8 * s, 2.3 * s
    return x - w / 2, y - h, x + w / 2, y


def _draw_object(img: np.ndarray, cls: int, box, values, phase: float = 0.0) -> None:
    """Draw an object's parts on ``img``; ``values`` is a list of 3 per-part values
    (colors for albedo, temperatures, or the instance id three times)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    sh = 3  # fixed-point shift for sub-pixel drawing

    def P(px, py):
        return int(round(px * (1 << sh))), int(round(py * (1 << sh)))

    def S(v):
        return max(1, int(round(v * (1 << sh))))

    v0, v1, v2 = values
    if cls == PERSON:
        swing = 0.18 * w * math.sin(phase)
        lw = max(1, int(round(0.22 * w)))
        hip = (cx, y0 + 0.55 * h)
        cv2.line(img, P(*hip), P(cx - 0.2 * w + swing, y1), v2, lw, cv2.LINE_8, sh)
        cv2.line(img, P(*hip), P(cx + 0.2 * w - swing, y1), v2, lw, cv2.LINE_8, sh)
        cv2.ellipse(img, P(cx, y0 + 0.38 * h), (S(0.3 * w), S(0.2 * h)), 0, 0, 360, v1, -1, cv2.LINE_8, sh)
        cv2.circle(img, P(cx, y0 + 0.1 * h), S(0.1 * h), v0, -1, cv2.LINE_8, sh)
    elif cls == BICYCLE:
        r = 0.27 * h
        lw = max(1, int(round(0.06 * h)))
        c1, c2 = (x0 + r + 0.02 * w, y1 - r), (x1 - r - 0.02 * w, y1 - r)
        cv2.circle(img, P(*c1), S(r), v2, lw, cv2.LINE_8, sh)
        cv2.circle(img, P(*c2), S(r), v2, lw, cv2.LINE_8, sh)
        top = (cx, y0 + 0.35 * h)
        pts = np.array([P(*c1), P(*top), P(*c2), P(cx - 0.05 * w, y1 - r)], np.int32)
        cv2.polylines(img, [pts], True, v1, lw, cv2.LINE_8, sh)
        cv2.line(img, P(*top), P(cx + 0.12 * w, y0), v1, lw, cv2.LINE_8, sh)
        cv2.line(img, P(cx - 0.1 * w, y0 + 0.25 * h), P(cx + 0.02 * w, y0 + 0.25 * h), v0, lw + 1, cv2.LINE_8, sh)
    else:  # car, side view
        cv2.rectangle(img, P(x0, y0 + 0.38 * h), P(x1, y1 - 0.12 * h), v1, -1, cv2.LINE_8, sh)
        cabin = np.array([P(x0 + 0.22 * w, y0 + 0.4 * h), P(x0 + 0.32 * w, y0),
                          P(x0 + 0.7 * w, y0), P(x0 + 0.82 * w, y0 + 0.4 * h)], np.int32)
        cv2.fillPoly(img, [cabin], v0, cv2.LINE_8, sh)
        r = 0.2 * h
        cv2.circle(img, P(x0 + 0.2 * w, y1 - r), S(r), v2, -1, cv2.LINE_8, sh)
        cv2.circle(img, P(x1 - 0.2 * w, y1 - r), S(r), v2, -1, cv2.LINE_8, sh)


def _draw_occluder(img: np.ndarray, occ, value) -> None:
    kind, x, y, a, b = occ
    if kind == "bush":
        cv2.ellipse(img, (int(x), int(y - b)), (max(1, int(a)), max(1, int(b))), 0, 0, 360, value, -1)
    else:
        cv2.rectangle(img, (int(x - a), int(y - b)), (int(x + a), int(y)), value, -1)


class SyntheticGenerator:
    """Deterministic for (config, seed): ``SyntheticGenerator(cfg, seed).pairs(n)``."""

    def __init__(self, cfg: SynthConfig | None = None, seed: int = 0):
        self.cfg = cfg or SynthConfig()
        self.seed = int(seed)

    # -- public API

    def pairs(self, n: int, visibility: bool = False, to_input=None) -> Iterator[SynthPair]:
        """``n`` pairs: consecutive sequences of ``cfg.sequence_length`` frames. ``visibility``: also
        measure each object's detectability in each camera (``SynthPair.visibility``; one more
        rendering per object, so several times slower; the pairs themselves do not change).
        ``to_input``: with ``visibility``, also measure it in a model's input, ``to_input(visible,
        thermal_raw) -> (visible (h, w, 3) uint8, thermal (h, w) uint8)`` (the runtime's resize,
        registration and thermal window; keys ``visible_input_k``, ``thermal_input_k``)."""
        seq, made = 0, 0
        while made < n:
            k = min(self.cfg.sequence_length, n - made)
            for p in self.sequence(seq, k, visibility=visibility, to_input=to_input):
                yield p
            made += k
            seq += 1

    def sequence(self, sequence_id: int, length: int | None = None, condition: str | None = None,
                 visibility: bool = False, to_input=None) -> Iterator[SynthPair]:
        """Frames of one sequence; each sequence has its own seed-derived RNG stream."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, int(sequence_id)])
        if condition is None:
            u = rng.random()
            cuts = np.cumsum([cfg.night_fraction, cfg.dusk_fraction, cfg.fog_fraction])
            condition = "night" if u < cuts[0] else "dusk" if u < cuts[1] else "fog" if u < cuts[2] else "day"
        elif condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; use one of {CONDITIONS}")
        scene = _Scene(cfg, rng, condition)
        homography = self._homography(rng)
        n_obj = int(rng.integers(cfg.objects_per_frame[0], cfg.objects_per_frame[1] + 1))
        tracks = [self._new_track(rng, scene, i) for i in range(n_obj)]
        length = cfg.sequence_length if length is None else length
        t0 = cfg.start_time_s + sequence_id * (cfg.sequence_length / cfg.fps + 60.0)
        for f in range(length):
            t = t0 + f / cfg.fps
            sv = t + rng.normal(0, cfg.stamp_jitter_s)
            st = t + cfg.thermal_time_offset_s + rng.normal(0, cfg.stamp_jitter_s)
            yield self._render(rng, scene, tracks, homography, sequence_id, f, int(round(sv * 1e9)), int(round(st * 1e9)),
                               visibility, to_input)
            for tr in tracks:
                self._step(rng, scene, tr)

    # -- internals

    def _homography(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        lin = cfg.width / cfg.thermal_size[0]
        S = np.diag([lin, lin, 1.0])
        ang = math.radians(rng.uniform(-1, 1) * cfg.misregistration_deg)
        sc = 1.0 + rng.uniform(-1, 1) * cfg.misregistration_scale
        tx, ty = rng.uniform(-1, 1, 2) * cfg.misregistration_px
        cx, cy = cfg.width / 2, cfg.height / 2
        R = np.array([[sc * math.cos(ang), -sc * math.sin(ang), 0], [sc * math.sin(ang), sc * math.cos(ang), 0], [0, 0, 1]])
        C = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]]) @ R @ np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        # thermal pixel centers map to visible pixel centers: x_v + 0.5 = lin * (x_t + 0.5)
        half = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
        return C @ half @ S @ np.linalg.inv(half)

    def _new_track(self, rng: np.random.Generator, scene: _Scene, tid: int, edge: bool = False) -> _Track:
        cfg = self.cfg
        W, H = cfg.width, cfg.height
        cls = int(rng.choice([PERSON, BICYCLE, CAR], p=np.asarray(cfg.class_weights) / np.sum(cfg.class_weights)))
        y = float(rng.uniform(scene.horizon + 0.1 * (H - scene.horizon), H + 0.02 * H))
        speed = {PERSON: 0.004, BICYCLE: 0.01, CAR: 0.02}[cls] * W * rng.uniform(0.5, 1.5)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        x = float(rng.uniform(0, W)) if not edge else (-0.05 * W if direction > 0 else 1.05 * W)
        if cls == PERSON:
            colors = np.stack([rng.uniform(0.45, 0.8, 3) * (1, 0.8, 0.65),  # skin
                               rng.uniform(0.05, 0.9, 3), rng.uniform(0.05, 0.5, 3)]).astype(np.float32)
            body = float(rng.uniform(29, 33))
        elif cls == BICYCLE:
            colors = np.stack([rng.uniform(0.0, 0.3, 3), rng.uniform(0.1, 0.9, 3), np.full(3, 0.08)]).astype(np.float32)
            body = 0.0
        else:
            c = rng.uniform(0.05, 0.9, 3)
            colors = np.stack([c * 0.5 + 0.15, c, np.full(3, 0.05)]).astype(np.float32)
            body = 0.0
        return _Track(tid, cls, x, y, direction * speed, float(rng.normal(0, 0.002 * H)), colors,
                      bool(rng.random() < cfg.crossover_fraction), bool(rng.random() < 0.7), body,
                      float(rng.uniform(0, 2 * math.pi)))

    def _step(self, rng: np.random.Generator, scene: _Scene, tr: _Track) -> None:
        cfg = self.cfg
        tr.x += tr.vx
        tr.y = float(np.clip(tr.y + tr.vy, scene.horizon + 0.08 * (cfg.height - scene.horizon), cfg.height * 1.02))
        tr.vy += float(rng.normal(0, 0.0005 * cfg.height))
        tr.phase += 0.9
        if tr.x < -0.15 * cfg.width or tr.x > 1.15 * cfg.width:  # left the view: a new object enters
            new = self._new_track(rng, scene, tr.track_id, edge=True)
            new.track_id = tr.track_id + 1000  # a different physical object
            tr.__dict__.update(new.__dict__)

    def _temperatures(self, scene: _Scene, tr: _Track, box) -> tuple[float, float, float]:
        """(part0, part1, part2) surface temperatures of a track's parts, °C."""
        A = scene.ambient
        sun = 1.0 if scene.condition == "day" else 0.3 if scene.condition == "fog" else 0.0
        if tr.crossover:
            x0, y0, x1, y1 = [int(round(v)) for v in box]
            x0, y0 = max(0, x0), max(0, y0)
            x1, y1 = min(self.cfg.width, max(x0 + 1, x1)), min(self.cfg.height, max(y0 + 1, y1))
            t = float(np.median(scene.temp_bg[y0:y1, x0:x1])) if x1 > x0 and y1 > y0 else A
            return t, t, t
        if tr.class_id == PERSON:
            return tr.body_temp + 3.0, tr.body_temp, tr.body_temp - 2.0  # face, clothed torso, legs
        if tr.class_id == BICYCLE:
            return A + 4 + 4 * sun, A + 1 + 6 * sun, A + 2  # frame heats in sun, tyres from the road
        if tr.running:
            return A + 3 + 8 * sun, A + 6 + 8 * sun, A + 22  # glass, body, hot tyres/exhaust
        return A + 2 + 10 * sun, A + 1 + 12 * sun, A + 1

    def _compose(self, scene: _Scene, tracks, skip=None):
        """Noise-free scene content of one frame: (albedo, temperature, instance ids, distractors,
        drawn objects as (k, track, box)). ``skip``: a track left out (the frame without it)."""
        cfg = self.cfg
        albedo = scene.albedo_bg.copy()
        temp = scene.temp_bg.copy()
        inst = np.zeros((cfg.height, cfg.width), np.uint16)
        distractors = []
        # distractors are static scene content, behind moving objects
        for kind, dx, dy, color in scene.distractors:
            s = scene._scale(dy)
            box = _object_box(PERSON, dx, dy, s)
            if kind == "hot":
                _draw_object(temp, PERSON, box, [34.0, 32.0, 31.0])
            else:
                c = [tuple(float(v) for v in color * 0.9 + 0.05), tuple(float(v) for v in color), (0.2, 0.2, 0.25)]
                _draw_object(albedo, PERSON, box, c)
            distractors.append({"kind": kind, "box": [float(v) for v in box]})
        # moving objects far to near, so nearer objects occlude farther ones
        order = sorted(tracks, key=lambda tr: tr.y)
        drawn = []
        for k, tr in enumerate(order, start=1):
            if tr is skip:
                continue
            box = _object_box(tr.class_id, tr.x, tr.y, scene._scale(tr.y))
            _draw_object(albedo, tr.class_id, box, [tuple(map(float, c)) for c in tr.colors], tr.phase)
            _draw_object(temp, tr.class_id, box, list(self._temperatures(scene, tr, box)), tr.phase)
            _draw_object(inst, tr.class_id, box, [k, k, k], tr.phase)
            drawn.append((k, tr, box))
        for occ in scene.occluders:
            _draw_occluder(inst, occ, 0)
            _draw_occluder(temp, occ, scene.ambient - 1.0)
            _draw_occluder(albedo, occ, (0.15, 0.3, 0.12) if occ[0] == "bush" else (0.35, 0.35, 0.38))
        return albedo, temp, inst, distractors, drawn

    def _render(self, rng, scene: _Scene, tracks, homography, seq_id, frame, sv_ns, st_ns,
                visibility: bool = False, to_input=None) -> SynthPair:
        cfg = self.cfg
        W, H = cfg.width, cfg.height
        albedo, temp, inst, distractors, drawn = self._compose(scene, tracks)
        # visible fraction per object: visible pixels vs the object's own full shape
        counts = np.bincount(inst.ravel(), minlength=len(drawn) + 1)
        objects, lut = [], np.zeros(len(drawn) + 1, np.uint8)
        remap = np.zeros(len(drawn) + 1, np.uint16)
        kept = []
        for k, tr, box in drawn:
            full, (x0, y0, x1, y1) = self._full_shape(tr, box)
            cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(W), x1), min(float(H), y1)
            if cx1 - cx0 < 2 or cy1 - cy0 < 2 or counts[k] == 0:
                continue  # outside the view or fully hidden: no label, pixels stay unlabeled
            vis_frac = float(min(1.0, counts[k] / max(full, 1)))
            occ = 0 if vis_frac >= 0.8 else 1 if vis_frac >= 0.35 else 2
            new_id = len(objects) + 1
            remap[k] = new_id
            lut[new_id] = tr.class_id
            objects.append(SynthObject(new_id, tr.class_id, (cx0, cy0, cx1, cy1), vis_frac, occ, tr.crossover,
                                       float(self._temperatures(scene, tr, box)[1]), tr.track_id))
            kept.append(tr)
        inst = remap[inst]
        semantic = lut[: len(objects) + 1][inst]

        noise_state = rng.bit_generator.state if visibility else None
        visible = self._visible(rng, scene, albedo, drawn)
        thermal = self._thermal(rng, scene, temp, homography)
        pair = SynthPair(visible, thermal, semantic, inst, objects, scene.condition, homography.copy(),
                         sv_ns, st_ns, seq_id, frame, scene.ambient, distractors)
        if visibility:
            pair.visibility = self._visibility(scene, tracks, kept, homography, noise_state, visible, thermal,
                                               (albedo, temp, drawn), (self.seed, seq_id, frame), to_input)
        return pair

    def _visibility(self, scene: _Scene, tracks, kept, homography, noise_state, visible, thermal, content,
                    key, to_input=None) -> list[dict]:
        """Each labelled object's ideal-observer detectability in each camera: the frame rendered
        with the object against the same frame rendered without it, under the *same* sensor noise, so
        their difference is the object's whole signal (its shape, texture and colour, what it hides,
        its headlights); k = sqrt(sum of (difference / noise sigma)^2) over the camera's own pixels.
        That is the detectability index d' of an observer that knows the object and the background
        exactly (signal known exactly, white noise; Barrett & Myers, Foundations of Image Science
        ch. 13): no detector does better, and Rose's criterion (k >= about 5) is where one starts to
        see it. Visible: the noise is measured per pixel and channel from a second noise draw
        (smoothed over about 3 px; at least the 8-bit step, 1/sqrt(12)), as if the channels were
        independent, as a colour camera's are; thermal: the generator's NETD in counts.

        ``to_input``: the same in a model's 8-bit input (both frames through ``to_input``), with the
        noise of each input pixel measured the same way from the second draw and at least the 8-bit
        step's 1/12 (what the window's quantization leaves of a faint signal)."""
        def fresh(state):
            g = np.random.Generator(np.random.PCG64())
            g.bit_generator.state = state
            return g

        def local_var(a, b):   # per-element noise variance from two independent draws, at least 1/12
            d = a.astype(np.float32) - b.astype(np.float32)
            return np.maximum(cv2.GaussianBlur(d * d / 2.0, (0, 0), 3.0), 1.0 / 12.0)

        albedo0, temp0, drawn0 = content
        alt = np.random.default_rng([*key, 7])  # a second, independent noise draw of the same frame
        v2 = self._visible(alt, scene, albedo0, drawn0)
        var_v = local_var(visible, v2)
        var_t = (self.cfg.thermal_netd_k * COUNTS_PER_KELVIN) ** 2 + 1.0 / 12.0
        if to_input is not None:
            vin, tin = to_input(visible, thermal)
            vin2, tin2 = to_input(v2, self._thermal(alt, scene, temp0, homography))
            var_vi, var_ti = local_var(vin, vin2), local_var(tin, tin2)
        out = []
        for tr in kept:
            albedo, temp, _, _, drawn = self._compose(scene, tracks, skip=tr)
            g = fresh(noise_state)
            v_wo = self._visible(g, scene, albedo, drawn)
            t_wo = self._thermal(g, scene, temp, homography)
            dv = visible.astype(np.float32) - v_wo.astype(np.float32)
            dt = thermal.astype(np.float32) - t_wo.astype(np.float32)
            row = {"visible_k": detectability_index(dv, var_v), "thermal_k": detectability_index(dt, var_t)}
            if to_input is not None:
                vi, ti = to_input(v_wo, t_wo)
                row["visible_input_k"] = detectability_index(vin.astype(np.float32) - vi, var_vi)
                row["thermal_input_k"] = detectability_index(tin.astype(np.float32) - ti, var_ti)
            out.append(row)
        return out

    def _full_shape(self, tr: _Track, box) -> tuple[int, tuple[float, float, float, float]]:
        """(pixel count, tight pixel-edge box) of the object's whole shape drawn alone.

        The shape is rasterized in a patch translated by whole pixels, so it covers exactly
        the pixels it covers in the frame (thick strokes reach past the nominal box)."""
        x0, y0, x1, y1 = box
        pad = int(math.ceil(0.15 * (y1 - y0))) + 3
        ox, oy = int(math.floor(x0)) - pad, int(math.floor(y0)) - pad
        w, h = int(math.ceil(x1)) - ox + pad + 1, int(math.ceil(y1)) - oy + pad + 1
        patch = np.zeros((h, w), np.uint8)
        _draw_object(patch, tr.class_id, (x0 - ox, y0 - oy, x1 - ox, y1 - oy), [1, 1, 1], tr.phase)
        ys, xs = np.nonzero(patch)
        if len(xs) == 0:
            return 0, box
        return len(xs), (float(xs.min() + ox), float(ys.min() + oy), float(xs.max() + ox + 1), float(ys.max() + oy + 1))

    def _visible(self, rng, scene: _Scene, albedo: np.ndarray, drawn) -> np.ndarray:
        cond = scene.condition
        img = albedo * scene.illum[..., None] * scene.tint
        if cond in ("night", "dusk"):
            glare = np.zeros(img.shape[:2], np.float32)
            for lx, ly, _ in scene.lights:  # lamp heads
                cv2.circle(glare, (int(lx), int(ly)), max(2, self.cfg.width // 80), 3.0, -1)
            for _, tr, box in drawn:  # headlights of running cars
                if tr.class_id == CAR and tr.running:
                    x0, y0, x1, y1 = box
                    hx = x1 - 0.03 * (x1 - x0) if tr.vx > 0 else x0 + 0.03 * (x1 - x0)
                    cv2.circle(glare, (int(hx), int(y0 + 0.55 * (y1 - y0))), max(2, int(0.08 * (y1 - y0))), 4.0, -1)
            k = max(3, (self.cfg.width // 40) | 1)
            glare = cv2.GaussianBlur(glare, (0, 0), k / 2.0)
            img += glare[..., None] * np.array([1.0, 0.95, 0.8], np.float32)
        if scene.fog is not None:
            img = img * (1 - scene.fog[..., None]) + 0.78 * scene.fog[..., None]
        # sensor: shot-like noise grows as light falls, then gamma and 8-bit quantization
        sigma = {"day": 0.008, "fog": 0.01, "dusk": 0.015, "night": 0.012}[cond]
        img += rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * sigma
        img = np.clip(img, 0, 1)
        lut = (np.linspace(0, 1, 4096) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
        return lut[(img * 4095).astype(np.int32)]

    def _thermal(self, rng, scene: _Scene, temp: np.ndarray, homography: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        tw, th = cfg.thermal_size
        lin = cfg.width / tw
        # optics blur + pixel integration; then sample through the thermal camera's geometry
        blurred = cv2.GaussianBlur(temp, (0, 0), max(0.7, 0.5 * lin))
        t = cv2.warpPerspective(blurred, homography, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
        counts = (t + KELVIN_OFFSET) * COUNTS_PER_KELVIN
        counts = counts + scene.nuc_counts + scene.fpn[None, :]
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * (cfg.thermal_netd_k * COUNTS_PER_KELVIN)
        return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


