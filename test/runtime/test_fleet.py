"""`ms-perception captures merge|select|export|import` on real capture folders (the runtime pipeline
and its CaptureWriter, fleet_helpers.py), with the exports read by datumaro (the dataset library
CVAT uses for its own import and export) and labels written by datumaro's exporters coming back."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from fleet_helpers import capture_robot
from ms_perception.cli import main
from ms_perception.core.selection import select
from ms_perception.fleet.exchange import ExchangeError, export_selection, import_labels, write_selection
from ms_perception.fleet.pool import Pool, PoolError, select_records

PAIRS = 4


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three robots (different seeds and conditions), every pair a new scene."""
    root = tmp_path_factory.mktemp("fleet")
    robots = {}
    for i, (rid, night) in enumerate((("r1", 0.0), ("r2", 0.9), ("r3", 0.5))):
        folder, sps = capture_robot(root / "caps", rid, seed=10 + i, pairs=PAIRS, night=night)
        robots[rid] = (folder, sps)
    return root, robots


def _copy_robot(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _records(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


# -------------------------------------------------------------------------------- selection


def test_selection_strategies_by_hand():
    s = np.array([.9, .8, .7, .6, .1, .2, np.nan, .05])
    g = np.array(["a", "a", "a", "a", "b", "b", "c", "b"])
    b = np.array([0, 0, 1, 1, 0, 0, 0, 5])
    assert select("inconsistency", 3, scores=s).tolist() == [0, 1, 2]
    # one per robot first (a: 0.9, b: 0.2, c: its only record), then the second turn of a robot
    # goes to its other time bucket (a: 2 at 0.7, not 1 at 0.8; b: 7 in bucket 5, not 4)
    assert select("diverse", 3, scores=s, groups=g, buckets=b).tolist() == [0, 5, 6]
    assert select("diverse", 5, scores=s, groups=g, buckets=b).tolist() == [0, 2, 5, 6, 7]
    r1 = select("random", 3, scores=s, rng=np.random.default_rng(4))
    assert r1.tolist() == sorted(np.random.default_rng(4).choice(8, 3, replace=False).tolist())
    assert select("entropy", 2, scores=np.array([np.nan, 1.0, 3.0])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="unknown selection strategy"):
        select("best", 1, scores=s)


# ------------------------------------------------------------------------------------ merge


def test_merge_keeps_provenance_and_is_incremental(fleet, tmp_path):
    root, robots = fleet
    tar = tmp_path / "r3.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(robots["r3"][0], arcname="r3")
    pool_dir = tmp_path / "pool"
    assert main(["captures", "merge", str(robots["r1"][0]), str(robots["r2"][0]), str(tar), "--out", str(pool_dir)]) == 0
    with Pool(pool_dir) as pool:
        assert len(pool) == 3 * PAIRS
        assert pool.counts()["robots"] == {"r1": PAIRS, "r2": PAIRS, "r3": PAIRS}
        rec = _records(robots["r2"][0])[1]
        meta = json.loads((rec / "record.json").read_text())
        row = pool.row(f"r2/{rec.name}")
        assert row["stamp_ns"] == meta["stamp_ns"] and row["model_hash"] == meta["model_hash"]
        assert row["score"] == pytest.approx(meta["score"]) and row["entropy"] == pytest.approx(meta["predictions"]["entropy"])
        assert row["detections"] == len(meta["predictions"]["detections"]) and row["robot_reported"] == "r2"
        copied = pool.record_dir(f"r2/{rec.name}")
        assert sorted(os.listdir(copied)) == sorted(os.listdir(rec))
        assert (copied / "thermal.png").read_bytes() == (rec / "thermal.png").read_bytes()
        assert np.asarray(meta["extra"]["homography_thermal_to_visible"]).shape == (3, 3)
    # again, as the capture root holding all three robots: nothing new
    rep = Pool(pool_dir).merge([root / "caps"], log=lambda *_: None)
    assert (rep.added, rep.already, rep.problems) == (0, 3 * PAIRS, [])
    # a fourth robot: only its records are added
    r4, _ = capture_robot(tmp_path / "caps4", "r4", seed=99, pairs=2)
    rep = Pool(pool_dir).merge([root / "caps", r4], log=lambda *_: None)
    assert rep.added == 2 and rep.added_by_robot == {"r4": 2} and rep.already == 3 * PAIRS


def test_near_duplicates_across_robots_are_dropped(fleet, tmp_path):
    _, robots = fleet
    pool_dir = tmp_path / "pool"
    Pool(pool_dir, create=True).merge([robots["r1"][0]], log=lambda *_: None)
    # robot r9 saw r1's first scene (same images), in its own session, at another time
    r9 = tmp_path / "caps9" / "r9"
    capture_robot(tmp_path / "caps9", "r9", seed=123, pairs=2, start_ns=1_800_000_000_000_000_000)
    first = _records(robots["r1"][0])[0]
    victim = _records(r9)[0]
    for name in ("visible.png", "thermal.png"):
        shutil.copyfile(first / name, victim / name)
    meta = json.loads((victim / "record.json").read_text())
    meta["visible_hw"], meta["thermal_hw"] = json.loads((first / "record.json").read_text())["visible_hw"], \
        json.loads((first / "record.json").read_text())["thermal_hw"]
    (victim / "record.json").write_text(json.dumps(meta))
    with Pool(pool_dir) as pool:
        rep = pool.merge([r9], log=lambda *_: None)
        assert (rep.added, rep.duplicates) == (1, 1)
        dropped = pool.db.execute("SELECT key, reason, of_key FROM dropped").fetchall()
        assert dropped == [(f"r9/{victim.name}", "near_duplicate", f"r1/{first.name}")]


def test_bad_records_get_one_line_each_and_the_rest_merges(fleet, tmp_path):
    _, robots = fleet
    src = _copy_robot(robots["r1"][0], tmp_path / "r1")
    recs = _records(src)
    vis = recs[0] / "visible.png"
    vis.write_bytes(vis.read_bytes()[:200])                              # truncated copy
    (recs[1] / "thermal.png").unlink()                                   # missing file
    meta = json.loads((recs[2] / "record.json").read_text())
    meta["capture_format"] = 99                                          # a newer writer
    (recs[2] / "record.json").write_text(json.dumps(meta))
    with open(src / "manifest.jsonl", "a") as f:
        f.write('{"not": "an entry"}\n')
    lines = []
    with Pool(tmp_path / "pool", create=True) as pool:
        rep = pool.merge([src], log=lines.append)
        assert rep.added == PAIRS - 3 and rep.invalid == 3
        assert len(pool) == PAIRS - 3
    assert len(lines) == 4
    assert any(recs[0].name in ln and "visible.png is corrupt" in ln for ln in lines)
    assert any(recs[1].name in ln and "thermal.png is missing" in ln for ln in lines)
    assert any(recs[2].name in ln and "capture format 99" in ln and "upgrade" in ln for ln in lines)
    assert any("manifest.jsonl: 1 line(s)" in ln for ln in lines)
    assert main(["captures", "merge", str(src), "--out", str(tmp_path / "pool2")]) == 1   # landed, items skipped


def test_two_robots_with_one_id_are_refused_then_renamed(fleet, tmp_path, capsys):
    _, robots = fleet
    other, _ = capture_robot(tmp_path / "other", "r1", seed=77, pairs=2)   # another robot also calling itself r1
    pool_dir = tmp_path / "pool"
    assert main(["captures", "merge", str(robots["r1"][0]), "--out", str(pool_dir)]) == 0
    assert main(["captures", "merge", str(other), "--out", str(pool_dir)]) == 1
    err = capsys.readouterr().out
    assert "robot id 'r1' is used by two robots" in err and f"--rename {other}=NEW_ID" in err
    with Pool(pool_dir) as pool:
        assert len(pool) == PAIRS                                          # nothing of it was merged
    assert main(["captures", "merge", str(other), "--out", str(pool_dir), "--rename", f"{other}=r1b"]) == 0
    with Pool(pool_dir) as pool:
        assert pool.counts()["robots"] == {"r1": PAIRS, "r1b": 2}
        key = pool.candidates()["key"][-1]
        assert pool.row(key)["robot_reported"] == "r1"                    # what the robot said is kept


def test_an_interrupted_merge_leaves_a_valid_pool(fleet, tmp_path, monkeypatch):
    _, robots = fleet
    pool_dir = tmp_path / "pool"
    import ms_perception.fleet.pool as pool_mod
    calls = {"n": 0}
    real = pool_mod.shutil.copytree

    def dying(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            real(src, dst, *a, **k)              # half-way: the folder is copied, then the process dies
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)
    monkeypatch.setattr(pool_mod.shutil, "copytree", dying)
    with pytest.raises(KeyboardInterrupt):
        Pool(pool_dir, create=True).merge([robots["r2"][0]], log=lambda *_: None)
    monkeypatch.setattr(pool_mod.shutil, "copytree", real)
    # a kill -9 leaves what no except clause cleans: a temporary folder and a folder without a row
    (pool_dir / "records" / "r2" / ".tmp-x").mkdir()
    shutil.copytree(_records(robots["r2"][0])[3], pool_dir / "records" / "r2" / _records(robots["r2"][0])[3].name)
    with Pool(pool_dir) as pool:
        assert len(pool) == 0                                   # rolled back to the last commit
        assert sorted(os.listdir(pool_dir / "records" / "r2")) == []
        rep = pool.merge([robots["r2"][0]], log=lambda *_: None)
        assert rep.added == PAIRS and len(pool) == PAIRS


def test_select_strategies_over_the_pool(fleet, tmp_path):
    _, robots = fleet
    with Pool(tmp_path / "pool", create=True) as pool:
        pool.merge([r for r, _ in robots.values()], log=lambda *_: None)
        c = pool.candidates()
        keys, n = select_records(pool, 3, "inconsistency")
        assert n == 3 * PAIRS
        assert sorted(keys) == sorted(c["key"][np.argsort(-c["score"], kind="stable")[:3]].tolist())
        keys, _ = select_records(pool, 3, "entropy")
        assert sorted(keys) == sorted(c["key"][np.argsort(-c["entropy"], kind="stable")[:3]].tolist())
        keys, _ = select_records(pool, 3, "diverse")
        assert sorted(k.split("/")[0] for k in keys) == ["r1", "r2", "r3"]          # one per robot
        assert select_records(pool, 5, "random", seed=1) == select_records(pool, 5, "random", seed=1)
        pool.mark(keys, "labeled")
        left, n2 = select_records(pool, 100, "inconsistency")
        assert n2 == 3 * PAIRS - 3 and not set(left) & set(keys)                      # labeled frames are not chosen again


def test_select_by_a_detection_level_score_the_robots_computed(fleet, tmp_path, capsys):
    """The pool indexes each record's frame scores (capture_score's choices); --score ranks the
    inconsistency and diverse strategies by one of them. A pool merged before the column existed
    gains it empty, and a record without the score ranks last."""
    _, robots = fleet
    with Pool(tmp_path / "pool", create=True) as pool:
        pool.merge([r for r, _ in robots.values()], log=lambda *_: None)
        truth = {}
        for key in pool.candidates()["key"]:
            meta = json.loads((pool.record_dir(key) / "record.json").read_text())
            truth[key] = meta["predictions"]["frame_scores"]
        assert all(set(v) == {"inconsistency", "detection_inconsistency", "detection_entropy"} for v in truth.values())
        for score in ("detection_entropy", "detection_inconsistency"):
            c = pool.candidates(score=score)
            assert c["score"].tolist() == [truth[k][score] for k in c["key"]]
            keys, _ = select_records(pool, 3, "inconsistency", score=score)
            best = sorted(truth, key=lambda k: -truth[k][score])[:3]
            assert sorted(keys) == sorted(best)
        keys, _ = select_records(pool, 3, "diverse", score="detection_entropy")
        assert sorted(k.split("/")[0] for k in keys) == ["r1", "r2", "r3"]
        with pytest.raises(PoolError, match="--score detection_entropy ranks the inconsistency and diverse"):
            select_records(pool, 3, "entropy", score="detection_entropy")
        with pytest.raises(PoolError, match="unknown score"):
            select_records(pool, 3, "inconsistency", score="bogus")
        # the command line: the selection file says which score ranked it
        assert main(["captures", "select", str(tmp_path / "pool"), "--budget", "3", "--score", "detection_entropy",
                     "--out", str(tmp_path / "sel.json")]) == 0
        doc = json.loads((tmp_path / "sel.json").read_text())
        assert doc["score"] == "detection_entropy" and sorted(doc["records"]) == sorted(
            sorted(truth, key=lambda k: -truth[k]["detection_entropy"])[:3])
        assert "by inconsistency on detection_entropy" in capsys.readouterr().out
        # an older pool: the column dropped, then opened again (added back, empty): no record has the score
        pool.db.execute("ALTER TABLE records DROP COLUMN frame_scores")
    with Pool(tmp_path / "pool") as pool:
        assert np.isnan(pool.candidates(score="detection_entropy")["score"]).all()
        with pytest.raises(PoolError, match="no record in the pool has a detection_entropy score"):
            select_records(pool, 3, "inconsistency", score="detection_entropy")
        assert len(select_records(pool, 3, "inconsistency")[0]) == 3        # the image score is still there


# ----------------------------------------------------------------------------- export/import


@pytest.fixture()
def selection(fleet, tmp_path):
    _, robots = fleet
    with Pool(tmp_path / "pool", create=True) as pool:
        pool.merge([r for r, _ in robots.values()], log=lambda *_: None)
        keys, n = select_records(pool, 6, "diverse")
    write_selection(tmp_path / "sel.json", tmp_path / "pool", keys, "diverse", 6, 0, n)
    return tmp_path / "sel.json", keys


def _predictions(pool_dir: Path, key: str) -> list:
    with Pool(pool_dir) as pool:
        meta = json.loads((pool.record_dir(key) / "record.json").read_text())
    return meta["predictions"]["detections"]


def test_export_coco_and_cvat_load_in_datumaro(selection, tmp_path):
    dm = pytest.importorskip("datumaro") if os.environ.get("CI") != "true" else __import__("datumaro")
    sel, keys = selection
    for fmt, dm_fmt in (("coco", "coco_instances"), ("cvat", "cvat")):
        out = tmp_path / f"exp_{fmt}"
        assert main(["captures", "export", str(sel), "--format", fmt, "--out", str(out), "--pre-annotate"]) == 0
        assert dm.Environment().detect_dataset(str(out)) == [dm_fmt]
        ds = dm.Dataset.import_from(str(out), dm_fmt)
        labels = ds.categories()[dm.AnnotationType.label]
        assert [c.name for c in labels.items] == ["person", "bicycle", "car"]
        assert len(ds) == len(keys)
        for item in ds:
            key = json.loads((out / "export.json").read_text())["frames"][item.id]["key"]
            preds = _predictions(tmp_path / "pool", key)
            got = sorted((labels.items[a.label].name, *a.get_bbox()) for a in item.annotations)
            want = sorted((d["class"], d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1])
                          for d in preds)
            assert len(got) == len(want)
            np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.02)
            assert item.media.size == (256, 320)
        # the thermal image beside each visible one, registered into its grid
        thermal = (sorted((out / "thermal" / "default").glob("*.png")) if fmt == "coco"
                   else sorted((out / "images" / "related_images").glob("*/thermal.png")))
        assert len(thermal) == len(keys)
        assert cv2.imread(str(thermal[0]), cv2.IMREAD_UNCHANGED).shape == (256, 320)


