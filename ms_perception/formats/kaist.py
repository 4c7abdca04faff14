"""KAIST multispectral pedestrian benchmark: on-disk formats (no torch).

Layout of a KAIST root::

    setXX/VYYY/visible/I#####.jpg      RGB, 640x512
    setXX/VYYY/lwir/I#####.jpg         thermal rendered to 8 bit
    annotations/setXX/VYYY/I#####.txt  bbGt version 3 (one file for both modalities)
    annotations-paired/setXX/VYYY/{visible,lwir}/I#####.txt   per-modality boxes
    imageSets/{train-all-02,test-all-20}.txt   one ``setXX/VYYY/I#####`` per line

bbGt v3 lines are ``label x y w h occ vx vy vw vh ign ang`` after a ``% bbGt version=3``
header. Coordinates are kept exactly as written, in the benchmark's own convention: the KAIST
devkit (and the MLPD JSON converted from these files) compares the raw bbGt values with the raw
detection values, so shifting one side by a pixel changes the miss rate (it did: 6.51 vs 6.48
for the same detections). A bbGt folder and the JSON of the same annotations score the same.

Label semantics follow the benchmark: only ``person`` is a regular object; ``people``,
``person?`` and ``cyclist`` are kept as *ignore* regions (a detection on them is neither a
true nor a false positive).

Day/night: sets 00-02 and 06-08 are day, 03-05 and 09-11 night (KAIST's split). Synthetic
data written by :mod:`ms_perception.synth` adds an explicit ``condition`` field, which wins.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ms_perception.formats.errors import FormatError, read_json
from ms_perception.formats.validate import check_coco_gt, check_coco_results

BBGT_HEADER = "% bbGt version=3"
KAIST_REGULAR_LABELS = ("person",)
KAIST_IGNORE_LABELS = ("people", "person?", "cyclist")
KAIST_DAY_SETS = frozenset({0, 1, 2, 6, 7, 8})
KAIST_NIGHT_SETS = frozenset({3, 4, 5, 9, 10, 11})
_SET_RE = re.compile(r"set(\d+)")


@dataclass
class BBGtObject:
    """One object of a bbGt v3 file (coordinates as written)."""

    label: str
    box: tuple[float, float, float, float]  # x, y, w, h (pixels, as written in the file)
    occlusion: int  # 0 none, 1 partial, 2 heavy
    visible_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    ignore: int = 0
    angle: float = 0.0


@dataclass
class ImageAnnotation:
    """Ground truth of one image in the form the metrics consume.

    ``boxes`` is (G, 4) float64 ``x, y, w, h`` in 0-based pixels; ``heights`` (G,) is the
    box height the benchmark filters on; ``occlusion`` (G,) int; ``ignore`` (G,) bool is
    the *annotation's* ignore flag (label-derived or explicit) before any subset filter.
    """

    image_id: int
    name: str
    boxes: np.ndarray
    heights: np.ndarray
    occlusion: np.ndarray
    ignore: np.ndarray
    condition: str | None = None  # "day" / "night" / None when unknown
    width: int = 640
    height: int = 512
    labels: list[str] = field(default_factory=list)


def condition_from_name(name: str) -> str | None:
    """Day/night from a KAIST image name such as ``set06/V000/I00019``."""
    m = _SET_RE.search(name)
    if not m:
        return None
    s = int(m.group(1))
    if s in KAIST_DAY_SETS:
        return "day"
    if s in KAIST_NIGHT_SETS:
        return "night"
    return None


def parse_bbgt(text: str, source: str = "<string>") -> list[BBGtObject]:
    """Parse a bbGt v3 annotation text. Errors name the file and the line."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().startswith("% bbGt"):
        raise FormatError(source, 1, f"expected the header {BBGT_HEADER!r}, got {lines[0][:60]!r}"
                          if lines else f"empty file; expected the header {BBGT_HEADER!r}")
    version = lines[0].strip().split("version=")[-1]
    if version != "3":
        raise FormatError(source, 1, f"bbGt version {version!r} is not supported; only version=3")
    objects = []
    for lineno, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        parts = line.split()
        if len(parts) != 12:
            raise FormatError(source, lineno, f"expected 12 fields 'label x y w h occ vx vy vw vh ign ang', "
                                              f"got {len(parts)}: {line!r}")
        label = parts[0]
        try:
            nums = [float(p) for p in parts[1:]]
        except ValueError as exc:
            raise FormatError(source, lineno, f"non-numeric field in {line!r} ({exc})") from None
        x, y, w, h, occ, vx, vy, vw, vh, ign, ang = nums
        if w < 0 or h < 0:
            raise FormatError(source, lineno, f"negative box size w={w} h={h}")
        objects.append(BBGtObject(label=label, box=(x, y, w, h), occlusion=int(occ), visible_box=(vx, vy, vw, vh),
                                  ignore=int(ign), angle=ang))
    return objects


