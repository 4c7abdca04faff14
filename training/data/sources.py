"""Data sources: every dataset a user has, as one sequence of preprocessed items.

``data:`` in an experiment names the source (``type``) and where it lives:

===============  =========================================================================
synthetic        the project's generator, in memory (``pairs``, ``seed``, rig size, ...)
kaist            ``root`` with ``imageSets/<split>.txt`` (``annotations``: bbGt folder name,
                 ``paired`` or a JSON path; ``thermal_dir``: ``lwir``, or ``lwir16`` for the
                 synthetic writer's lossless radiometric PNGs)
flir_aligned     ``root`` with ``align_<split>.txt``
llvip            ``root`` with ``visible/<split>/``
mfnet            ``root`` with ``<split>.txt`` (segmentation)
vedai            ``root`` with ``<fold>.txt`` (``split`` names the fold list), ``resolution``
coco             ``annotation_file`` (default ``root/annotations.json``), images under ``root``
captures         a labeled fleet-capture dataset: the COCO multispectral layout written by
                 ``captures import`` (``root/annotations.json``; each image names its
                 ``thermal_file_name``)
voc              ``root`` = ``VOC2007``-like folder (visible only)
===============  =========================================================================

Every source yields :class:`PoolItem` s made by the RUNTIME's preprocessing, the same way for
all of them: letterbox to the model input, thermal to [0, 1] (8-bit as is, 16-bit radiometric
through the node's default :class:`ThermalNormalization` window), one warp into the visible
grid (the synthetic writer's true homography where ``synth_meta.jsonl`` has it, otherwise the
scale between the two image sizes: the public datasets are registered). Synthetic items are
generated once and kept in memory; disk items are read when asked for (DataLoader workers do
that in parallel), so a dataset of any size trains in bounded memory.

Several sources train together with ``also:`` (a list of further ``data:`` entries, each with
``repeat``: how many times its items appear per pass): the fleet's fine-tuning is the original
training data plus the imported labels, ``data: {type: synthetic, ..., also: [{type: captures,
root: fleet/labels, repeat: 2}]}``. Evaluation uses the first source's split.

Class names are matched by name (with the usual aliases: bike = bicycle, pedestrian = person);
objects of classes the model does not have are dropped and counted. Ignore regions (KAIST
``people``/``cyclist``/``person?``, VOC ``difficult``, COCO ``iscrowd``) are kept with
``ignore`` set: evaluation ignores detections on them as the benchmarks do; training leaves them
out of the targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms_perception.core.frames import Frame
from ms_perception.core.preprocess import (
    Letterbox,
    ThermalNormalization,
    thermal_input,
)
from ms_perception.synth.generator import CLASS_NAMES, SynthConfig, SyntheticGenerator

SEG_IGNORE = 255                      # letterbox padding in label maps
SOURCES = ("synthetic", "kaist", "flir_aligned", "llvip", "mfnet", "vedai", "coco", "captures", "voc")
_ALIASES = {"bicycle": ("bicycle", "bike"), "bike": ("bike", "bicycle"), "person": ("person", "pedestrian"),
            "pedestrian": ("pedestrian", "person")}
_DEFAULT_SPLIT = {"kaist": "train", "flir_aligned": "train", "llvip": "train", "mfnet": "train", "voc": "trainval"}
_DEFAULT_TEST_SPLIT = {"kaist": "test", "flir_aligned": "validation", "llvip": "test", "mfnet": "test",
                       "voc": "test"}


@dataclass
class DataConfig:
    type: str = "synthetic"
    # disk datasets
    root: str = ""
    split: str = ""                   # image list / split name (default: the dataset's training split)
    annotations: str = "annotations"  # KAIST: bbGt folder, "paired", or a JSON path
    thermal_dir: str = "lwir"         # KAIST thermal folder (lwir16: the synthetic writer's 16-bit PNGs)
    annotation_file: str = ""         # COCO / captures (default root/annotations.json)
    resolution: int = 512             # VEDAI image size folder
    limit: int = 0                    # use only the first N items (0: all)
    workers: int = 2                  # DataLoader worker processes (0: load in the training process)
    # synthetic generator
    pairs: int = 400                  # pool of generated pairs, reused across epochs with flips
    width: int = 640                  # rig resolution (the runtime letterboxes to the model input)
    height: int = 512
    thermal_factor: int = 4           # the synthetic thermal CAMERA's pixel factor (not the model's)
    night_fraction: float = 0.4
    crossover_fraction: float = 0.1   # objects at the background's temperature (vanish in thermal)
    sequence_length: int = 20         # frames per generated scene (fewer: more distinct scenes per pair)
    seed: int = 1
    # more sources trained together with this one (the fleet's fine-tuning: original data + labels)
    also: list["DataConfig"] = field(default_factory=list)
    repeat: int = 1                   # this source's items appear this many times per pass (over-sampling)

    def __post_init__(self):
        from ms_perception_training.config import ConfigError
        if self.type not in SOURCES:
            raise ConfigError(f"data.type must be one of {list(SOURCES)}, got {self.type!r}")
        if self.type != "synthetic" and not self.root and not self.annotation_file:
            raise ConfigError(f"data.type {self.type!r} needs data.root (the dataset's folder)")
        if self.workers < 0 or self.limit < 0:
            raise ConfigError("data.workers and data.limit must be >= 0")
        if not 0.0 <= self.crossover_fraction <= 1.0:
            raise ConfigError(f"data.crossover_fraction must lie in [0, 1], got {self.crossover_fraction}")
        if self.repeat < 1:
            raise ConfigError(f"data.repeat must be >= 1, got {self.repeat}")
        for i, a in enumerate(self.also):
            if a.also:
                raise ConfigError(f"data.also[{i}] has its own 'also': list every source in the top-level data.also")


SynthDataConfig = DataConfig          # the synthetic source's settings are DataConfig's defaults


@dataclass
class PoolItem:
    visible: np.ndarray               # (H, W, 3) uint8 at the model input
    thermal: np.ndarray               # (H, W) uint8, registered, full model resolution
    boxes: np.ndarray                 # (n, 4) xyxy at the model input
    labels: np.ndarray                # (n,) model class indices
    semantic: np.ndarray              # (H, W) uint8 model class ids (SEG_IGNORE on padding)
    condition: str                    # "day" | "night" | ...
    rig_boxes: np.ndarray             # (n, 4) in rig (original image) pixels (evaluation)
    occlusion: np.ndarray             # (n,)
    letterbox: Letterbox
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))   # (n,) benchmark ignore regions
    name: str = ""

    def __post_init__(self):
        if len(self.ignore) != len(self.boxes):
            self.ignore = np.zeros(len(self.boxes), bool)


def class_lut(source_names, model_names) -> np.ndarray:
    """Source class id -> model class index (−1: the model has no such class), matched by name."""
    lowered = [c.lower() for c in model_names]
    lut = np.full(max(256, len(source_names)), -1, np.int64)
    for sid, name in enumerate(source_names):
        for alias in _ALIASES.get(name.lower(), (name.lower(),)):
            if alias in lowered:
                lut[sid] = lowered.index(alias)
                break
    return lut


def seg_class_map(class_names: list[str]) -> np.ndarray:
    """Generator class id -> model class id (0 = the model's first class, background/unlabeled)."""
    return np.where(class_lut(CLASS_NAMES, class_names) < 0, 0, class_lut(CLASS_NAMES, class_names)).astype(np.uint8)


def letterbox_labels(labels: np.ndarray, lb: Letterbox) -> np.ndarray:
    import cv2
    (nh, nw), (px, py), (h, w) = lb.size_hw, lb.pad, lb.dst_hw
    r = cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(r, py, h - nh - py, px, w - nw - px, cv2.BORDER_CONSTANT, value=SEG_IGNORE)


def preprocess(mcfg, visible: np.ndarray, thermal: np.ndarray | None, thermal_to_visible: np.ndarray | None,
               rig_boxes: np.ndarray, labels: np.ndarray, semantic: np.ndarray | None, condition: str | None,
               occlusion: np.ndarray, ignore: np.ndarray, name: str = "",
               norm: ThermalNormalization | None = None) -> PoolItem:
    """One pair through the runtime's preprocessing. ``thermal``: (h, w) uint8 (mono8) or uint16
    (radiometric counts); ``thermal_to_visible``: 3×3 homography (None: scale the thermal image
    onto the visible one); ``semantic``: label map of model class ids at the visible size."""
    H, W = mcfg.input.height, mcfg.input.width
    lb = Letterbox.fit(visible.shape[:2], (H, W))
    vis = lb.apply(visible)
    if thermal is not None:
        enc = "mono8" if thermal.dtype == np.uint8 else "mono16"
        if thermal_to_visible is None:
            th_h, th_w = thermal.shape[:2]
            thermal_to_visible = np.diag([visible.shape[1] / th_w, visible.shape[0] / th_h, 1.0])
        th = thermal_input(Frame(thermal, 0, enc), norm or ThermalNormalization(), thermal_to_visible, lb, (H, W))
    else:
        th = np.zeros((H, W), np.uint8)
    rig = np.asarray(rig_boxes, np.float32).reshape(-1, 4)
    sx, sy = lb.scale_xy
    scale = np.array([sx, sy], np.float32)
    pad = np.array(lb.pad, np.float32)
    boxes = np.concatenate([rig[:, :2] * scale + pad, rig[:, 2:] * scale + pad], 1) if len(rig) else rig.copy()
    sem = letterbox_labels(semantic.astype(np.uint8), lb) if semantic is not None else np.zeros((0, 0), np.uint8)
    return PoolItem(vis, th, boxes.astype(np.float32), np.asarray(labels, np.int64), sem, condition or "",
                    rig, np.asarray(occlusion, np.int64), lb, np.asarray(ignore, bool), name)


# ----------------------------------------------------------------------------- synthetic


def synth_generator(d: DataConfig) -> SyntheticGenerator:
    """The generator behind the synthetic source: ``gen.pairs(d.pairs)`` are the pool's pairs in order."""
    return SyntheticGenerator(SynthConfig(width=d.width, height=d.height, thermal_factor=d.thermal_factor,
                                          night_fraction=d.night_fraction, crossover_fraction=d.crossover_fraction,
                                          misregistration_px=0.0,
                                          sequence_length=d.sequence_length), d.seed)


def make_pool(mcfg, d: DataConfig) -> list[PoolItem]:
    """The synthetic source: ``d.pairs`` generated pairs, preprocessed, in memory."""
    if d.type != "synthetic":
        raise ValueError(f"data.type {d.type!r}: this command reads the synthetic source only (train active does "
                         "not read datasets on disk yet); use data.type: synthetic")
    gen = synth_generator(d)
    seg = mcfg.task == "segmentation"
    lut = seg_class_map(mcfg.class_names) if seg else None
    pool = []
    for sp in gen.pairs(d.pairs):
        objs = [o for o in sp.objects if CLASS_NAMES[o.class_id] in mcfg.class_names]
        rig = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
        labels = np.array([mcfg.class_names.index(CLASS_NAMES[o.class_id]) for o in objs], np.int64)
        pool.append(preprocess(mcfg, sp.visible, sp.thermal_raw, sp.homography, rig, labels,
                               lut[sp.semantic] if seg else None, sp.condition,
                               np.array([o.occlusion for o in objs], np.int64), np.zeros(len(objs), bool)))
    return pool


# ----------------------------------------------------------------------------- disk datasets


def read_records(d: DataConfig, split: str | None = None):
    """(records, class names) of a disk source; ``split`` overrides ``d.split``."""
    from ms_perception_training.data import readers
    split = split or d.split or _DEFAULT_SPLIT.get(d.type, "")
    root = Path(d.root)
    if d.type == "kaist":
        return readers.read_kaist(root, split, d.annotations, d.thermal_dir), readers.KAIST_CLASSES
    if d.type == "flir_aligned":
        return readers.read_flir_aligned(root, split), readers.FLIR_CLASSES
    if d.type == "llvip":
        return readers.read_llvip(root, split), readers.LLVIP_CLASSES
    if d.type == "mfnet":
        return readers.read_mfnet(root, split), readers.MFNET_CLASSES
    if d.type == "vedai":
        if not split:
            raise ValueError("data.type vedai needs data.split: the fold list (e.g. fold01 or fold01test)")
        return readers.read_vedai(root, split, d.resolution), readers.VEDAI_CLASSES
    if d.type == "voc":
        return readers.read_voc(root, split), readers.VOC_CLASSES
    if d.type in ("coco", "captures"):
        ann = Path(d.annotation_file) if d.annotation_file else root / (f"{split}.json" if split else "annotations.json")
        records, classes = readers.read_coco(ann, root if d.root else None)
        return records, classes
    raise ValueError(f"data.type {d.type!r} is not a disk dataset")


class RecordPool:
    """A disk dataset as a sequence of :class:`PoolItem`: item ``i`` is read and preprocessed
    when asked for (no cache: workers re-read, which keeps memory flat for any dataset size)."""

    def __init__(self, mcfg, records, classes, root: Path | None = None, log=print):
        self.mcfg, self.records, self.classes = mcfg, list(records), tuple(classes)
        if not self.records:
            raise ValueError("the dataset has no items: check data.root and data.split")
        self.lut = class_lut(("__background__",) + self.classes, mcfg.class_names)   # readers' labels are 1-based
        self.seg_lut = class_lut(self.classes, mcfg.class_names)                     # label maps are 0-based
        from ms_perception_training.data.readers import _synth_meta
        self.meta = _synth_meta(Path(root)) if root else {}
        self.dropped = {}
        for r in self.records:
            for lab in r.labels[self.lut[r.labels] < 0]:
                name = self.classes[lab - 1]
                self.dropped[name] = self.dropped.get(name, 0) + 1
        if self.dropped:
            log(f"data: objects of classes the model does not have were left out: {self.dropped} "
                f"(the model's classes: {list(mcfg.class_names)})")
        if mcfg.uses_thermal and any(r.thermal_path is None for r in self.records):
            raise ValueError(f"{mcfg.name} needs a thermal image but the dataset has visible images only")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> PoolItem:
        from ms_perception_training.data import readers
        r = self.records[i]
        vis = readers.load_visible(r.visible_path)
        th = readers.load_thermal(r.thermal_path) if r.thermal_path is not None and self.mcfg.uses_thermal else None
        meta = self.meta.get(r.name) or self.meta.get(Path(r.name).stem) or {}
        if not meta and "homography_thermal_to_visible" in (r.extra or {}):   # captures: the robot's registration
            meta = {"homography_thermal_to_visible": r.extra["homography_thermal_to_visible"]}
        hom = None
        if th is not None and "homography_thermal_to_visible" in meta:
            # the writer's true homography is for the thermal CAMERA's pixels; a layout that stores
            # the thermal image at another size (MFNet: resized to RGB) gets the scale composed in
            cam_w, cam_h = meta.get("thermal_size", th.shape[1::-1])
            hom = np.array(meta["homography_thermal_to_visible"], np.float64) @ \
                np.diag([cam_w / th.shape[1], cam_h / th.shape[0], 1.0])
        sem = None
        if r.label_path is not None:
            lab = readers.load_label_map(r.label_path)
            if lab.shape != vis.shape[:2]:
                raise ValueError(f"{r.label_path}: label map is {lab.shape[::-1]} but the image is "
                                 f"{vis.shape[1::-1]} (w, h)")
            ids = self.seg_lut[np.clip(lab, 0, len(self.seg_lut) - 1)]
            sem = np.where(ids < 0, 0, ids)
        keep = self.lut[r.labels] >= 0
        cond = meta.get("condition") or r.condition
        return preprocess(self.mcfg, vis, th, hom, r.boxes[keep], self.lut[r.labels[keep]], sem, cond,
                          r.occlusion[keep], r.ignore[keep], r.name)


def open_one(mcfg, d: DataConfig, split: str | None = None, log=print):
    """The items of one source ``d`` (for ``split``, default ``d.split``): a list (synthetic) or
    a lazy :class:`RecordPool` (disk). ``d.limit`` keeps the first N."""
    if d.type == "synthetic":
        return make_pool(mcfg, d)
    records, classes = read_records(d, split)
    if d.limit:
        records = records[:d.limit]
    return RecordPool(mcfg, records, classes, Path(d.root) if d.root else None, log)


class ConcatPool:
    """Sources trained together: item ``i`` of the concatenation, each part repeated ``repeat``
    times. ``parts``: (items, repeat, DataConfig) in order."""

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(items) * rep for items, rep, _ in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> PoolItem:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        items = self.parts[k][0]
        return items[(i - int(self.offsets[k])) % len(items)]


def open_source(mcfg, d: DataConfig, split: str | None = None, log=print):
    """The training items of ``d``: one source as :func:`open_one` gives it, or, with ``also``
    (or ``repeat`` > 1), a :class:`ConcatPool` of every source."""
    main = open_one(mcfg, d, split, log)
    if not d.also and d.repeat == 1:
        return main
    parts = [(main, d.repeat, d)]
    for a in d.also:
        items = open_one(mcfg, a, None, log)
        log(f"data: also {a.type} {a.root or ''}: {len(items)} items x {a.repeat}")
        parts.append((items, a.repeat, a))
    return ConcatPool(parts)


def eval_split(d: DataConfig) -> str:
    """The dataset's own evaluation split (``eval.split`` overrides)."""
    return _DEFAULT_TEST_SPLIT.get(d.type, "")