def test_export_label_studio_tasks_with_predictions(selection, tmp_path):
    import xml.etree.ElementTree as ET
    sel, keys = selection
    out = tmp_path / "exp_ls"
    export_selection(sel, "label-studio", out, pre_annotate=True)
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == len(keys)
    cfg = ET.fromstring((out / "labeling_config.xml").read_text())
    assert [e.get("name") for e in cfg.iter("Image")] == ["visible", "thermal"]
    for t in tasks:
        assert t["data"]["visible"] == f"/data/local-files/?d=exp_ls/images/{t['data']['frame']}.png"
        assert (out / "thermal" / f"{t['data']['frame']}.png").exists()
        preds = _predictions(tmp_path / "pool", t["data"]["record"])
        res = t["predictions"][0]["result"]
        assert len(res) == len(preds)
        for r, d in zip(res, preds):
            v = r["value"]
            back = [v["x"] * 3.2, v["y"] * 2.56, (v["x"] + v["width"]) * 3.2, (v["y"] + v["height"]) * 2.56]
            np.testing.assert_allclose(back, d["box"], atol=1e-6)
            assert v["rectanglelabels"] == [d["class"]] and r["score"] == d["score"]


def _annotator_edit_with_datumaro(out: Path, fmt: str, tmp_path: Path):
    """An annotator in CVAT: deletes the first pre-annotation of each frame, adds one box, and the
    tool exports (datumaro's own exporter, the one CVAT runs)."""
    import datumaro as dm
    dm_fmt = {"coco": "coco_instances", "cvat": "cvat"}[fmt]
    ds = dm.Dataset.import_from(str(out), dm_fmt)
    expected = {}
    for item in list(ds):        # (a put while iterating the lazily loaded dataset is lost)
        anns = [a for a in item.annotations if a.type == dm.AnnotationType.bbox][1:]
        anns.append(dm.Bbox(10, 20, 30, 40, label=2))     # a car the model missed: x, y, w, h
        expected[item.id] = sorted([(a.label, *a.get_bbox()) for a in anns])
        ds.put(item.wrap(annotations=anns))
    labeled = tmp_path / f"labeled_{fmt}"
    ds.export(str(labeled), dm_fmt, save_media=False)
    path = (labeled / "annotations.xml") if fmt == "cvat" else next((labeled / "annotations").glob("*.json"))
    return path, expected