def format_bbgt(objects: Iterable[BBGtObject]) -> str:
    """Inverse of :func:`parse_bbgt` (coordinates written as given)."""
    out = [BBGT_HEADER]
    for o in objects:
        x, y, w, h = o.box
        vx, vy, vw, vh = o.visible_box
        out.append(f"{o.label} {x:.6g} {y:.6g} {w:.6g} {h:.6g} {o.occlusion:d} "
                   f"{vx:.6g} {vy:.6g} {vw:.6g} {vh:.6g} {o.ignore:d} {o.angle:.6g}")
    return "\n".join(out) + "\n"


def read_bbgt(path: str | os.PathLike) -> list[BBGtObject]:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"KAIST annotation file not found: {p}") from None
    return parse_bbgt(text, str(p))


def objects_to_annotation(objects: Sequence[BBGtObject], image_id: int, name: str,
                          condition: str | None = None, width: int = 640, height: int = 512) -> ImageAnnotation:
    """Map bbGt objects to benchmark ground truth: non-``person`` labels become ignore regions."""
    n = len(objects)
    boxes = np.array([o.box for o in objects], dtype=np.float64).reshape(n, 4)
    ignore = np.array([bool(o.ignore) or o.label not in KAIST_REGULAR_LABELS for o in objects], dtype=bool)
    return ImageAnnotation(
        image_id=image_id, name=name, boxes=boxes, heights=boxes[:, 3].copy(),
        occlusion=np.array([o.occlusion for o in objects], dtype=np.int64), ignore=ignore,
        condition=condition if condition is not None else condition_from_name(name),
        width=width, height=height, labels=[o.label for o in objects])


def load_kaist_json(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Load the COCO-like KAIST JSON of the MLPD evaluation script (improved test annotations).

    Image ids are kept as given; the list is sorted by id. A detection txt's 1-based
    ``image_index`` refers to ``image_id + 1``.
    """
    p = Path(path)
    data = read_json(p, "KAIST annotation JSON")
    if isinstance(data, dict):
        for key in ("images", "annotations"):
            if key not in data:
                raise FormatError(str(p), None, f"missing top-level key {key!r}; is this a KAIST/COCO annotation JSON?")
    check_coco_gt(data, str(p), kaist=True)
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    per_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    out = []
    for img in sorted(data["images"], key=lambda i: i["id"]):
        anns = per_image.get(img["id"], [])
        name = img.get("im_name", img.get("file_name", str(img["id"])))
        try:
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), 4)
            heights = np.array([a.get("height", a["bbox"][3]) for a in anns], dtype=np.float64)
            occ = np.array([a.get("occlusion", 0) for a in anns], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise FormatError(str(p), None, f"image {img['id']}: malformed annotation ({exc})") from None
        labels = [cats.get(a.get("category_id"), "person") for a in anns]
        ignore = np.array([bool(a.get("ignore", 0)) or bool(a.get("iscrowd", 0)) or lab not in KAIST_REGULAR_LABELS
                           for a, lab in zip(anns, labels)], dtype=bool)
        cond = img.get("condition") or condition_from_name(name)
        out.append(ImageAnnotation(image_id=int(img["id"]), name=name, boxes=boxes, heights=heights,
                                   occlusion=occ, ignore=ignore, condition=cond,
                                   width=int(img.get("width", 640)), height=int(img.get("height", 512)),
                                   labels=labels))
    return out


def load_kaist_annotation_dir(root: str | os.PathLike, image_list: Sequence[str] | None = None,
                              conditions: dict[str, str] | None = None) -> list[ImageAnnotation]:
    """Load every bbGt ``.txt`` below ``root`` (or the names in ``image_list``).

    Images are numbered 0.. in sorted name order (or list order), which is the order a
    KAIST detection txt's 1-based ``image_index`` refers to. Names are the relative paths
    without extension, e.g. ``set06/V000/I00019``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"KAIST annotation folder not found: {root}")
    if image_list is None:
        names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.txt"))
        if not names:
            raise FormatError(str(root), None, "no bbGt .txt annotation files below this folder")
    else:
        names = list(image_list)
    conditions = conditions or {}
    out = []
    for i, name in enumerate(names):
        objs = read_bbgt(root / f"{name}.txt")
        out.append(objects_to_annotation(objs, i, name, conditions.get(name)))
    return out


