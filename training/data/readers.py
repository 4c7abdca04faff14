"""Dataset readers: parse each dataset's real on-disk layout into :class:`Record` objects.

No torch here (the torch ``Dataset`` wrappers live in ``datasets.py``). Every reader
returns boxes as ``xyxy`` float32 in 0-based pixel-edge coordinates of the visible image,
following each dataset's own origin convention (Pascal VOC and LLVIP XML: 1-based inclusive
indices, converted; FLIR-aligned XML: 0-based, kept; KAIST bbGt: kept as written, as its devkit
compares them), clipped to the image where its size is known (``Record.truncated`` flags the
boxes that reached outside; boxes with nothing left inside are dropped), integer ``labels`` starting
at 1 for the dataset's class list, ``ignore`` flags (benchmark ignore regions, VOC
``difficult``, COCO ``iscrowd``), ``occlusion`` and box ``height``.

Malformed annotations raise :class:`FormatError` naming the file and line; a missing image
raises ``FileNotFoundError`` naming the path.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ms_perception.formats.errors import FormatError, read_json
from ms_perception.formats.kaist import (
    KAIST_REGULAR_LABELS,
    condition_from_name,
    load_kaist_json,
    read_bbgt,
    read_image_list,
)

KAIST_CLASSES = ("person",)
FLIR_CLASSES = ("person", "bicycle", "car")
LLVIP_CLASSES = ("person",)
MFNET_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# VEDAI class codes (Razakarivony & Jurie 2016) -> names; the common 8-class protocol drops
# motorcycle (7), bus (8) and plane (31), which have too few instances.
VEDAI_CODES = {1: "car", 2: "truck", 4: "tractor", 5: "camping_car", 9: "van", 10: "other", 11: "pickup", 23: "boat"}
VEDAI_CLASSES = tuple(VEDAI_CODES.values())


@dataclass
class Record:
    """One multispectral sample on disk, parsed but not yet loaded."""

    name: str
    visible_path: Path | None
    thermal_path: Path | None
    boxes: np.ndarray  # (N, 4) xyxy float32, visible pixels
    labels: np.ndarray  # (N,) int64, 1-based class index into the dataset's class tuple
    ignore: np.ndarray  # (N,) bool
    occlusion: np.ndarray  # (N,) int64 (0 when the dataset has none)
    condition: str | None = None  # "day" / "night" / None
    label_path: Path | None = None  # semantic label map (segmentation datasets)
    thermal_boxes: np.ndarray | None = None  # KAIST paired annotations: boxes in the thermal image
    extra: dict = field(default_factory=dict)
    truncated: np.ndarray | None = None  # (N,) bool: the annotated box reached outside the image (clipped)

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]


def _arrays(boxes, labels, ignore, occ):
    n = len(boxes)
    return (np.asarray(boxes, np.float32).reshape(n, 4), np.asarray(labels, np.int64).reshape(n),
            np.asarray(ignore, bool).reshape(n), np.asarray(occ, np.int64).reshape(n))


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to an image of ``size`` (w, h). Returns (clipped boxes, keep, truncated):
    ``keep`` drops boxes with no area left inside the image, ``truncated`` marks the boxes that
    reached outside it. An unknown size (0) leaves the boxes as they are."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    w, h = size
    if w <= 0 or h <= 0:
        return boxes, np.ones(len(boxes), bool), np.zeros(len(boxes), bool)
    lim = np.array([w, h, w, h], np.float32)
    clipped = np.clip(boxes, 0, lim)
    truncated = np.any(clipped != boxes, axis=1)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep, truncated


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _first_existing(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"{what} not found; looked for {', '.join(str(c) for c in candidates)}")


def _read_list(path: Path) -> list[str]:
    _require(path, "split list")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------ KAIST


def _kaist_image(root: Path, name: str, modality: str) -> Path:
    s, v, i = name.split("/")
    # setXX/VYYY/<modality>/I.jpg (KAIST), or <modality>/setXX/VYYY/I.png (the synthetic writer's lwir16)
    return _first_existing([root / s / v / modality / f"{i}{ext}" for ext in (".jpg", ".png")]
                           + [root / modality / s / v / f"{i}.png"], f"KAIST {modality} image for {name}")


def _kaist_objects(objs):
    boxes, labels, ignore, occ = [], [], [], []
    for o in objs:
        x, y, w, h = o.box
        boxes.append((x, y, x + w, y + h))
        labels.append(1)  # everything is 'person'; the other labels are ignore regions
        ignore.append(bool(o.ignore) or o.label not in KAIST_REGULAR_LABELS)
        occ.append(o.occlusion)
    return _arrays(boxes, labels, ignore, occ)


def read_kaist(root: str | Path, image_set: str | Path = "test", annotations: str = "annotations",
               thermal_dir: str = "lwir") -> list[Record]:
    """KAIST: ``image_set`` names ``imageSets/<image_set>.txt`` (e.g. ``train-all-02``,
    ``test-all-20``) or is a path to such a list.

    ``annotations``: ``"annotations"`` (original or sanitized bbGt folder, whichever is at
    that name), ``"paired"`` (``annotations-paired/setXX/VYYY/{visible,lwir}/I.txt``: boxes
    per modality; visible boxes in ``boxes``, thermal ones in ``thermal_boxes``), or a path
    to the improved-test COCO-like JSON. Labels ``people``, ``person?`` and ``cyclist`` are
    kept as ignore regions, as the benchmark does.
    """
    root = Path(root)
    lst = Path(image_set) if Path(image_set).suffix == ".txt" else root / "imageSets" / f"{image_set}.txt"
    names = read_image_list(_require(lst, "KAIST image list"))
    meta = _synth_meta(root)
    records = []
    json_gt = None
    if str(annotations).endswith(".json"):
        json_gt = {g.name: g for g in load_kaist_json(annotations)}
    for name in names:
        vis, th = _kaist_image(root, name, "visible"), _kaist_image(root, name, thermal_dir)
        thermal_boxes = None
        if json_gt is not None:
            if name not in json_gt:
                raise FormatError(str(annotations), None, f"image {name} of {lst} has no entry in the JSON")
            g = json_gt[name]
            b = g.boxes.copy()
            b[:, 2:] += b[:, :2]
            boxes, labels, ignore, occ = _arrays(b, np.ones(len(b)), g.ignore, g.occlusion)
        elif annotations == "paired":
            s, v, i = name.split("/")
            base = root / "annotations-paired" / s / v
            boxes, labels, ignore, occ = _kaist_objects(read_bbgt(base / "visible" / f"{i}.txt"))
            thermal_boxes = _kaist_objects(read_bbgt(base / "lwir" / f"{i}.txt"))[0]
        else:
            boxes, labels, ignore, occ = _kaist_objects(read_bbgt(root / annotations / f"{name}.txt"))
        cond = meta.get(name, {}).get("day_night") or condition_from_name(name)
        records.append(Record(name, vis, th, boxes, labels, ignore, occ, cond, thermal_boxes=thermal_boxes))
    return records


def _synth_meta(root: Path) -> dict[str, dict]:
    """``synth_meta.jsonl`` written by the synthetic generator (absent for real datasets)."""
    p = root / "synth_meta.jsonl"
    if not p.exists():
        return {}
    return {m["name"]: m for m in (json.loads(line) for line in p.read_text().splitlines() if line.strip())}


# ------------------------------------------------------------------------ Pascal VOC XML


def parse_voc_xml(path: Path, classes: tuple[str, ...], drop_unknown: bool = True, origin: int = 1):
    """Pascal VOC XML -> (boxes xyxy 0-based pixel edges, labels, ignore=difficult, size (w, h), truncated).

    ``origin`` is the dataset's convention: 1 for Pascal VOC (1-based inclusive pixel indices:
    ``xmin - 1, ymin - 1, xmax, ymax``), 0 for files already in 0-based edges (FLIR-aligned,
    whose ``xmin`` is 0 at the left border). Boxes are clipped to ``<size>`` when it is given."""
    if origin not in (0, 1):
        raise ValueError(f"origin must be 0 or 1, got {origin}")
    try:
        tree = ET.parse(_require(path, "VOC annotation"))
    except ET.ParseError as exc:
        raise FormatError(str(path), exc.position[0], f"malformed XML: {exc}") from None
    root = tree.getroot()
    size = root.find("size")
    wh = (int(size.findtext("width", "0")), int(size.findtext("height", "0"))) if size is not None else (0, 0)
    boxes, labels, ignore = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in classes:
            if drop_unknown:
                continue
            raise FormatError(str(path), None, f"object {k}: unknown class {name!r}; known: {classes}")
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError, AttributeError):
            raise FormatError(str(path), None, f"object {k} ({name}): bndbox needs numeric xmin/ymin/xmax/ymax") from None
        if x1 < x0 or y1 < y0:
            raise FormatError(str(path), None, f"object {k} ({name}): xmax < xmin or ymax < ymin")
        # origin 1: 1-based inclusive pixel indices -> 0-based pixel edges; origin 0: already edges
        boxes.append((x0 - origin, y0 - origin, x1, y1))
        labels.append(classes.index(name) + 1)
        ignore.append(obj.findtext("difficult", "0").strip() == "1")
    b, lab, ig, _ = _arrays(boxes, labels, ignore, np.zeros(len(boxes)))
    b, keep, truncated = clip_boxes(b, wh)
    return b[keep], lab[keep], ig[keep], wh, truncated[keep]


def read_flir_aligned(root: str | Path, split: str = "train") -> list[Record]:
    """FLIR ADAS aligned: ``JPEGImages/FLIR_#####_{RGB.jpg,PreviewData.jpeg}``, VOC XML in
    ``Annotations/`` (named ``FLIR_#####_PreviewData.xml`` or ``FLIR_#####.xml``), split lists
    ``align_{train,validation}.txt``. Classes person, bicycle, car; others (dog, ...) dropped."""
    root = Path(root)
    split_name = {"val": "validation", "test": "validation"}.get(split, split)
    records = []
    for stem in _read_list(root / f"align_{split_name}.txt"):
        stem = stem.replace("_PreviewData", "").replace("_RGB", "")
        xml = _first_existing([root / "Annotations" / f"{stem}_PreviewData.xml", root / "Annotations" / f"{stem}.xml"],
                              f"FLIR annotation for {stem}")
        boxes, labels, ignore, _, trunc = parse_voc_xml(xml, FLIR_CLASSES, origin=0)
        records.append(Record(stem, _require(root / "JPEGImages" / f"{stem}_RGB.jpg", "FLIR RGB image"),
                              _require(root / "JPEGImages" / f"{stem}_PreviewData.jpeg", "FLIR thermal image"),
                              boxes, labels, ignore, np.zeros(len(boxes), np.int64), truncated=trunc))
    return records


def read_llvip(root: str | Path, split: str = "train") -> list[Record]:
    """LLVIP: ``visible/{train,test}/*.jpg``, ``infrared/{train,test}/*.jpg``, ``Annotations/*.xml``."""
    root = Path(root)
    vis_dir = _require(root / "visible" / split, "LLVIP visible folder")
    records = []
    for vis in sorted(vis_dir.glob("*.jpg")):
        boxes, labels, ignore, _, trunc = parse_voc_xml(root / "Annotations" / f"{vis.stem}.xml", LLVIP_CLASSES)
        records.append(Record(vis.stem, vis, _require(root / "infrared" / split / vis.name, "LLVIP infrared image"),
                              boxes, labels, ignore, np.zeros(len(boxes), np.int64), condition="night",
                              truncated=trunc))
    return records


def read_voc(root: str | Path, image_set: str = "trainval", year: str | None = None) -> list[Record]:
    """PASCAL VOC (mono-spectral): ``root`` is ``VOC2007``-like (``JPEGImages``, ``Annotations``,
    ``ImageSets/Main/<image_set>.txt``). ``difficult`` objects become ignore."""
    root = Path(root)
    if year:
        root = root / f"VOC{year}"
    records = []
    for stem in _read_list(root / "ImageSets" / "Main" / f"{image_set}.txt"):
        boxes, labels, ignore, _, trunc = parse_voc_xml(root / "Annotations" / f"{stem}.xml", VOC_CLASSES)
        records.append(Record(stem, _require(root / "JPEGImages" / f"{stem}.jpg", "VOC image"), None,
                              boxes, labels, ignore, np.zeros(len(boxes), np.int64), truncated=trunc))
    return records


# ------------------------------------------------------------------------------- MFNet


def read_mfnet(root: str | Path, split: str = "train") -> list[Record]:
    """MFNet: ``images/<name>.png`` RGB+T (4 channels), ``labels/<name>.png`` (9 ids), split lists
    ``{train,val,test,test_day,test_night}.txt``; names end in D (day) or N (night)."""
    root = Path(root)
    records = []
    for name in _read_list(root / f"{split}.txt"):
        img = _require(root / "images" / f"{name}.png", "MFNet 4-channel image")
        lab = _require(root / "labels" / f"{name}.png", "MFNet label map")
        cond = {"D": "day", "N": "night"}.get(name[-1:])
        records.append(Record(name, img, img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool),
                              np.zeros(0, np.int64), cond, label_path=lab))
    return records


# ------------------------------------------------------------------------------- VEDAI


def parse_vedai_txt(path: Path, size: tuple[int, int] = (0, 0)):
    """VEDAI per-image annotation: 14 columns
    ``xc yc angle class contained occluded x1 x2 x3 x4 y1 y2 y3 y4`` (corners of the oriented
    box). Boxes are the axis-aligned hull of the 4 corners, clipped to the image ``size`` (w, h;
    corners of vehicles at the border lie outside it); classes outside the 8-class protocol are
    dropped; occluded -> occlusion 1. Returns (boxes, labels, ignore, occlusion, truncated)."""
    boxes, labels, occ = [], [], []
    text = _require(path, "VEDAI annotation").read_text()
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 14:
            raise FormatError(str(path), lineno, f"expected 14 columns 'xc yc angle class contained occluded x1..x4 "
                                                 f"y1..y4', got {len(parts)}")
        try:
            v = [float(p) for p in parts]
        except ValueError:
            raise FormatError(str(path), lineno, f"non-numeric field in {line!r}") from None
        code = int(v[3])
        if code not in VEDAI_CODES:
            continue
        xs, ys = v[6:10], v[10:14]
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
        labels.append(VEDAI_CLASSES.index(VEDAI_CODES[code]) + 1)
        occ.append(int(v[5]))
    b, lab, ig, oc = _arrays(boxes, labels, np.zeros(len(boxes)), occ)
    b, keep, truncated = clip_boxes(b, size)
    return b[keep], lab[keep], ig[keep], oc[keep], truncated[keep]


def read_vedai(root: str | Path, fold: str | Path, resolution: int = 512) -> list[Record]:
    """VEDAI: ``Vehicules<res>/<id>_co.png`` (colour), ``<id>_ir.png`` (infrared),
    ``Annotations<res>/<id>.txt``, fold lists (e.g. ``fold01.txt``) of ids."""
    root = Path(root)
    fold = Path(fold) if Path(fold).suffix == ".txt" else root / f"{fold}.txt"
    records = []
    img_dir = root / f"Vehicules{resolution}"
    for ident in _read_list(fold):
        boxes, labels, ignore, occ, trunc = parse_vedai_txt(root / f"Annotations{resolution}" / f"{ident}.txt",
                                                            (resolution, resolution))
        records.append(Record(ident, _require(img_dir / f"{ident}_co.png", "VEDAI colour image"),
                              _require(img_dir / f"{ident}_ir.png", "VEDAI infrared image"), boxes, labels, ignore, occ,
                              truncated=trunc))
    return records


# -------------------------------------------------------------------------------- COCO


def read_coco(annotation_file: str | Path, image_root: str | Path | None = None) -> tuple[list[Record], tuple[str, ...]]:
    """COCO instances JSON (also the synthetic multispectral one, whose images carry a
    ``thermal_file_name``). Category ids are mapped to contiguous labels 1..K in id order;
    returns (records, class names)."""
    p = Path(annotation_file)
    data = read_json(p, "COCO annotation file")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise FormatError(str(p), None, f"COCO annotation file needs the key {key!r}")
    root = Path(image_root) if image_root else p.parent
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    per_image: dict[int, list] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    records = []
    for im in data["images"]:
        boxes, labels, ignore, occ = [], [], [], []
        for a in per_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            if a["category_id"] not in cat_to_label:
                raise FormatError(str(p), None, f"annotation {a.get('id')}: unknown category_id {a['category_id']}")
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_to_label[a["category_id"]])
            ignore.append(bool(a.get("iscrowd", 0)))
            occ.append(int(a.get("occlusion", 0)))
        th = im.get("thermal_file_name")
        lab = im.get("label_file_name")     # a class-id label map (captures import of segmentation labels)
        records.append(Record(str(im["file_name"]), root / im["file_name"], root / th if th else None,
                              *_arrays(boxes, labels, ignore, occ), condition=im.get("day_night"),
                              label_path=root / lab if lab else None,
                              extra={"image_id": im["id"],
                                     **{k: im[k] for k in ("homography_thermal_to_visible", "ms_perception")
                                        if k in im}}))
    return records, tuple(c["name"] for c in cats)


# ------------------------------------------------------------------------------ images


def load_visible(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). A 4-channel (MFNet) image gives its first three channels."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"cannot read visible image {path} (missing or not an image)")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[..., [2, 1, 0]])
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_thermal(path: Path) -> np.ndarray:
    """Thermal (h, w) uint8 or uint16 as stored. From a 4-channel MFNet image: its 4th channel."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"cannot read thermal image {path} (missing or not an image)")
    if img.ndim == 3:
        img = img[..., 3] if img.shape[2] == 4 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(img)


def load_label_map(path: Path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise FileNotFoundError(f"cannot read label map {path}")
    if lab.ndim != 2:
        raise FormatError(str(path), None, f"a label map must have one channel, this one has {lab.shape[2]}")
    return lab.astype(np.int64)