@pytest.mark.parametrize("fmt", ["coco", "cvat"])
def test_labels_from_the_tool_come_back_into_a_dataset(selection, tmp_path, fmt):
    if os.environ.get("CI") != "true":
        pytest.importorskip("datumaro")
    from pycocotools.coco import COCO
    sel, keys = selection
    out = tmp_path / "exp"
    export_selection(sel, fmt, out, pre_annotate=True)
    labels_file, expected = _annotator_edit_with_datumaro(out, fmt, tmp_path)
    ds_dir = tmp_path / "dataset"
    assert main(["captures", "import", str(labels_file), "--format", fmt, "--into", str(ds_dir),
                 "--export", str(out)]) == 0
    coco = COCO(str(ds_dir / "annotations.json"))       # pycocotools reads it
    assert len(coco.imgs) == len(keys)
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert list(cats.values()) == ["person", "bicycle", "car"]
    for im in coco.imgs.values():
        name = Path(im["file_name"]).stem
        got = sorted((["person", "bicycle", "car"].index(cats[a["category_id"]]), *a["bbox"])
                     for a in coco.imgToAnns[im["id"]])
        np.testing.assert_allclose([g[1:] for g in got], [e[1:] for e in expected[name]], atol=0.02)
        assert [g[0] for g in got] == [e[0] for e in expected[name]]
        prov = im["ms_perception"]
        assert prov["record"] in keys and prov["tool"] == fmt and prov["model_hash"]
        with Pool(tmp_path / "pool") as pool:
            rec = pool.record_dir(prov["record"])
        # the raw 16-bit radiometric thermal, not the annotator's 8-bit view
        assert (ds_dir / im["thermal_file_name"]).read_bytes() == (rec / "thermal.png").read_bytes()
        assert cv2.imread(str(ds_dir / im["thermal_file_name"]), cv2.IMREAD_UNCHANGED).dtype == np.uint16
        assert np.asarray(im["homography_thermal_to_visible"]).shape == (3, 3)
    with Pool(tmp_path / "pool") as pool:
        assert pool.counts()["labeled"] == len(keys)
        assert not set(select_records(pool, 100, "inconsistency")[0]) & set(keys)


