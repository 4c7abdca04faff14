"""Loaders on tiny fixtures written in each dataset's real on-disk format, quirks included."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ms_perception_training.data import datasets, readers

from ms_perception.formats.errors import FormatError
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
from ms_perception.synth.writers import voc_xml, write_dataset


def img(path: Path, shape, value=100, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, value, dtype))


def test_kaist_bbgt_folder_with_ignore_labels_and_raw_coordinates(tmp_path):
    r = tmp_path
    for mod in ("visible", "lwir"):
        img(r / "set06/V000" / mod / "I00019.jpg", (512, 640, 3) if mod == "visible" else (512, 640))
    (r / "annotations/set06/V000").mkdir(parents=True)
    (r / "annotations/set06/V000/I00019.txt").write_text(
        "% bbGt version=3\n"
        "person 11 21 30 60 1 0 0 0 0 0 0\n"
        "people 101 21 50 60 0 0 0 0 0 0 0\n"
        "person? 201 21 20 40 0 0 0 0 0 0 0\n"
        "cyclist 301 21 30 60 2 0 0 0 0 0 0\n")
    (r / "imageSets").mkdir()
    (r / "imageSets/test-all-20.txt").write_text("set06/V000/I00019\n")
    ds = datasets.kaist(r, "test-all-20")
    vis, th, t = ds[0]
    assert vis.shape == (3, 512, 640) and vis.dtype == torch.uint8 and th.shape == (1, 512, 640)
    assert t["boxes"][0].tolist() == [11, 21, 41, 81]  # as written (the devkit's convention); xyxy
    assert t["ignore"].tolist() == [False, True, True, True]
    assert t["occlusion"].tolist() == [1, 0, 0, 2]
    assert t["height"][0].item() == 60 and t["condition"] == "day"


def test_kaist_paired_annotations_and_missing_image(tmp_path):
    r = tmp_path
    img(r / "set09/V000/visible/I00000.png", (64, 80, 3))
    img(r / "set09/V000/lwir/I00000.png", (64, 80))
    for mod, x in (("visible", 11), ("lwir", 14)):
        p = r / "annotations-paired/set09/V000" / mod / "I00000.txt"
        p.parent.mkdir(parents=True)
        p.write_text(f"% bbGt version=3\nperson {x} 5 10 30 0 0 0 0 0 0 0\n")
    lst = r / "list.txt"
    lst.write_text("set09/V000/I00000\n")
    rec = readers.read_kaist(r, lst, annotations="paired")[0]
    assert rec.boxes[0, 0] == 11 and rec.thermal_boxes[0, 0] == 14 and rec.condition == "night"   # as written
    (r / "set09/V000/lwir/I00000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"lwir image for set09/V000/I00000"):
        readers.read_kaist(r, lst, annotations="paired")


def test_kaist_malformed_bbgt_names_file_and_line(tmp_path):
    r = tmp_path
    img(r / "set00/V000/visible/I00000.jpg", (16, 16, 3))
    img(r / "set00/V000/lwir/I00000.jpg", (16, 16))
    (r / "annotations/set00/V000").mkdir(parents=True)
    (r / "annotations/set00/V000/I00000.txt").write_text("% bbGt version=3\nperson 1 2 3\n")
    (r / "imageSets").mkdir()
    (r / "imageSets/train.txt").write_text("set00/V000/I00000\n")
    with pytest.raises(FormatError, match=r"I00000.txt:2: expected 12 fields"):
        readers.read_kaist(r, "train")
    (r / "imageSets/train.txt").write_text("set00/V000/I00000\nnot-a-name\n")
    with pytest.raises(FormatError, match=r"train.txt:2"):
        readers.read_kaist(r, "train")


def test_kaist_improved_json(tmp_path, kaist_fixture):
    # the real improved-annotation JSON with a one-image list
    r = tmp_path
    img(r / "set06/V000/visible/I00019.jpg", (512, 640, 3))
    img(r / "set06/V000/lwir/I00019.jpg", (512, 640))
    (r / "l.txt").write_text("set06/V000/I00019\n")
    rec = readers.read_kaist(r, r / "l.txt", annotations=str(kaist_fixture / "kaist_test_improved_annotations.json"))[0]
    assert rec.boxes.tolist() == [[505, 212, 525, 262]]


def test_flir_aligned_drops_other_classes(tmp_path):
    r = tmp_path
    img(r / "JPEGImages/FLIR_00002_RGB.jpg", (512, 640, 3))
    img(r / "JPEGImages/FLIR_00002_PreviewData.jpeg", (512, 640))
    (r / "Annotations").mkdir()
    (r / "Annotations/FLIR_00002_PreviewData.xml").write_text(
        voc_xml("FLIR_00002_PreviewData.jpeg", 640, 512, [("car", (10, 20, 50, 60), 0), ("dog", (1, 1, 5, 5), 0),
                                                          ("person", (100, 100, 120, 160), 1)], origin=0))
    (r / "align_train.txt").write_text("FLIR_00002\n")
    vis, th, t = datasets.flir_aligned(r, "train")[0]
    assert t["labels"].tolist() == [3, 1]  # car, person (dog dropped)
    assert t["boxes"][0].tolist() == [10, 20, 50, 60] and t["ignore"].tolist() == [False, True]


def test_voc_xml_errors(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<annotation><object><name>person</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(FormatError, match="a.xml.*numeric"):
        readers.parse_voc_xml(p, readers.VOC_CLASSES)
    p.write_text("<annotation><object>")
    with pytest.raises(FormatError, match="malformed XML"):
        readers.parse_voc_xml(p, readers.VOC_CLASSES)


def test_mfnet_four_channel_png_and_labels(tmp_path):
    r = tmp_path
    (r / "images").mkdir()
    (r / "labels").mkdir()
    bgra = np.zeros((48, 64, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 200  # B, G, R, thermal
    cv2.imwrite(str(r / "images/00001N.png"), bgra)
    lab = np.zeros((48, 64), np.uint8)
    lab[10:20, 10:20] = 2
    cv2.imwrite(str(r / "labels/00001N.png"), lab)
    (r / "test_night.txt").write_text("00001N\n")
    vis, th, t = datasets.mfnet(r, "test_night")[0]
    assert vis[:, 0, 0].tolist() == [30, 20, 10]  # RGB order
    assert th.shape == (1, 48, 64) and th[0, 0, 0] == 200
    assert t["mask"].sum().item() == 200 and t["condition"] == "night"


def test_vedai_14_columns(tmp_path):
    r = tmp_path
    img(r / "Vehicules512/00000001_co.png", (512, 512, 3))
    img(r / "Vehicules512/00000001_ir.png", (512, 512))
    (r / "Annotations512").mkdir()
    (r / "Annotations512/00000001.txt").write_text(
        "100 100 0.5 1 1 0 90 110 110 90 95 95 105 105\n"
        "200 200 0.1 31 1 1 190 210 210 190 195 195 205 205\n"   # plane: dropped
        "300 300 0.0 23 1 1 290 310 310 290 280 280 320 320\n")
    (r / "fold01.txt").write_text("00000001\n")
    vis, th, t = datasets.vedai(r, "fold01")[0]
    assert t["boxes"].tolist() == [[90, 95, 110, 105], [290, 280, 310, 320]]
    assert [readers.VEDAI_CLASSES[i - 1] for i in t["labels"].tolist()] == ["car", "boat"]
    assert t["occlusion"].tolist() == [0, 1]
    (r / "Annotations512/00000001.txt").write_text("1 2 3\n")
    with pytest.raises(FormatError, match="00000001.txt:1: expected 14 columns"):
        readers.read_vedai(r, "fold01")


def test_llvip_and_voc(tmp_path):
    r = tmp_path / "LLVIP"
    img(r / "visible/test/190001.jpg", (32, 40, 3))
    img(r / "infrared/test/190001.jpg", (32, 40))
    (r / "Annotations").mkdir(parents=True)
    (r / "Annotations/190001.xml").write_text(voc_xml("190001.jpg", 40, 32, [("person", (1, 2, 11, 22), 0)]))
    vis, th, t = datasets.llvip(r, "test")[0]
    assert t["boxes"].tolist() == [[1, 2, 11, 22]]
    v = tmp_path / "VOC2007"
    img(v / "JPEGImages/000005.jpg", (30, 30, 3))
    (v / "Annotations").mkdir(parents=True)
    (v / "Annotations/000005.xml").write_text(voc_xml("000005.jpg", 30, 30, [("chair", (2, 2, 9, 9), 1), ("dog", (0, 0, 5, 5), 0)]))
    (v / "ImageSets/Main").mkdir(parents=True)
    (v / "ImageSets/Main/test.txt").write_text("000005\n")
    vis, th, t = datasets.voc(v, "test")[0]
    assert th is None and [readers.VOC_CLASSES[i - 1] for i in t["labels"]] == ["chair", "dog"]
    assert t["ignore"].tolist() == [True, False]


def test_coco_crowd_is_ignore_and_categories_contiguous(tmp_path):
    img(tmp_path / "a.jpg", (20, 20, 3))
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 18, "bbox": [1, 2, 3, 4], "iscrowd": 1, "area": 12},
                        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [5, 5, 5, 5], "iscrowd": 0, "area": 25}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}))
    ds = datasets.coco(tmp_path / "ann.json")
    vis, th, t = ds[0]
    assert ds.classes == ("person", "dog") and t["labels"].tolist() == [2, 1]
    assert t["boxes"][0].tolist() == [1, 2, 4, 6] and t["ignore"].tolist() == [True, False]


@pytest.mark.parametrize("fmt", ["kaist", "mfnet", "flir", "coco"])
def test_generated_data_reads_back_through_the_real_loaders(tmp_path, fmt):
    cfg = SynthConfig(width=160, height=128, sequence_length=4, thermal_factor=4)
    pairs = list(SyntheticGenerator(cfg, 5).pairs(8))
    write_dataset(fmt, iter(pairs), tmp_path, thermal_factor=4, test_every=2)
    if fmt == "kaist":
        ds = datasets.kaist(tmp_path, "test")  # sequence 1 -> frames 4..7
        src = pairs[4:]
        for (v, th, t), p in zip(ds, src):
            keep = [o for o in p.objects if o.class_id != 3]  # KAIST has no cars
            assert np.allclose(t["boxes"].numpy(), np.array([o.box for o in keep]).reshape(-1, 4), atol=1e-3)
            assert th.shape[1:] == (64, 80)  # 4x fewer pixels = 2x per side
    elif fmt == "mfnet":
        ds = datasets.mfnet(tmp_path, "train")
        v, th, t = ds[0]
        assert th.shape[1:] == (128, 160)  # MFNet stores thermal at the RGB size
        assert set(np.unique(t["mask"].numpy())) <= {0, 1, 2, 3}
        assert (t["mask"].numpy() == 2).sum() == (pairs[0].semantic == 1).sum()  # person: synth 1 -> MFNet 2
    elif fmt == "flir":
        ds = datasets.flir_aligned(tmp_path, "train")
        v, th, t = ds[0]
        expect = np.array([o.box for o in pairs[0].objects]).reshape(-1, 4)
        assert np.abs(t["boxes"].numpy() - expect).max() <= 0.5 + 1e-6  # VOC stores whole pixels
    else:
        ds = datasets.coco(tmp_path / "annotations.json")
        v, th, t = ds[0]
        assert th.dtype == torch.int32 and th.shape[1:] == (64, 80)  # 16-bit counts kept
        assert int(th.float().mean()) > 27315 - 3000  # radiometric counts around 0..40 °C
        assert np.allclose(t["boxes"].numpy(), np.array([o.box for o in pairs[0].objects]).reshape(-1, 4), atol=0.01)


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "align_train.txt").write_text("")
    with pytest.raises(ValueError, match="dataset is empty"):
        datasets.flir_aligned(tmp_path, "train")


def test_each_dataset_origin_convention_and_clipping_with_truncated_flags(tmp_path):
    """FLIR-aligned XML is 0-based (xmin 0 at the left border; the VOC rule made it x = -1), Pascal VOC
    1-based; VEDAI corners of vehicles at the border lie outside the image. Boxes are clipped, the ones
    that reached outside are flagged, and nothing is left at a negative coordinate."""
    r = tmp_path / "flir"
    img(r / "JPEGImages/FLIR_00001_RGB.jpg", (512, 640, 3))
    img(r / "JPEGImages/FLIR_00001_PreviewData.jpeg", (512, 640))
    (r / "Annotations").mkdir(parents=True)
    (r / "Annotations/FLIR_00001_PreviewData.xml").write_text(voc_xml(
        "FLIR_00001_PreviewData.jpeg", 640, 512,
        [("person", (0, 10, 30, 90), 0), ("car", (600, 400, 652, 530), 0), ("car", (700, 10, 720, 30), 0)], origin=0))
    (r / "align_train.txt").write_text("FLIR_00001\n")
    rec = readers.read_flir_aligned(r, "train")[0]
    assert rec.boxes.tolist() == [[0, 10, 30, 90], [600, 400, 640, 512]]   # the box wholly outside is dropped
    assert rec.truncated.tolist() == [False, True]

    v = tmp_path / "VOC2007"
    img(v / "JPEGImages/000001.jpg", (30, 40, 3))
    (v / "Annotations").mkdir(parents=True)
    (v / "Annotations/000001.xml").write_text(voc_xml("000001.jpg", 40, 30, [("dog", (0, 0, 40, 30), 0)]))
    assert "<xmin>1</xmin>" in (v / "Annotations/000001.xml").read_text()
    (v / "ImageSets/Main").mkdir(parents=True)
    (v / "ImageSets/Main/test.txt").write_text("000001\n")
    rec = readers.read_voc(v, "test")[0]
    assert rec.boxes.tolist() == [[0, 0, 40, 30]] and rec.truncated.tolist() == [False]

    a = tmp_path / "vedai"
    img(a / "Vehicules512/00000002_co.png", (512, 512, 3))
    img(a / "Vehicules512/00000002_ir.png", (512, 512))
    (a / "Annotations512").mkdir(parents=True)
    (a / "Annotations512/00000002.txt").write_text(
        "5 300 0.3 1 0 0 -6 14 14 -6 290 290 310 310\n"          # left corners outside
        "505 505 0.0 9 0 0 495 518 518 495 498 498 516 516\n"    # right/bottom corners outside
        "100 100 0.0 1 1 0 90 110 110 90 95 95 105 105\n")
    (a / "fold02.txt").write_text("00000002\n")
    rec = readers.read_vedai(a, "fold02")[0]
    assert rec.boxes.tolist() == [[0, 290, 14, 310], [495, 498, 512, 512], [90, 95, 110, 105]]
    assert rec.truncated.tolist() == [True, True, False]


def test_clip_boxes_by_hand():
    b, keep, trunc = readers.clip_boxes(np.array([[-2, 3, 5, 9], [1, 1, 2, 2], [12, 0, 15, 4]], np.float32), (10, 8))
    assert b.tolist() == [[0, 3, 5, 8], [1, 1, 2, 2], [10, 0, 10, 4]]
    assert keep.tolist() == [True, True, False] and trunc.tolist() == [True, False, True]
    b, keep, trunc = readers.clip_boxes(np.array([[-2, 3, 5, 9]], np.float32), (0, 0))   # size unknown
    assert b.tolist() == [[-2, 3, 5, 9]] and keep.all() and not trunc.any()
