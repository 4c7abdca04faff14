"""Evaluation CLIs on structurally wrong or non-finite inputs: one line naming ``file: item``,
exit 2, never a traceback and never a silently wrong number."""
import json

import cv2
import numpy as np
import pytest

from ms_perception.cli import main

GOOD_KAIST = {"images": [{"id": 0, "im_name": "set06/V000/I00019"}, {"id": 1, "im_name": "set06/V000/I00039"}],
              "annotations": [{"id": 1, "image_id": 0, "bbox": [10, 10, 30, 80], "height": 80, "occlusion": 0,
                               "category_id": 1}],
              "categories": [{"id": 1, "name": "person"}]}


def _run(capsys, *argv):
    rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["images"][1].pop("id"), "images[1]: needs 'id'"),
    (lambda d: d["annotations"][0].pop("image_id"), "annotations[0]: needs 'image_id'"),
    (lambda d: d.__setitem__("annotations", {"0": d["annotations"][0]}), "annotations: must be a JSON list, got dict"),
    (lambda d: d["annotations"][0].__setitem__("image_id", 7), "annotations[0].image_id: 7 is not the id of any image"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), "annotations[0].bbox: must be [x, y, width, height]"),
])
def test_kaist_annotation_structure(tmp_path, capsys, edit, expected):
    d = json.loads(json.dumps(GOOD_KAIST))
    edit(d)
    (tmp_path / "a.json").write_text(json.dumps(d))
    (tmp_path / "d.txt").write_text("1,10,10,30,80,0.9\n")
    rc, err = _run(capsys, "eval", "kaist", "--annotations", str(tmp_path / "a.json"), "--detections",
                   str(tmp_path / "d.txt"))
    assert rc == 2 and f"{tmp_path / 'a.json'}: {expected}" in err and "Traceback" not in err


@pytest.mark.parametrize("line, expected", [
    ("1,10,10,30,80,nan", ":1: non-finite value (NaN/inf)"),
    ("1,10,10,-30,80,0.9", ":1: negative width or height"),
    ("1,10,10,inf,80,0.9", ":1: non-finite value (NaN/inf)"),
])
def test_kaist_detection_values(tmp_path, capsys, line, expected):
    (tmp_path / "a.json").write_text(json.dumps(GOOD_KAIST))
    (tmp_path / "d.txt").write_text(line + "\n")
    rc, err = _run(capsys, "eval", "kaist", "--annotations", str(tmp_path / "a.json"), "--detections",
                   str(tmp_path / "d.txt"))
    assert rc == 2 and f"{tmp_path / 'd.txt'}{expected}" in err


def test_kaist_coco_detections_with_a_nan_score(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(GOOD_KAIST))
    (tmp_path / "d.json").write_text('[{"image_id": 0, "bbox": [10, 10, 30, 80], "score": NaN}]')
    rc, err = _run(capsys, "eval", "kaist", "--annotations", str(tmp_path / "a.json"), "--detections",
                   str(tmp_path / "d.json"))
    assert rc == 2 and f"{tmp_path / 'd.json'}: [0].score: must be finite, got nan" in err


COCO_GT = {"images": [{"id": 1, "width": 100, "height": 100}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "area": 800,
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "person"}]}
COCO_DET = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "score": 0.9}]


@pytest.mark.parametrize("which, edit, expected", [
    ("det", lambda g, d: d[0].__setitem__("bbox", "10 10 20 40"), "d.json: [0].bbox: must be [x, y, width, height]"),
    ("det", lambda g, d: d[0].__setitem__("bbox", [10, 10, 20]), "d.json: [0].bbox: must be [x, y, width, height]"),
    ("det", lambda g, d: d[0].__setitem__("score", "0.9"), "d.json: [0].score: must be a number, got str '0.9'"),
    ("det", lambda g, d: d[0].__setitem__("score", float("nan")), "d.json: [0].score: must be finite"),
    ("gt", lambda g, d: g["annotations"][0].pop("area"), "g.json: annotations[0]: needs 'area'"),
    ("gt", lambda g, d: g["images"][0].pop("id"), "g.json: images[0]: needs 'id'"),
])
def test_coco_structure_and_values(tmp_path, capsys, which, edit, expected):
    g, d = json.loads(json.dumps(COCO_GT)), json.loads(json.dumps(COCO_DET))
    edit(g, d)
    (tmp_path / "g.json").write_text(json.dumps(g))
    (tmp_path / "d.json").write_text(json.dumps(d))   # json writes NaN; the reader must refuse it
    rc, err = _run(capsys, "eval", "coco", "--gt", str(tmp_path / "g.json"), "--detections", str(tmp_path / "d.json"))
    assert rc == 2 and expected in err and "Traceback" not in err
    g, d = json.loads(json.dumps(COCO_GT)), json.loads(json.dumps(COCO_DET))
    (tmp_path / "g.json").write_text(json.dumps(g))
    (tmp_path / "d.json").write_text(json.dumps(d))
    assert _run(capsys, "eval", "coco", "--gt", str(tmp_path / "g.json"), "--detections",
                str(tmp_path / "d.json"))[0] == 0


def test_seg_labels_outside_the_class_count_name_the_file(tmp_path, capsys):
    (tmp_path / "gt").mkdir(), (tmp_path / "pr").mkdir()
    g = np.zeros((8, 8), np.uint8)
    g[:4] = 8
    cv2.imwrite(str(tmp_path / "gt" / "00001D.png"), g)
    cv2.imwrite(str(tmp_path / "pr" / "00001D.png"), g)
    rc, err = _run(capsys, "eval", "seg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pr"),
                   "--num-classes", "5")
    assert rc == 2 and f"{tmp_path / 'gt' / '00001D.png'}: ground-truth label 8 is >= --num-classes 5" in err
    p = g.copy()
    p[0, 0] = 12
    cv2.imwrite(str(tmp_path / "pr" / "00001D.png"), p)
    rc, err = _run(capsys, "eval", "seg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pr"))
    assert rc == 2 and f"{tmp_path / 'pr' / '00001D.png'}: predicted label 12 is out of range for --num-classes 9" \
        in err