def _ls_export(out: Path, edit) -> list:
    """What Label Studio's JSON export holds for these tasks (id, data, annotations with results)."""
    tasks = json.loads((out / "tasks.json").read_text())
    exported = []
    for i, t in enumerate(tasks):
        result = [dict(r) for r in t["predictions"][0]["result"]]
        exported.append({"id": 100 + i, "data": t["data"], "predictions": [],
                         "annotations": [{"id": 500 + i, "was_cancelled": False, "result": edit(i, result),
                                          "updated_at": "2026-11-22T10:00:00Z"}]})
    return exported


def test_label_studio_import_merges_thermal_boxes_and_reports_bad_input(selection, tmp_path, capsys):
    sel, keys = selection
    out = tmp_path / "exp_ls"
    export_selection(sel, "label-studio", out, pre_annotate=True)

    def edit(i, result):
        extra = {"from_name": "label_thermal", "to_name": "thermal", "type": "rectanglelabels", "original_width": 320,
                 "original_height": 256, "value": {"x": 50, "y": 50, "width": 10, "height": 20, "rotation": 0,
                                                   "rectanglelabels": ["person"]}}
        return result + [extra]
    export = _ls_export(out, edit)
    export[1]["annotations"][0]["was_cancelled"] = True                 # skipped by the annotator
    deleted = export.pop(2)                                             # a task deleted in the tool
    stray = json.loads(json.dumps(export[0]))
    stray["data"]["frame"] = "r7__00000000000000000001_deadbeef000001"  # a frame this export does not have
    export.append(stray)
    path = tmp_path / "ls_export.json"
    path.write_text(json.dumps(export))
    lines = []
    rep = import_labels(path, "label-studio", tmp_path / "ds", export_dir=out, log=lines.append)
    assert (rep.frames, rep.unlabeled, rep.not_exported, rep.not_returned) == (len(keys) - 2, 1, 1, 1)
    assert any("r7__" in ln and "does not have" in ln for ln in lines)
    assert any("1 exported frame(s) are not in the labels" in ln for ln in lines)
    doc = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    im = next(i for i in doc["images"] if i["ms_perception"]["record"] == export[0]["data"]["record"])
    boxes = [a["bbox"] for a in doc["annotations"] if a["image_id"] == im["id"]]
    n_pred = len(export[0]["annotations"][0]["result"]) - 1
    assert len(boxes) == n_pred + 1                               # the thermal-only person is added
    np.testing.assert_allclose(boxes[-1], [160, 128, 32, 51.2])
    assert deleted["data"]["record"] not in {i["ms_perception"]["record"] for i in doc["images"]}


