"""Frames to a labeling tool and labels back: COCO, CVAT for images 1.1, Label Studio.

``export`` writes a selection of pool records in a tool's own import format, each frame's
visible image with its thermal image beside it (a display view: stretched to 8 bits and warped
into the visible grid, so a box drawn on either image is a box in the visible image), and the
model's detections as pre-annotations:

===============  ==========================================================================
coco             ``annotations/instances_default.json`` + ``images/default/`` (the layout of
                 CVAT's and datumaro's COCO 1.0); each image names its ``thermal_file_name``
                 (``thermal/default/``); pre-annotations carry their ``score``.
cvat             ``annotations.xml`` (CVAT for images 1.1) + ``images/``; the thermal image is
                 the frame's context image (``images/related_images/<name>_png/thermal.png``);
                 pre-annotations are ``source="auto"`` boxes.
label-studio     ``tasks.json`` (tasks with ``predictions``) + ``labeling_config.xml`` (boxes on
                 the visible image, and on the thermal image for objects only it shows) +
                 ``images/``, ``thermal/``; image URLs are Label Studio's local-files URLs
                 (``--url-prefix`` for another server).
===============  ==========================================================================

Every export also writes ``export.json``: the pool, the class list and each frame's record, so
``import`` maps the tool's file names back to the records (and their provenance).

``import`` reads the tool's export of the finished labels and adds them to a captures dataset
(the COCO multispectral layout that ``train fit`` reads as ``data: {type: captures}``): raw
visible and thermal images (16-bit radiometric kept lossless), boxes, the registration and the
provenance of each frame. Labels are checked whole before anything is written: a label that is
not a class (mapped with ``--label-map``), a frame that was never exported, a task without
annotation are one line each; the dataset is rewritten atomically, so an import either lands
whole or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ms_perception.core import jsonio
from ms_perception.core.atomic import atomic_write
from ms_perception.fleet.pool import Pool, load_images, read_record

FORMATS = ("coco", "cvat", "label-studio")
EXPORT_FORMAT = "ms_perception.export/1"
SELECTION_FORMAT = "ms_perception.selection/1"
DATASET_FORMAT = "ms_perception.captures/1"
LS_VISIBLE, LS_THERMAL = "label", "label_thermal"


class ExchangeError(ValueError):
    """Input that cannot be used as a whole (the message names the item and the fix)."""


def flat_name(key: str) -> str:
    robot, rid = key.split("/", 1)
    return f"{robot}__{rid}"


# ------------------------------------------------------------------------------ selection


def write_selection(path: Path, pool_root: Path, keys: list[str], strategy: str, budget: int, seed: int,
                    candidates: int, score: str = "inconsistency") -> None:
    doc = {"format": SELECTION_FORMAT, "pool": str(Path(pool_root).resolve()), "strategy": strategy, "score": score,
           "budget": budget, "seed": seed, "candidates": candidates, "created_unix": time.time(), "records": keys}
    atomic_write(path, jsonio.dumps(doc, indent=1))


def read_selection(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExchangeError(f"{path}: cannot be read as a selection ({exc}); make one with `captures select`") from None
    if not isinstance(doc, dict) or doc.get("format") != SELECTION_FORMAT:
        raise ExchangeError(f"{path}: not a selection of this version (format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                            f"expected {SELECTION_FORMAT!r}); make it again with `captures select`")
    return doc


# --------------------------------------------------------------------------------- export


def thermal_view(thermal: np.ndarray, meta: dict, visible_hw: tuple[int, int]) -> np.ndarray:
    """The annotator's thermal image: 1st-99th percentile stretch to 8 bits, warped into the visible grid."""
    # float64: a radiometric float image may span the whole float32 range, where the percentile's
    # interpolation and t - lo overflow in float32
    t = np.asarray(thermal, np.float64)
    if t.ndim == 3:
        t = t.mean(2)
    finite = np.isfinite(t)
    if finite.any():
        lo, hi = np.percentile(t[finite], [1, 99])
        hi = hi if hi > lo else lo + 1.0
        t = np.where(finite, t, lo)
        u8 = np.clip((t - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    else:
        u8 = np.zeros(t.shape, np.uint8)
    hom = (meta.get("extra") or {}).get("homography_thermal_to_visible")
    h, w = visible_hw
    m = np.asarray(hom, np.float64) if hom else np.diag([w / u8.shape[1], h / u8.shape[0], 1.0])
    if np.allclose(m, np.eye(3)) and u8.shape == (h, w):
        return u8
    return cv2.warpPerspective(u8, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    path.write_bytes(buf.tobytes())


def _boxes(meta: dict, classes: list[str], min_score: float) -> list[dict]:
    out = []
    for d in (meta.get("predictions") or {}).get("detections") or []:
        if d.get("class") in classes and float(d.get("score", 0)) >= min_score:
            x1, y1, x2, y2 = (float(v) for v in d["box"])
            out.append({"class": d["class"], "box": [x1, y1, x2, y2], "score": float(d["score"])})
    return out


def mask_polygons(mask: np.ndarray, classes: list[str], min_area: float = 16.0, epsilon: float = 0.5) -> list[dict]:
    """A segmentation model's class-id mask as polygons, one per connected region of each class but
    the first (the model's background / unlabeled): outer contours (holes are filled: COCO and
    CVAT polygons have none), simplified by at most ``epsilon`` px (half a pixel: rounding paints
    the same pixels back), regions under ``min_area`` px
    left out. Points are pixel centres, so :func:`rasterize` gives the region back."""
    out = []
    for k in np.unique(mask):
        if k == 0 or k >= len(classes):
            continue
        contours, _ = cv2.findContours((mask == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            area = int(np.count_nonzero(rasterize([(classes[int(k)], c.reshape(-1, 2))], classes, mask.shape)))
            if area < min_area:
                continue
            pts = cv2.approxPolyDP(c, epsilon, True).reshape(-1, 2) if epsilon > 0 else c.reshape(-1, 2)
            if len(pts) < 3:    # a one- or two-pixel-wide sliver: its contour, unsimplified
                pts = c.reshape(-1, 2)
            if len(pts) < 3:
                continue
            out.append({"class": classes[int(k)], "points": pts.astype(float).tolist(),
                        "box": [float(x), float(y), float(x + w - 1), float(y + h - 1)], "area": float(area)})
    return out


def rasterize(polygons, classes: list[str], hw: tuple[int, int]) -> np.ndarray:
    """(label, points) polygons -> a class-id map (0 = the first class, where no polygon is); later
    polygons paint over earlier ones, as a labeling tool's z-order."""
    return paint_labels([(lab, {"polygons": [pts]}) for lab, pts in polygons], classes, hw)


def paint_labels(shapes, classes: list[str], hw: tuple[int, int]) -> np.ndarray:
    """(label, shape) -> class-id map; a shape is ``{"polygons": [points, ...]}`` (the parts of one
    object) or ``{"mask": (left, top, binary array)}`` (a brush mask placed at left, top)."""
    m = np.zeros(hw, np.uint8)
    for lab, shape in shapes:
        k = int(classes.index(lab))
        if "polygons" in shape:
            cv2.fillPoly(m, [np.round(np.asarray(p, np.float64)).astype(np.int32).reshape(-1, 1, 2)
                             for p in shape["polygons"]], k)
        else:
            left, top, bits = shape["mask"]
            h, w = bits.shape
            y0, x0 = max(0, top), max(0, left)
            y1, x1 = min(hw[0], top + h), min(hw[1], left + w)
            if y1 > y0 and x1 > x0:
                region = m[y0:y1, x0:x1]
                region[bits[y0 - top:y1 - top, x0 - left:x1 - left].astype(bool)] = k
    return m


def _polygon_box(parts) -> list[float]:
    pts = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in parts])
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def cvat_rle(rle: str, width: int, height: int) -> np.ndarray:
    """CVAT for images 1.1 ``<mask rle=...>``: run lengths over the mask's box, row-major, starting
    with a run of zeros."""
    counts = [int(v) for v in rle.replace(" ", "").split(",") if v]
    if sum(counts) != width * height:
        raise ValueError(f"its rle covers {sum(counts)} pixels, its box {width}x{height} = {width * height}")
    bits = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    return bits.reshape(height, width)


def _labeling_config(classes: list[str], polygons: bool = False) -> str:
    tag = "PolygonLabels" if polygons else "RectangleLabels"
    labels = "".join(f'<Label value="{c}"/>' for c in classes)
    return ('<View>\n'
            '  <View style="display: flex; gap: 8px">\n'
            '    <View style="flex: 50%"><Header value="Visible"/><Image name="visible" value="$visible"/></View>\n'
            '    <View style="flex: 50%"><Header value="Thermal (registered to visible)"/>'
            '<Image name="thermal" value="$thermal"/></View>\n'
            '  </View>\n'
            f'  <{tag} name="{LS_VISIBLE}" toName="visible">{labels}</{tag}>\n'
            f'  <{tag} name="{LS_THERMAL}" toName="thermal">{labels}</{tag}>\n'
            '</View>\n')


def export_selection(selection: Path, fmt: str, out: Path, pre_annotate: bool = False, classes: list[str] | None = None,
                     url_prefix: str | None = None, min_score: float = 0.0, log=print) -> dict:
    if fmt not in FORMATS:
        raise ExchangeError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    sel = read_selection(selection)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExchangeError(f"{out} exists and is not empty; export into a new folder")
    pool = Pool(sel["pool"])
    frames, skipped = [], 0
    for key in sel["records"]:
        folder = pool.record_dir(key) if "/" in key else None
        try:
            if folder is None or pool.row(key) is None:
                raise ValueError("is not in the pool (the selection is from another pool, or it was removed); "
                                 "select again")
            meta = read_record(folder)
            vis, th = load_images(folder, meta)
            mask = _load_mask(folder, meta, vis.shape[:2])
        except ValueError as exc:
            skipped += 1
            log(f"export: {key}: {exc}")
            continue
        frames.append((key, meta, vis, th, mask))
    if not frames:
        raise ExchangeError(f"{selection}: none of its {len(sel['records'])} records can be exported")
    if classes is None:
        classes = []
        for _, meta, _, _, _ in frames:
            for c in (meta.get("extra") or {}).get("class_names") or []:
                if c not in classes:
                    classes.append(c)
            for d in (meta.get("predictions") or {}).get("detections") or []:
                if d.get("class") and d["class"] not in classes:
                    classes.append(d["class"])
        if not classes:
            raise ExchangeError("the records name no classes (captured by an older version); give them with --labels")
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        seg = any(m is not None for *_, m in frames)
        doc = {"format": EXPORT_FORMAT, "tool": fmt, "pool": sel["pool"], "selection": str(Path(selection).resolve()),
               "labels": classes, "pre_annotated": pre_annotate, "task": "segmentation" if seg else "detection",
               "frames": {}}
        writer = {"coco": _write_coco, "cvat": _write_cvat, "label-studio": _write_label_studio}[fmt]
        writer(tmp, frames, classes, pre_annotate, min_score, doc,
               url_prefix if url_prefix is not None else f"/data/local-files/?d={out.name}/")
        atomic_write(tmp / "export.json", jsonio.dumps(doc, indent=1))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"frames": len(frames), "skipped": skipped, "labels": classes, "out": str(out)}


def _load_mask(folder: Path, meta: dict, hw) -> np.ndarray | None:
    """A segmentation record's class-id mask (``mask.png``), or None (a detection record)."""
    if "mask.png" not in meta["files"]:
        return None
    m = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_UNCHANGED)
    if m is None or m.shape != tuple(hw):
        raise ValueError(f"mask.png is unreadable or not {hw[1]}x{hw[0]} like visible.png; copy the record folder "
                         "again")
    return m


def _shapes(meta: dict, mask, classes: list[str], min_score: float) -> list[dict]:
    """The pre-annotations of a frame: the mask's polygons (segmentation) or the detections (boxes)."""
    if mask is not None:
        return [{**p, "score": float(meta.get("score") or 0.0)} for p in mask_polygons(mask, classes)]
    return _boxes(meta, classes, min_score)


def _frame_entry(doc, key, meta, vis, name):
    doc["frames"][name] = {"key": key, "width": int(vis.shape[1]), "height": int(vis.shape[0])}


def _write_coco(tmp, frames, classes, pre, min_score, doc, _prefix):
    images, anns = [], []
    cat = {c: i + 1 for i, c in enumerate(classes)}
    for i, (key, meta, vis, th, mask) in enumerate(frames, start=1):
        name = flat_name(key)
        _frame_entry(doc, key, meta, vis, name)
        _png(tmp / "images" / "default" / f"{name}.png", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
        im = {"id": i, "file_name": f"{name}.png", "width": int(vis.shape[1]), "height": int(vis.shape[0])}
        if th is not None:
            _png(tmp / "thermal" / "default" / f"{name}.png", thermal_view(th, meta, vis.shape[:2]))
            im["thermal_file_name"] = f"thermal/default/{name}.png"   # relative to the export folder
        images.append(im)
        for b in (_shapes(meta, mask, classes, min_score) if pre else []):
            x1, y1, x2, y2 = b["box"]
            if "points" in b:     # COCO boxes of polygons: the pixel extent (x2 - x1 + 1)
                x2, y2 = x2 + 1, y2 + 1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat[b["class"]],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": b.get("area", (x2 - x1) * (y2 - y1)),
                         "iscrowd": 0, "segmentation": [[v for pt in b["points"] for v in pt]] if "points" in b else [],
                         "score": b["score"]})
    coco = {"info": {"description": "ms_perception fleet export", "version": EXPORT_FORMAT}, "licenses": [],
            "images": images, "annotations": anns,
            "categories": [{"id": cat[c], "name": c, "supercategory": ""} for c in classes]}
    (tmp / "annotations").mkdir()
    atomic_write(tmp / "annotations" / "instances_default.json", jsonio.dumps(coco))


