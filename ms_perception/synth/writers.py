"""Write synthetic pairs in the real on-disk layouts of KAIST, MFNet, FLIR-aligned and COCO,
so the training loaders read generated data exactly as they read the real datasets.

Every layout also gets ``synth_meta.jsonl`` (one line per pair: condition, stamps, true
thermal-to-visible homography, thermal factor, per-object crossover flags), which real
datasets do not have and the loaders ignore unless asked.

Layouts (what the real datasets look like; the loaders in ``training.data`` read these):

KAIST     ``setXX/VYYY/{visible,lwir}/I#####.jpg``, ``annotations/setXX/VYYY/I#####.txt`` (bbGt v3,
          1-based), ``imageSets/{train,test}.txt``, plus ``annotations.json`` (the MLPD
          COCO-like test format with ``height``/``occlusion``/``ignore``) and ``lwir16/`` PNGs
          with the lossless radiometric counts. Sets follow KAIST's day/night numbering:
          day -> set00, fog -> set01, night -> set03, dusk -> set04.
MFNet     ``images/#####{D,N}.png`` 4-channel (R, G, B, thermal; thermal bilinearly resized
          to the RGB size), ``labels/#####{D,N}.png`` (0 unlabeled, 1 car, 2 person, 3 bike,
          4 curve, 5 car_stop, 6 guardrail, 7 color_cone, 8 bump), ``train.txt``, ``val.txt``,
          ``test.txt``, ``test_day.txt``, ``test_night.txt``.
FLIR      ``JPEGImages/FLIR_#####_RGB.jpg`` + ``FLIR_#####_PreviewData.jpeg`` (8-bit thermal),
          ``Annotations/FLIR_#####_PreviewData.xml`` (Pascal VOC, 1-based), ``align_train.txt``,
          ``align_validation.txt``.
COCO      ``visible/######.png``, ``thermal/######.png`` (uint16 counts), ``annotations.json``
          (COCO instances with RLE masks; each image also names its ``thermal_file_name``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable
from xml.sax.saxutils import escape

import cv2
import numpy as np

from ms_perception.core import jsonio
from ms_perception.formats.kaist import BBGtObject, format_bbgt
from ms_perception.synth.generator import BICYCLE, CAR, PERSON, SynthPair

FORMATS = ("kaist", "mfnet", "flir", "coco")
KAIST_SET_FOR_CONDITION = {"day": 0, "fog": 1, "night": 3, "dusk": 4}
MFNET_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
MFNET_FROM_SYNTH = np.array([0, 2, 3, 1], np.uint8)  # synth id -> MFNet id (person 2, bicycle 3, car 1)
FLIR_NAMES = {PERSON: "person", BICYCLE: "bicycle", CAR: "car"}
COCO_CATEGORIES = [{"id": PERSON, "name": "person", "supercategory": "person"},
                   {"id": BICYCLE, "name": "bicycle", "supercategory": "vehicle"},
                   {"id": CAR, "name": "car", "supercategory": "vehicle"}]


def _imwrite(path: Path, img: np.ndarray, params: list[int] | None = None) -> None:
    """cv2.imwrite that raises (OpenCV only returns False) and writes atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix if path.suffix != ".jpeg" else ".jpg", img, params or [])
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _meta(pair: SynthPair, name: str, thermal_factor: int) -> dict:
    return {"name": name, "condition": pair.condition, "day_night": pair.day_night,
            "sequence": pair.sequence_id, "frame": pair.frame_index,
            "stamp_visible_ns": pair.stamp_visible_ns, "stamp_thermal_ns": pair.stamp_thermal_ns,
            "homography_thermal_to_visible": pair.homography.tolist(), "thermal_factor": thermal_factor,
            "thermal_size": [int(pair.thermal_raw.shape[1]), int(pair.thermal_raw.shape[0])],
            "ambient_c": pair.ambient_c,
            "objects": [{"class": o.class_name, "box_xyxy": list(o.box), "occlusion": o.occlusion,
                         "crossover": o.crossover, "track_id": o.track_id} for o in pair.objects],
            "distractors": pair.distractors}


def _is_test(pair: SynthPair, test_every: int) -> bool:
    """Whole sequences go to one split, so near-duplicate frames never straddle splits."""
    return test_every > 0 and pair.sequence_id % test_every == test_every - 1