def test_unknown_labels_refuse_the_whole_import_until_mapped(selection, tmp_path):
    sel, keys = selection
    out = tmp_path / "exp"
    export_selection(sel, "cvat", out, pre_annotate=True)
    xml = (out / "annotations.xml").read_text()
    first = xml.index("<image ")
    xml = xml[:first] + xml[first:].replace("</image>", '<box label="dog" source="manual" occluded="0" xtl="1" '
                                             'ytl="2" xbr="30" ybr="40" z_order="0" /></image>', 1)
    labels = tmp_path / "labels.xml"
    labels.write_text(xml)
    with pytest.raises(ExchangeError, match=r"'dog' \(1 box\) are not classes.*--label-map"):
        import_labels(labels, "cvat", tmp_path / "ds", export_dir=out)
    assert not (tmp_path / "ds" / "annotations.json").exists()           # nothing written
    assert main(["captures", "import", str(labels), "--format", "cvat", "--into", str(tmp_path / "ds"),
                 "--export", str(out), "--label-map", "dog=-"]) == 0
    doc = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert len(doc["images"]) == len(keys)
    # a second round relabels the same frames: replaced, not duplicated
    rep = import_labels(labels, "cvat", tmp_path / "ds", export_dir=out, label_map={"dog": "car"})
    assert rep.replaced == len(keys)
    doc2 = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert len(doc2["images"]) == len(keys)
    assert len(doc2["annotations"]) == len(doc["annotations"]) + 1


