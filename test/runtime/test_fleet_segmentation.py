"""Segmentation captures in the fleet loop: the model's masks become polygon pre-annotations in
COCO, CVAT for images 1.1 and Label Studio, and polygons (or CVAT brush masks) come back as the
dataset's class-id label maps."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from fleet_helpers import capture_segmentation_robot
from ms_perception.cli import main
from ms_perception.fleet.exchange import ExchangeError, cvat_rle, mask_polygons, parse_cvat, rasterize

CLASSES = ["unlabeled", "car", "person"]
H, W = 64, 80


def _mask(i: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[5 + i:15 + i, 10:20] = 1                 # a 10x10 car
    m[30:50, 40:46] = 2                        # an L-shaped person: a 20x6 bar ...
    m[44:50, 46:60] = 2                        # ... and a 6x14 foot
    m[58:60, 2:4] = 1                          # a 2x2 speck: below the 16-pixel minimum, not a region
    return m


def test_mask_polygons_by_hand():
    """A 10x10 square is the polygon of its 4 corner pixel centres; an L its 7 corner pixels (the inner corner is a diagonal step); both paint
    back to the same pixels; a 4-pixel speck and the background class give no polygon."""
    polys = mask_polygons(_mask(0), CLASSES)
    assert [p["class"] for p in polys] == ["car", "person"]
    car, person = polys
    assert sorted(map(tuple, car["points"])) == [(10, 5), (10, 14), (19, 5), (19, 14)]
    assert car["box"] == [10.0, 5.0, 19.0, 14.0] and car["area"] == 100.0
    assert len(person["points"]) == 7 and person["area"] == 20 * 6 + 6 * 14
    # pixel centres: the inner corner is the diagonal step (45, 43) -> (46, 44)
    assert sorted(map(tuple, person["points"])) == [(40, 30), (40, 49), (45, 30), (45, 43), (46, 44), (59, 44), (59, 49)]
    want = _mask(0)
    want[58:60, 2:4] = 0
    back = rasterize([(p["class"], p["points"]) for p in polys], CLASSES, (H, W))
    assert np.array_equal(back, want)
    disk = np.zeros((H, W), np.uint8)
    cv2.circle(disk, (40, 32), 12, 2, -1)
    (d,) = mask_polygons(disk, CLASSES)
    again = rasterize([(d["class"], d["points"])], CLASSES, (H, W)) > 0
    iou = (again & (disk > 0)).sum() / (again | (disk > 0)).sum()
    assert iou > 0.93 and len(d["points"]) < 40       # simplified by at most half a pixel, not one point per pixel


def test_cvat_rle_by_hand():
    """Run lengths over the box, row-major, starting with zeros: 1,2,3 on 3x2 = [[0,1,1],[0,0,0]]."""
    assert cvat_rle("1, 2, 3", 3, 2).tolist() == [[0, 1, 1], [0, 0, 0]]
    assert cvat_rle("0,4,2", 3, 2).tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="covers 5 pixels"):
        cvat_rle("1,2,2", 3, 2)


@pytest.fixture(scope="module")
def seg_pool(tmp_path_factory):
    """A segmentation robot's captures (the robot's own CaptureWriter; the masks are what a
    segmentation model would have written), merged and all selected."""
    root = tmp_path_factory.mktemp("segfleet")
    capture_segmentation_robot(root / "caps", "seg1", [_mask(i) for i in range(3)], CLASSES)
    assert main(["captures", "merge", str(root / "caps" / "seg1"), "--out", str(root / "pool")]) == 0
    assert main(["captures", "select", str(root / "pool"), "--budget", "3", "--strategy", "random", "--out",
                 str(root / "sel.json")]) == 0
    return root


def _frame_masks(out: Path, pool: Path) -> dict:
    frames = json.loads((out / "export.json").read_text())["frames"]
    return {name: cv2.imread(str(pool / "records" / f["key"] / "mask.png"), cv2.IMREAD_UNCHANGED)
            for name, f in frames.items()}


def _no_speck(m):
    m = m.copy()
    m[58:60, 2:4] = 0
    return m


def test_segmentation_exports_polygons_that_datumaro_reads(seg_pool, tmp_path):
    dm = pytest.importorskip("datumaro") if os.environ.get("CI") != "true" else __import__("datumaro")
    for fmt, dm_fmt in (("coco", "coco_instances"), ("cvat", "cvat")):
        out = tmp_path / fmt
        assert main(["captures", "export", str(seg_pool / "sel.json"), "--format", fmt, "--out", str(out),
                     "--pre-annotate"]) == 0
        masks = _frame_masks(out, seg_pool / "pool")
        ds = dm.Dataset.import_from(str(out), dm_fmt)
        names = [c.name for c in ds.categories()[dm.AnnotationType.label].items]
        assert names == CLASSES and len(ds) == 3
        for item in ds:
            polys = [a for a in item.annotations if a.type == dm.AnnotationType.polygon]
            assert len(polys) == 2      # (datumaro's COCO reader adds each polygon's box in its group)
            assert all(a.type in (dm.AnnotationType.polygon, dm.AnnotationType.bbox) for a in item.annotations)
            painted = rasterize([(names[a.label], np.asarray(a.points).reshape(-1, 2)) for a in polys], CLASSES,
                                (H, W))
            assert np.array_equal(painted, _no_speck(masks[item.id]))


def test_segmentation_labels_come_back_as_label_maps(seg_pool, tmp_path, capsys):
    """The annotator accepts the pre-annotations (COCO, Label Studio polygons) or paints with CVAT's
    brush (a <mask> element): the dataset's label map equals the model's mask (less the speck)."""
    pool = seg_pool / "pool"
    for fmt in ("coco", "cvat", "label-studio"):
        out = tmp_path / f"exp_{fmt}"
        assert main(["captures", "export", str(seg_pool / "sel.json"), "--format", fmt, "--out", str(out),
                     "--pre-annotate"]) == 0
        masks = _frame_masks(out, pool)
        want = {n: _no_speck(m) for n, m in masks.items()}
        if fmt == "coco":
            labels = out / "annotations" / "instances_default.json"
        elif fmt == "cvat":       # the first frame: the car repainted with the brush, one pixel more
            labels = tmp_path / "cvat_labels.xml"
            root = ET.parse(out / "annotations.xml").getroot()
            im = root.find("image")
            name = Path(im.get("name")).stem
            car = next(p for p in im.findall("polygon") if p.get("label") == "car")
            im.remove(car)
            bits = (masks[name] == 1).astype(np.uint8)[:20, :24]
            bits[0, 0] = 1
            runs, prev, n = [], 0, 0
            for b in bits.ravel():
                if b != prev:
                    runs.append(n)
                    prev, n = b, 0
                n += 1
            runs.append(n)
            ET.SubElement(im, "mask", label="car", source="manual", occluded="0", z_order="0",
                          rle=", ".join(map(str, runs)), left="0", top="0", width="24", height="20")
            ET.ElementTree(root).write(labels)
            want[name] = want[name].copy()
            want[name][0, 0] = 1
        else:
            tasks = json.loads((out / "tasks.json").read_text())
            labels = tmp_path / "ls_export.json"
            labels.write_text(json.dumps([{"id": 10 + i, "data": t["data"], "annotations": [
                {"id": 20 + i, "was_cancelled": False, "result": t["predictions"][0]["result"],
                 "updated_at": "2026-11-22T10:00:00Z"}]} for i, t in enumerate(tasks)]))
            cfg = ET.fromstring((out / "labeling_config.xml").read_text())
            assert [e.get("name") for e in cfg.iter("PolygonLabels")] == ["label", "label_thermal"]
            assert tasks[0]["predictions"][0]["result"][0]["type"] == "polygonlabels"
        ds = tmp_path / f"ds_{fmt}"
        assert main(["captures", "import", str(labels), "--format", fmt, "--export", str(out), "--into",
                     str(ds)]) == 0, capsys.readouterr()
        doc = json.loads((ds / "annotations.json").read_text())
        assert [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])] == CLASSES
        assert len(doc["images"]) == 3
        for im in doc["images"]:
            got = cv2.imread(str(ds / im["label_file_name"]), cv2.IMREAD_UNCHANGED)
            name = Path(im["file_name"]).stem
            assert np.array_equal(got, want[name]), (fmt, name)
        polys = [a for a in doc["annotations"] if a["segmentation"]]
        assert len(polys) >= 5 and all(len(a["segmentation"][0]) >= 8 for a in polys)


def test_a_broken_cvat_mask_is_one_line(tmp_path):
    bad = tmp_path / "annotations.xml"
    bad.write_text('<annotations><version>1.1</version><image id="0" name="f.png" width="4" height="4">'
                   '<mask label="car" rle="1, 2" left="0" top="0" width="2" height="2"/></image></annotations>')
    with pytest.raises(ExchangeError, match=r"image f\.png: mask 'car': its rle covers 3 pixels, its box 2x2 = 4"):
        parse_cvat(bad)