def _write_cvat(tmp, frames, classes, pre, min_score, doc, _prefix):
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for tag, text in (("id", "0"), ("name", "ms_perception fleet export"), ("size", str(len(frames))),
                      ("mode", "annotation"), ("overlap", "0")):
        ET.SubElement(task, tag).text = text
    labels = ET.SubElement(task, "labels")
    seg = doc["task"] == "segmentation"
    for c in classes:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = c
        ET.SubElement(lab, "type").text = "polygon" if seg else "rectangle"
        ET.SubElement(lab, "attributes")
    for i, (key, meta, vis, th, mask) in enumerate(frames):
        name = flat_name(key)
        _frame_entry(doc, key, meta, vis, name)
        _png(tmp / "images" / f"{name}.png", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
        if th is not None:   # CVAT's context image for images/<name>.png
            _png(tmp / "images" / "related_images" / f"{name}_png" / "thermal.png", thermal_view(th, meta, vis.shape[:2]))
        im = ET.SubElement(root, "image", id=str(i), name=f"{name}.png", width=str(vis.shape[1]),
                           height=str(vis.shape[0]))
        for b in (_shapes(meta, mask, classes, min_score) if pre else []):
            if "points" in b:
                ET.SubElement(im, "polygon", label=b["class"], source="auto", occluded="0", z_order="0",
                              points=";".join(f"{x:.2f},{y:.2f}" for x, y in b["points"]))
                continue
            x1, y1, x2, y2 = b["box"]
            ET.SubElement(im, "box", label=b["class"], source="auto", occluded="0", xtl=f"{x1:.2f}", ytl=f"{y1:.2f}",
                          xbr=f"{x2:.2f}", ybr=f"{y2:.2f}", z_order="0")
    ET.indent(root)
    atomic_write(tmp / "annotations.xml", '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode"))


def _write_label_studio(tmp, frames, classes, pre, min_score, doc, prefix):
    tasks = []
    for key, meta, vis, th, mask in frames:
        name = flat_name(key)
        _frame_entry(doc, key, meta, vis, name)
        _png(tmp / "images" / f"{name}.png", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
        h, w = vis.shape[:2]
        data = {"visible": f"{prefix}images/{name}.png", "frame": name, "record": key,
                "robot": key.split("/", 1)[0], "stamp_ns": int(meta["stamp_ns"]), "inconsistency": meta.get("score")}
        if th is not None:
            _png(tmp / "thermal" / f"{name}.png", thermal_view(th, meta, vis.shape[:2]))
            data["thermal"] = f"{prefix}thermal/{name}.png"
        task = {"data": data}
        if pre:
            result = []
            for j, b in enumerate(_shapes(meta, mask, classes, min_score)):
                if "points" in b:
                    result.append({"id": f"{name[-12:]}_{j}", "from_name": LS_VISIBLE, "to_name": "visible",
                                   "type": "polygonlabels", "original_width": w, "original_height": h,
                                   "image_rotation": 0, "score": b["score"],
                                   "value": {"points": [[100 * x / w, 100 * y / h] for x, y in b["points"]],
                                             "closed": True, "polygonlabels": [b["class"]]}})
                    continue
                x1, y1, x2, y2 = b["box"]
                result.append({"id": f"{name[-12:]}_{j}", "from_name": LS_VISIBLE, "to_name": "visible",
                               "type": "rectanglelabels", "original_width": w, "original_height": h,
                               "image_rotation": 0, "score": b["score"],
                               "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w,
                                         "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [b["class"]]}})
            task["predictions"] = [{"model_version": str(meta.get("model_hash") or "")[:16] or "ms_perception",
                                    "score": meta.get("score") or 0.0, "result": result}]
        tasks.append(task)
    atomic_write(tmp / "tasks.json", jsonio.dumps(tasks, indent=1))
    atomic_write(tmp / "labeling_config.xml", _labeling_config(classes, polygons=doc["task"] == "segmentation"))


# --------------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    frames: int = 0                 # frames whose labels landed in the dataset
    boxes: int = 0
    replaced: int = 0               # frames already in the dataset, relabeled
    not_exported: int = 0           # labels for frames the export does not have: skipped
    unlabeled: int = 0              # tasks without a (non-cancelled) annotation: left for later
    not_returned: int = 0           # exported frames missing from the labels (a deleted task)
    dropped_boxes: int = 0          # boxes mapped away with --label-map NAME=-
    problems: list = field(default_factory=list)
    unlabeled_frames: set = field(default_factory=set)

    def summary(self) -> str:
        return (f"import: {self.frames} frame(s) with {self.boxes} box(es) into the dataset ({self.replaced} relabeled); "
                f"skipped: {self.not_exported} not exported, {self.unlabeled} without annotation, "
                f"{self.not_returned} exported but not in the labels, {self.dropped_boxes} boxes mapped away")


def _find_export(labels: Path, export_dir: Path | None) -> tuple[Path, dict]:
    cands = [Path(export_dir)] if export_dir else [labels.parent, labels.parent.parent, labels.parent.parent.parent]
    if labels.is_dir():
        cands.insert(0, labels)
    for c in cands:
        if (c / "export.json").exists():
            doc = json.loads((c / "export.json").read_text())
            if doc.get("format") != EXPORT_FORMAT:
                raise ExchangeError(f"{c / 'export.json'}: export format {doc.get('format')!r}, expected "
                                    f"{EXPORT_FORMAT!r}; export the frames again with this version")
            return c, doc
    raise ExchangeError(f"{labels}: cannot find the export's export.json beside it; give the export folder with --export")


def _stem(name: str) -> str:
    return Path(urllib.parse.unquote(str(name)).split("?d=")[-1]).stem


def parse_coco(path: Path) -> dict[str, list]:
    doc = json.loads(path.read_text())
    for k in ("images", "annotations", "categories"):
        if k not in doc:
            raise ExchangeError(f"{path}: a COCO file needs {k!r}; export the task as COCO 1.0 again")
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    by_image = {im["id"]: _stem(im["file_name"]) for im in doc["images"]}
    out = {name: [] for name in by_image.values()}
    for a in doc["annotations"]:
        if a["image_id"] not in by_image:
            raise ExchangeError(f"{path}: annotation {a.get('id')} names image {a['image_id']}, which the file lacks")
        x, y, w, h = (float(v) for v in a["bbox"])
        seg, shape = a.get("segmentation"), None
        if isinstance(seg, list) and seg:
            shape = {"polygons": [np.asarray(p, np.float64).reshape(-1, 2) for p in seg if len(p) >= 6]}
        elif isinstance(seg, dict):      # RLE (a brush mask; compressed or not)
            from pycocotools import mask as mask_utils
            rle = mask_utils.frPyObjects(seg, *seg["size"]) if isinstance(seg.get("counts"), list) else seg
            shape = {"mask": (0, 0, mask_utils.decode(rle))}
        out[by_image[a["image_id"]]].append((cats.get(a["category_id"], f"category {a['category_id']}"),
                                             [x, y, x + w, y + h], bool(a.get("iscrowd", 0)), shape))
    return out


def parse_cvat(path: Path) -> dict[str, list]:
    if path.is_dir():
        path = path / "annotations.xml"
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ExchangeError(f"{path}: not a CVAT XML file ({exc}); export the task as 'CVAT for images 1.1'") from None
    if root.tag != "annotations" or root.find("image") is None and root.find("track") is not None:
        raise ExchangeError(f"{path}: not 'CVAT for images 1.1' (tracks found: a video export); export the task as "
                            "'CVAT for images 1.1'")
    out = {}
    for im in root.iter("image"):
        shapes = []
        for b in im:
            if b.tag == "box":
                shapes.append((b.get("label"), [float(b.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")], False, None))
            elif b.tag == "polygon":
                pts = np.array([[float(v) for v in xy.split(",")] for xy in b.get("points").split(";")])
                shapes.append((b.get("label"), _polygon_box([pts]), False, {"polygons": [pts]}))
            elif b.tag == "mask":
                left, top, w, h = (int(float(b.get(k))) for k in ("left", "top", "width", "height"))
                try:
                    bits = cvat_rle(b.get("rle", ""), w, h)
                except ValueError as exc:
                    raise ExchangeError(f"{path}: image {im.get('name')}: mask {b.get('label')!r}: {exc}; export the "
                                        "task again") from None
                ys, xs = np.nonzero(bits)
                box = [left + float(xs.min()), top + float(ys.min()), left + float(xs.max()), top + float(ys.max())] \
                    if len(xs) else [float(left), float(top), float(left), float(top)]
                shapes.append((b.get("label"), box, False, {"mask": (left, top, bits)}))
        out[_stem(im.get("name"))] = shapes
    return out


def parse_label_studio(path: Path, report: ImportReport) -> dict[str, list]:
    try:
        tasks = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExchangeError(f"{path}: not a Label Studio JSON export ({exc}); export the project as JSON") from None
    if not isinstance(tasks, list):
        raise ExchangeError(f"{path}: a Label Studio JSON export is a list of tasks; export the project as 'JSON'")
    out = {}
    for t in tasks:
        data = t.get("data") or {}
        name = data.get("frame") or _stem(data.get("visible", ""))
        anns = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        if not anns:
            report.unlabeled += 1
            report.unlabeled_frames.add(name)
            continue
        ann = max(anns, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0))
        boxes = []
        for r in ann.get("result") or []:
            if r.get("from_name") not in (LS_VISIBLE, LS_THERMAL):
                continue
            if r.get("type") == "polygonlabels":
                v = r["value"]
                w, h = float(r["original_width"]), float(r["original_height"])
                pts = np.array([[float(x) * w / 100, float(y) * h / 100] for x, y in v["points"]])
                for lab in v.get("polygonlabels") or []:
                    boxes.append((lab, _polygon_box([pts]), False, r["from_name"], {"polygons": [pts]}))
                continue
            if r.get("type") != "rectanglelabels":
                continue
            v = r["value"]
            if abs(float(v.get("rotation", 0))) > 1e-6:
                report.problems.append(f"{path}: task {t.get('id')} ({name}): a rotated box (rotation {v['rotation']}) "
                                       "was left out; draw it unrotated")
                continue
            w, h = float(r["original_width"]), float(r["original_height"])
            x1, y1 = float(v["x"]) * w / 100, float(v["y"]) * h / 100
            box = [x1, y1, x1 + float(v["width"]) * w / 100, y1 + float(v["height"]) * h / 100]
            for lab in v.get("rectanglelabels") or []:
                boxes.append((lab, box, False, r["from_name"], None))
        out[name] = _merge_thermal_boxes(boxes)
    return out


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _merge_thermal_boxes(boxes: list) -> list:
    """Boxes drawn on the visible image, plus those drawn on the (registered) thermal image that
    no visible box of the same label covers (IoU >= 0.5): an object only the thermal image shows.
    Polygons from either image all count (a region drawn twice paints the same pixels)."""
    vis = [(lab, b, ig, shape) for lab, b, ig, src, shape in boxes if src == LS_VISIBLE]
    for lab, b, ig, src, shape in boxes:
        if src == LS_THERMAL and (shape is not None or
                                  not any(lv == lab and _iou(b, bv) >= 0.5 for lv, bv, _, sv in vis if sv is None)):
            vis.append((lab, b, ig, shape))   # thermal polygons: regions painted in (registered to the visible grid)
    return vis


def import_labels(labels: Path, fmt: str, dataset: Path, export_dir: Path | None = None,
                  label_map: dict[str, str] | None = None, log=print) -> ImportReport:
    """Labels -> captures dataset. Boxes become COCO boxes; polygons and brush masks (segmentation
    exports) also become each frame's class-id label map (``labels/<frame>.png``, named by the
    image's ``label_file_name``; class k = the export's k-th label, 0 where nothing is drawn)."""
    if fmt not in FORMATS:
        raise ExchangeError(f"unknown label format {fmt!r}; valid: {', '.join(FORMATS)}")
    labels = Path(labels)
    if not labels.exists():
        raise ExchangeError(f"{labels}: no such file; give the tool's export of the labels")
    exp_dir, exp = _find_export(labels, export_dir)
    report = ImportReport()
    if fmt == "coco":
        parsed = parse_coco(labels if labels.is_file() else labels / "annotations" / "instances_default.json")
    elif fmt == "cvat":
        parsed = parse_cvat(labels)
    else:
        parsed = parse_label_studio(labels, report)
    classes = list(exp["labels"])
    label_map = dict(label_map or {})
    unknown: dict[str, int] = {}
    for boxes in parsed.values():
        for lab, *_ in boxes:
            lab = label_map.get(lab, lab)
            if lab != "-" and lab not in classes:
                unknown[lab] = unknown.get(lab, 0) + 1
    if unknown:
        names = ", ".join(f"{k!r} ({n} box{'es' if n > 1 else ''})" for k, n in sorted(unknown.items()))
        raise ExchangeError(f"{labels}: label(s) {names} are not classes of the export ({', '.join(classes)}); "
                            "nothing was imported: map them with --label-map NAME=CLASS (or NAME=- to drop them)")
    frames = {}
    for name, boxes in parsed.items():
        if name not in exp["frames"]:
            report.not_exported += 1
            report.problems.append(f"{labels}: labels for {name!r}, a frame this export ({exp_dir}) does not have, "
                                   "were skipped; import them with the export they came from (--export)")
            continue
        kept = []
        for lab, box, ig, shape in boxes:
            lab = label_map.get(lab, lab)
            if lab == "-":
                report.dropped_boxes += 1
                continue
            kept.append((lab, box, ig, shape))
        frames[name] = kept
    report.not_returned = len(set(exp["frames"]) - set(parsed) - report.unlabeled_frames)
    if report.not_returned:
        report.problems.append(f"{labels}: {report.not_returned} exported frame(s) are not in the labels (tasks "
                               "deleted in the tool); they stay unlabeled in the pool and can be selected again")
    for line in report.problems:
        log(line)
    if not frames:
        raise ExchangeError(f"{labels}: no labeled frame of the export {exp_dir} to import")
    _write_dataset(Path(dataset), frames, exp, exp_dir, fmt, labels, report)
    return report


def _write_dataset(dataset: Path, frames: dict, exp: dict, exp_dir: Path, fmt: str, labels: Path,
                   report: ImportReport) -> None:
    dataset.mkdir(parents=True, exist_ok=True)
    ann_path = dataset / "annotations.json"
    if ann_path.exists():
        doc = json.loads(ann_path.read_text())
        if (doc.get("info") or {}).get("version") != DATASET_FORMAT:
            raise ExchangeError(f"{ann_path}: not a captures dataset of this version; import into a new folder")
    else:
        doc = {"info": {"description": "ms_perception captures dataset", "version": DATASET_FORMAT},
               "licenses": [], "images": [], "annotations": [], "categories": []}
    cats = {c["name"]: c["id"] for c in doc["categories"]}
    for c in exp["labels"]:
        if c not in cats:
            cats[c] = max(cats.values(), default=0) + 1
            doc["categories"].append({"id": cats[c], "name": c, "supercategory": ""})
    by_record = {im["ms_perception"]["record"]: im for im in doc["images"]}
    pool = Pool(exp["pool"])
    imported = []
    for name, boxes in frames.items():
        key = exp["frames"][name]["key"]
        folder = pool.record_dir(key)
        meta = read_record(folder)
        (dataset / "visible").mkdir(exist_ok=True)
        (dataset / "thermal").mkdir(exist_ok=True)
        vis_rel = f"visible/{name}.png"
        _copy_atomic(folder / "visible.png", dataset / vis_rel)
        th_rel = None
        for src in ("thermal.png", "thermal.npy"):
            if src in meta["files"]:
                if src.endswith(".npy"):   # 32-bit float thermal (°C): a float TIFF the image readers load as is
                    th_rel = f"thermal/{name}.tiff"
                    _write_atomic(dataset / th_rel, cv2.imencode(".tiff", np.load(folder / src))[1].tobytes())
                else:
                    th_rel = f"thermal/{name}.png"
                    _copy_atomic(folder / src, dataset / th_rel)
        old = by_record.get(key)
        if old is not None:
            report.replaced += 1
            doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != old["id"]]
            image_id = old["id"]
            doc["images"].remove(old)
        else:
            image_id = max((im["id"] for im in doc["images"]), default=0) + 1
        extra = meta.get("extra") or {}
        im = {"id": image_id, "file_name": vis_rel, "width": exp["frames"][name]["width"],
              "height": exp["frames"][name]["height"],
              "ms_perception": {"record": key, "robot": key.split("/", 1)[0], "stamp_ns": meta["stamp_ns"],
                                "model_hash": meta.get("model_hash"), "model": extra.get("model"),
                                "inconsistency": meta.get("score"), "tool": fmt, "labels_file": str(labels.resolve()),
                                "export": str(exp_dir.resolve()), "imported_unix": time.time()}}
        if th_rel:
            im["thermal_file_name"] = th_rel
            if extra.get("homography_thermal_to_visible"):
                im["homography_thermal_to_visible"] = extra["homography_thermal_to_visible"]
        doc["images"].append(im)
        by_record[key] = im
        if exp.get("task") == "segmentation" or any(shape is not None for *_, shape in boxes):
            hw = (exp["frames"][name]["height"], exp["frames"][name]["width"])
            ds_classes = [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])]   # pixel k = category k
            lab_map = paint_labels([(lab, shape) for lab, _, _, shape in boxes if shape is not None], ds_classes, hw)
            (dataset / "labels").mkdir(exist_ok=True)
            im["label_file_name"] = f"labels/{name}.png"
            _write_atomic(dataset / im["label_file_name"], cv2.imencode(".png", lab_map)[1].tobytes())
        next_id = max((a["id"] for a in doc["annotations"]), default=0) + 1
        for lab, (x1, y1, x2, y2), ig, shape in boxes:
            seg = [[float(v) for v in np.asarray(p).ravel()] for p in shape["polygons"]] \
                if shape is not None and "polygons" in shape else []
            doc["annotations"].append({"id": next_id, "image_id": image_id, "category_id": cats[lab],
                                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                       "iscrowd": int(ig), "segmentation": seg})
            next_id += 1
            report.boxes += 1
        imported.append(key)
        report.frames += 1
    doc["images"].sort(key=lambda im: im["id"])
    atomic_write(ann_path, jsonio.dumps(doc))
    pool.mark(imported, "labeled", str(dataset.resolve()))
    pool.close()


def _write_atomic(dst: Path, data: bytes) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