def test_bad_pool_and_selection_inputs_get_one_line(tmp_path, capsys):
    assert main(["captures", "select", str(tmp_path / "nopool"), "--budget", "3", "--out", str(tmp_path / "s.json")]) == 2
    assert "is not a capture pool" in capsys.readouterr().err
    (tmp_path / "sel.json").write_text(json.dumps({"format": "something/9"}))
    assert main(["captures", "export", str(tmp_path / "sel.json"), "--format", "coco", "--out", str(tmp_path / "o")]) == 2
    assert "not a selection of this version" in capsys.readouterr().err
    db = tmp_path / "p" / "pool.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES('pool_format', '7')")
    con.commit()
    con.close()
    with pytest.raises(PoolError, match="newer than this ms_perception"):
        Pool(tmp_path / "p")
    assert main(["captures", "merge", str(tmp_path / "missing"), "--out", str(tmp_path / "q")]) == 1
    assert "no such folder or archive" in capsys.readouterr().out


def test_the_annotators_thermal_view_of_extreme_float_values_by_hand():
    # a 32FC1 frame spanning the float32 range: sorted (-v, v, v, v), the 1st percentile -v + 0.03 * 2v,
    # the 99th v, so the three pixels at v are white and -v black (float32 arithmetic overflowed to inf)
    import warnings
    from ms_perception.fleet.exchange import thermal_view
    v = 3e38
    t = np.array([[v, v], [v, -v]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u8 = thermal_view(t, {}, (2, 2))
    assert u8.tolist() == [[255, 255], [255, 0]]
    # an ordinary 16-bit frame: 1st-99th percentile of (1000, 1000, 2000, 3000) is 1000 .. 2970
    u8 = thermal_view(np.array([[1000, 1000], [2000, 3000]], np.uint16), {}, (2, 2))
    assert u8.tolist() == [[0, 0], [int(1000 * 255 / 1970), 255]]