def read_image_list(path: str | os.PathLike) -> list[str]:
    """A KAIST ``imageSets/*.txt`` list: one ``setXX/VYYY/I#####`` per line."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"KAIST image list not found: {p}") from None
    names = []
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if not re.fullmatch(r"set\d+/V\d+/[IV]?\d+", line):
            raise FormatError(str(p), lineno, f"expected 'setXX/VYYY/I#####', got {line!r}")
        names.append(line)
    return names


def load_detections_txt(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """KAIST detection txt ``image_index(1-based),x,y,w,h,score`` -> {image_id: (N, 5)}."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"detection file not found: {p}") from None
    rows: dict[int, list[list[float]]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.replace(" ", "").split(",")
        if len(parts) != 6:
            raise FormatError(str(p), lineno, f"expected 'image_index,x,y,w,h,score', got {line!r}")
        try:
            idx = int(float(parts[0]))
            vals = [float(v) for v in parts[1:]]
        except (ValueError, OverflowError):
            raise FormatError(str(p), lineno, f"non-numeric field in {line!r}") from None
        if idx < 1:
            raise FormatError(str(p), lineno, f"image_index must be 1-based (>= 1), got {idx}")
        if not all(np.isfinite(vals)):
            raise FormatError(str(p), lineno, f"non-finite value (NaN/inf) in {line!r}")
        if vals[2] < 0 or vals[3] < 0:
            raise FormatError(str(p), lineno, f"negative width or height in {line!r}")
        rows.setdefault(idx - 1, []).append(vals)
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


def load_detections_coco(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """COCO results JSON ``[{image_id, bbox:[x,y,w,h], score, category_id}]`` -> {image_id: (N, 5)}."""
    p = Path(path)
    data = check_coco_results(read_json(p, "detection file"), str(p))
    rows: dict[int, list[list[float]]] = {}
    for i, d in enumerate(data):
        try:
            x, y, w, h = d["bbox"]
            rows.setdefault(int(d["image_id"]), []).append([x, y, w, h, float(d["score"])])
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(str(p), None, f"entry {i}: needs image_id, bbox [x,y,w,h] and score ({exc})") from None
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


def load_detections(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Detections by extension: ``.txt`` (KAIST) or ``.json`` (COCO results)."""
    s = str(path)
    if s.endswith(".txt"):
        return load_detections_txt(path)
    if s.endswith(".json"):
        return load_detections_coco(path)
    raise FormatError(s, None, "unknown detection format; use a KAIST '.txt' (index,x,y,w,h,score) "
                               "or a COCO results '.json'")


def load_annotations(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Annotations from a KAIST JSON file or a folder of bbGt files."""
    p = Path(path)
    if p.is_dir():
        sub = p / "annotations"
        return load_kaist_annotation_dir(sub if sub.is_dir() else p)
    if p.suffix == ".json":
        return load_kaist_json(p)
    if not p.exists():
        raise FileNotFoundError(f"annotations not found: {p}")
    raise FormatError(str(p), None, "annotations must be a KAIST JSON file or a folder of bbGt .txt files")