def write_kaist(pairs: Iterable[SynthPair], out: Path, thermal_factor: int = 1, test_every: int = 4) -> int:
    out = Path(out)
    train, test, metas = [], [], []
    images, annotations = [], []
    n = 0
    for pair in pairs:
        set_id = KAIST_SET_FOR_CONDITION[pair.condition]
        name = f"set{set_id:02d}/V{pair.sequence_id:03d}/I{pair.frame_index:05d}"
        s, v, i = name.split("/")
        _imwrite(out / s / v / "visible" / f"{i}.jpg", cv2.cvtColor(pair.visible, cv2.COLOR_RGB2BGR),
                 [cv2.IMWRITE_JPEG_QUALITY, 95])
        _imwrite(out / s / v / "lwir" / f"{i}.jpg", pair.thermal8, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _imwrite(out / "lwir16" / s / v / f"{i}.png", pair.thermal_raw)
        objs = []
        for o in pair.objects:
            x0, y0, x1, y1 = o.box
            # KAIST has no bicycle/car classes: a bicycle is a 'cyclist' (ignored), cars are not annotated
            if o.class_id == CAR:
                continue
            label = "person" if o.class_id == PERSON else "cyclist"
            objs.append(BBGtObject(label, (x0, y0, x1 - x0, y1 - y0), o.occlusion))
        _write_text(out / "annotations" / s / v / f"{i}.txt", format_bbgt(objs))
        is_test = _is_test(pair, test_every)
        (test if is_test else train).append(name)
        if is_test:
            img_id = len(images)
            images.append({"id": img_id, "im_name": name, "height": pair.visible.shape[0],
                           "width": pair.visible.shape[1], "condition": pair.day_night})
            for b in objs:
                annotations.append({"id": len(annotations), "image_id": img_id, "category_id": 1 if b.label == "person" else 2,
                                    "bbox": [round(v, 2) for v in b.box], "height": round(b.box[3], 2),
                                    "occlusion": b.occlusion, "ignore": int(b.label != "person")})
        metas.append(_meta(pair, name, thermal_factor))
        n += 1
    _write_text(out / "imageSets" / "train.txt", "".join(f"{x}\n" for x in train))
    _write_text(out / "imageSets" / "test.txt", "".join(f"{x}\n" for x in test))
    _write_text(out / "annotations.json", jsonio.dumps({
        "info": {"dataset": "ms_perception synthetic, KAIST layout"}, "images": images, "annotations": annotations,
        "categories": [{"id": 0, "name": "__ignore__"}, {"id": 1, "name": "person"}, {"id": 2, "name": "cyclist"},
                       {"id": 3, "name": "people"}, {"id": 4, "name": "person?"}]}))
    _write_text(out / "synth_meta.jsonl", "".join(jsonio.dumps(m) + "\n" for m in metas))
    return n


def write_mfnet(pairs: Iterable[SynthPair], out: Path, thermal_factor: int = 1, test_every: int = 4) -> int:
    out = Path(out)
    splits = {"train": [], "val": [], "test": [], "test_day": [], "test_night": []}
    metas, n = [], 0
    for k, pair in enumerate(pairs, start=1):
        dn = "D" if pair.day_night == "day" else "N"
        name = f"{k:05d}{dn}"
        H, W = pair.visible.shape[:2]
        t8 = pair.thermal8
        if t8.shape != (H, W):
            t8 = cv2.resize(t8, (W, H), interpolation=cv2.INTER_LINEAR)
        rgb = pair.visible
        # MFNet PNGs are RGBA-ordered with thermal in the 4th channel; cv2 writes BGRA.
        bgra = np.dstack([rgb[..., 2], rgb[..., 1], rgb[..., 0], t8])
        _imwrite(out / "images" / f"{name}.png", bgra)
        _imwrite(out / "labels" / f"{name}.png", MFNET_FROM_SYNTH[pair.semantic])
        if _is_test(pair, test_every):
            splits["test"].append(name)
            splits["test_day" if dn == "D" else "test_night"].append(name)
        elif test_every > 0 and pair.sequence_id % test_every == 0 and pair.sequence_id > 0:
            splits["val"].append(name)
        else:
            splits["train"].append(name)
        metas.append(_meta(pair, name, thermal_factor))
        n += 1
    for split, names in splits.items():
        _write_text(out / f"{split}.txt", "".join(f"{x}\n" for x in names))
    _write_text(out / "synth_meta.jsonl", "".join(jsonio.dumps(m) + "\n" for m in metas))
    return n


def voc_xml(filename: str, width: int, height: int, objects: Iterable[tuple[str, tuple[float, float, float, float], int]],
            origin: int = 1) -> str:
    """VOC annotation XML from 0-based pixel-edge boxes: ``origin`` 1 writes Pascal VOC's 1-based
    inclusive indices; 0 writes the 0-based values the FLIR-aligned annotations use."""
    parts = [f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(filename)}</filename>\n"
             f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
             f"  <segmented>0</segmented>\n"]
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(f"  <object>\n    <name>{escape(name)}</name>\n    <pose>Unspecified</pose>\n"
                     f"    <truncated>0</truncated>\n    <difficult>{difficult}</difficult>\n    <bndbox>\n"
                     f"      <xmin>{int(round(x0)) + origin}</xmin>\n      <ymin>{int(round(y0)) + origin}</ymin>\n"
                     f"      <xmax>{int(round(x1))}</xmax>\n      <ymax>{int(round(y1))}</ymax>\n    </bndbox>\n  </object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def write_flir(pairs: Iterable[SynthPair], out: Path, thermal_factor: int = 1, test_every: int = 4) -> int:
    out = Path(out)
    train, val, metas, n = [], [], [], 0
    for k, pair in enumerate(pairs, start=1):
        stem = f"FLIR_{k:05d}"
        H, W = pair.visible.shape[:2]
        _imwrite(out / "JPEGImages" / f"{stem}_RGB.jpg", cv2.cvtColor(pair.visible, cv2.COLOR_RGB2BGR),
                 [cv2.IMWRITE_JPEG_QUALITY, 95])
        t8 = pair.thermal8
        _imwrite(out / "JPEGImages" / f"{stem}_PreviewData.jpeg", t8, [cv2.IMWRITE_JPEG_QUALITY, 95])
        objs = [(FLIR_NAMES[o.class_id], o.box, 0) for o in pair.objects]
        _write_text(out / "Annotations" / f"{stem}_PreviewData.xml",
                    voc_xml(f"{stem}_PreviewData.jpeg", W, H, objs, origin=0))
        (val if _is_test(pair, test_every) else train).append(stem)
        metas.append(_meta(pair, stem, thermal_factor))
        n += 1
    _write_text(out / "align_train.txt", "".join(f"{x}\n" for x in train))
    _write_text(out / "align_validation.txt", "".join(f"{x}\n" for x in val))
    _write_text(out / "synth_meta.jsonl", "".join(jsonio.dumps(m) + "\n" for m in metas))
    return n


def write_coco(pairs: Iterable[SynthPair], out: Path, thermal_factor: int = 1, test_every: int = 0) -> int:
    from pycocotools import mask as mask_utils

    out = Path(out)
    images, anns, metas, n = [], [], [], 0
    for k, pair in enumerate(pairs, start=1):
        H, W = pair.visible.shape[:2]
        _imwrite(out / "visible" / f"{k:06d}.png", cv2.cvtColor(pair.visible, cv2.COLOR_RGB2BGR))
        _imwrite(out / "thermal" / f"{k:06d}.png", pair.thermal_raw)
        images.append({"id": k, "file_name": f"visible/{k:06d}.png", "thermal_file_name": f"thermal/{k:06d}.png",
                       "width": W, "height": H, "condition": pair.condition, "day_night": pair.day_night})
        for o in pair.objects:
            m = np.asfortranarray((pair.instances == o.instance_id).astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = o.box
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": o.class_id,
                         "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                         "area": float(mask_utils.area(rle)), "iscrowd": 0, "segmentation": rle,
                         "occlusion": o.occlusion})
        metas.append(_meta(pair, f"{k:06d}", thermal_factor))
        n += 1
    _write_text(out / "annotations.json", jsonio.dumps({
        "info": {"description": "ms_perception synthetic multispectral pairs"},
        "images": images, "annotations": anns, "categories": COCO_CATEGORIES}))
    _write_text(out / "synth_meta.jsonl", "".join(jsonio.dumps(m) + "\n" for m in metas))
    return n


WRITERS: dict[str, Callable[..., int]] = {"kaist": write_kaist, "mfnet": write_mfnet, "flir": write_flir, "coco": write_coco}


def write_dataset(fmt: str, pairs: Iterable[SynthPair], out: str | os.PathLike, thermal_factor: int = 1,
                  test_every: int = 4) -> int:
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return WRITERS[fmt](pairs, Path(out), thermal_factor=thermal_factor, test_every=test_every)


def timed(pairs: Iterable[SynthPair]):
    """Wrap an iterator of pairs, recording generation time only (not writing) in ``.seconds``."""
    class _T:
        seconds = 0.0
        count = 0

        def __iter__(self):
            it = iter(pairs)
            while True:
                t = time.perf_counter()
                try:
                    p = next(it)
                except StopIteration:
                    return
                _T.seconds += time.perf_counter() - t
                _T.count += 1
                yield p
    return _T()
