"""CLIs (synth, eval kaist/coco/seg), format round trips, and the pycocotools / seg metrics."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ms_perception.cli import main
from ms_perception.formats.errors import FormatError
from ms_perception.formats.kaist import BBGtObject, format_bbgt, load_detections, parse_bbgt
from ms_perception.metrics.coco import coco_eval
from ms_perception.metrics.segmentation import confusion_matrix, segmentation_metrics

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ms_perception.cli", *args], cwd=REPO, capture_output=True, text=True)


def test_bbgt_round_trip_is_exact_and_keeps_the_raw_coordinates():
    objs = [BBGtObject("person", (10.5, 20.0, 30.0, 60.25), 1), BBGtObject("people", (0.0, 0.0, 5.0, 5.0), 0, ignore=1)]
    assert parse_bbgt("% bbGt version=3\nperson 11 21 30 60 1 12 22 10 20 0 0\n")[0].box == (11, 21, 30, 60)
    back = parse_bbgt(format_bbgt(objs))
    assert [(o.label, o.box, o.occlusion, o.ignore) for o in back] == [(o.label, o.box, o.occlusion, o.ignore) for o in objs]
    with pytest.raises(FormatError, match="version"):
        parse_bbgt("% bbGt version=2\n", "x.txt")
    with pytest.raises(FormatError, match=r"x.txt:1: expected the header"):
        parse_bbgt("person 1 2 3 4 0 0 0 0 0 0 0\n", "x.txt")


def test_detection_txt_errors_name_file_and_line(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("1,1,2,3,4,0.5\n0,1,2,3,4,0.5\n")
    with pytest.raises(FormatError, match=r"d.txt:2: image_index must be 1-based"):
        load_detections(p)
    p.write_text("1,1,2,3,0.5\n")
    with pytest.raises(FormatError, match=r"d.txt:1: expected"):
        load_detections(p)


@pytest.mark.parametrize("fmt", ["kaist", "mfnet", "flir", "coco"])
def test_synth_cli_writes_each_layout(tmp_path, fmt, capsys):
    out = tmp_path / fmt
    assert main(["synth", "--format", fmt, "--out", str(out), "--pairs", "8", "--size", "160x128",
                 "--thermal-factor", "16", "--sequence-length", "4", "--test-every", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == 8 and summary["thermal_size"] == [40, 32] and summary["generation_pairs_per_s"] > 0
    assert len((out / "synth_meta.jsonl").read_text().splitlines()) == 8
    expected = {"kaist": "imageSets/test.txt", "mfnet": "test_night.txt", "flir": "align_validation.txt",
                "coco": "annotations.json"}[fmt]
    assert (out / expected).exists()


def test_synth_cli_bad_input_is_one_clear_line(tmp_path):
    r = run_cli("synth", "--format", "kaist", "--out", str(tmp_path / "x"), "--size", "100x100", "--thermal-factor", "64")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not divisible by 8" in r.stderr
    r = run_cli("synth", "--format", "kaist", "--out", str(tmp_path / "x"), "--size", "abc")
    assert r.returncode == 2 and "size must look like 320x256" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    r = run_cli("synth", "--format", "coco", "--out", str(tmp_path / "full"), "--pairs", "1")
    assert r.returncode == 2 and "not empty" in r.stderr and (tmp_path / "full" / "keep.txt").exists()


def test_eval_kaist_cli_on_reference(kaist_fixture):
    r = run_cli("eval", "kaist", "--annotations", str(kaist_fixture / "kaist_test_improved_annotations.json"),
                "--detections", str(kaist_fixture / "gaff_detections.txt"), "--json")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert {k: round(v, 2) for k, v in last.items()} == {"all": 6.48, "day": 8.35, "night": 3.46}
    r = run_cli("eval", "kaist", "--annotations", str(kaist_fixture / "kaist_test_improved_annotations.json"),
                "--detections", str(kaist_fixture / "gaff_detections.txt"), "--mlpd-compat", "--json")
    assert round(json.loads(r.stdout.strip().splitlines()[-1])["all"], 2) == 6.38


def test_kaist_bbgt_folder_and_json_of_the_same_annotations_score_the_same(kaist_fixture, tmp_path):
    """The KAIST devkit compares raw bbGt values with raw detections. Before, the bbGt reader shifted
    x and y by one pixel and scored the GAFF detections 6.51 / 8.51 / 3.36 instead of the JSON's
    6.48 / 8.35 / 3.46. Here the real improved annotations are written as a bbGt folder."""
    data = json.loads((kaist_fixture / "kaist_test_improved_annotations.json").read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    per_image: dict[int, list] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    images = sorted(data["images"], key=lambda i: i["id"])
    assert [i["im_name"] for i in images] == sorted(i["im_name"] for i in images)   # bbGt folders number by name
    root = tmp_path / "annotations"
    for im in images:
        objs = [BBGtObject(cats[a["category_id"]], tuple(float(v) for v in a["bbox"]), a["occlusion"], ignore=a["ignore"])
                for a in per_image.get(im["id"], [])]
        path = root / f"{im['im_name']}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_bbgt(objs))
    assert "person 505 212 20 50 0" in (root / "set06/V000/I00019.txt").read_text()   # written as in the JSON
    results = {}
    for source in (kaist_fixture / "kaist_test_improved_annotations.json", root):
        r = run_cli("eval", "kaist", "--annotations", str(source), "--detections",
                    str(kaist_fixture / "gaff_detections.txt"), "--json")
        assert r.returncode == 0, r.stderr
        results[source.name] = {k: round(v, 2) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    assert results["annotations"] == results["kaist_test_improved_annotations.json"] == \
        {"all": 6.48, "day": 8.35, "night": 3.46}


def test_eval_kaist_cli_on_generated_folder_and_coco_json_detections(tmp_path):
    out = tmp_path / "k"
    assert main(["synth", "--format", "kaist", "--out", str(out), "--pairs", "8", "--sequence-length", "4",
                 "--test-every", "1", "--size", "640x512"]) == 0
    gt = json.loads((out / "annotations.json").read_text())
    # perfect detections from the ground truth itself (COCO results JSON): miss rate 0 on what is reasonable
    dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1}
            for a in gt["annotations"] if not a["ignore"]]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    r = run_cli("eval", "kaist", "--annotations", str(out / "annotations.json"), "--detections", str(tmp_path / "d.json"),
                "--min-height", "20", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["all"] < 1e-6
    # and the bbGt folder gives the same ground truth as the JSON (indices follow sorted names)
    r2 = run_cli("eval", "kaist", "--annotations", str(out), "--detections", str(tmp_path / "d.json"), "--min-height", "20")
    assert r2.returncode == 0, r2.stderr


def test_eval_cli_errors(tmp_path):
    r = run_cli("eval", "kaist", "--annotations", str(tmp_path / "nope.json"), "--detections", "x.txt")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "a.json").write_text("{not json")
    r = run_cli("eval", "kaist", "--annotations", str(tmp_path / "a.json"), "--detections", "x.txt")
    assert r.returncode == 2 and "invalid JSON" in r.stderr
    (tmp_path / "d.csv").write_text("")
    (tmp_path / "a.json").write_text(json.dumps({"images": [], "annotations": []}))
    r = run_cli("eval", "kaist", "--annotations", str(tmp_path / "a.json"), "--detections", str(tmp_path / "d.csv"))
    assert r.returncode == 2 and "unknown detection format" in r.stderr


def _small_coco(tmp_path):
    out = tmp_path / "c"
    assert main(["synth", "--format", "coco", "--out", str(out), "--pairs", "6", "--size", "160x128",
                 "--sequence-length", "3"]) == 0
    gt = json.loads((out / "annotations.json").read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.1 * max(w, h), 2)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": [x + j[0], y + j[1], w, h],
                     "score": float(rng.uniform(0.3, 1))})
        dets.append({"image_id": a["image_id"], "category_id": 1, "bbox": [1, 1, 20, 30], "score": float(rng.uniform(0, 0.5))})
    return out / "annotations.json", gt, dets


def test_coco_wrapper_equals_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt_path, gt, dets = _small_coco(tmp_path)
    ours = coco_eval(gt_path, dets)
    cg = COCO(str(gt_path))
    ev = COCOeval(cg, cg.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert list(ours.values()) == pytest.approx(list(ev.stats))
    assert 0 < ours["AP50"] <= 1


def test_eval_coco_cli(tmp_path):
    gt_path, gt, dets = _small_coco(tmp_path)
    (tmp_path / "d.json").write_text(json.dumps(dets))
    r = run_cli("eval", "coco", "--gt", str(gt_path), "--detections", str(tmp_path / "d.json"), "--json")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"} and 0 <= last["AP"] <= 1
    bad = [dict(dets[0], category_id=99)]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run_cli("eval", "coco", "--gt", str(gt_path), "--detections", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "category_id 99" in r.stderr


def test_segmentation_metrics_by_hand():
    gt = np.array([[0, 1, 1], [2, 2, 2]])
    pred = np.array([[1, 1, 2], [2, 2, 1]])
    c = confusion_matrix(gt, pred, 3, ignore_index=0)  # the unlabeled pixel is not counted
    assert c.tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 2]]
    r = segmentation_metrics(c, ignore_index=0)
    # class 1: recall 1/2, IoU 1/(2+2-1)=1/3; class 2: recall 2/3, IoU 2/(3+3-2)=1/2
    assert r.accuracy[1:].tolist() == pytest.approx([0.5, 2 / 3])
    assert r.iou[1:].tolist() == pytest.approx([1 / 3, 0.5])
    assert r.mean_accuracy == pytest.approx((0.5 + 2 / 3) / 2) and r.miou == pytest.approx((1 / 3 + 0.5) / 2)
    # a class absent from both GT and prediction does not drag the means down
    c4 = confusion_matrix(gt, pred, 4, ignore_index=0)
    assert segmentation_metrics(c4, 0).miou == pytest.approx(r.miou)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(gt, pred + 5, 3)


def test_eval_seg_cli_with_day_night(tmp_path):
    (tmp_path / "gt").mkdir(), (tmp_path / "pr").mkdir()
    g = np.zeros((8, 8), np.uint8)
    g[:4] = 2
    for name, pred in (("00001D", g), ("00002N", np.zeros_like(g))):
        cv2.imwrite(str(tmp_path / "gt" / f"{name}.png"), g)
        cv2.imwrite(str(tmp_path / "pr" / f"{name}.png"), pred)
    r = run_cli("eval", "seg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pr"), "--json")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["day"]["mAcc"] == 1.0 and last["night"]["mAcc"] == 0.0 and last["all"]["mAcc"] == 0.5
    (tmp_path / "pr" / "00002N.png").unlink()
    r = run_cli("eval", "seg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pr"))
    assert r.returncode == 2 and "00002N.png" in r.stderr


def test_miss_rate_plot_is_written(tmp_path, kaist_fixture):
    r = run_cli("eval", "kaist", "--annotations", str(kaist_fixture / "kaist_test_improved_annotations.json"),
                "--detections", str(kaist_fixture / "gaff_detections.txt"), "--plot", str(tmp_path / "mr.png"))
    assert r.returncode == 0 and cv2.imread(str(tmp_path / "mr.png")) is not None


def test_demo_runs_end_to_end(tmp_path):
    r = run_cli("demo", "--out", str(tmp_path / "demo"), "--pairs", "40")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 40 and summary["unpaired"] == 0 and 0 <= summary["miss_rate"]["all"] <= 100
    overlays = sorted((tmp_path / "demo" / "overlays").glob("*.jpg"))
    # visible and registered thermal side by side, under a 28-row header
    assert overlays and cv2.imread(str(overlays[0])).shape == (512 + 28, 2 * 640, 3)
    assert list((tmp_path / "demo" / "bag").glob("*.mcap"))
    full = json.loads((tmp_path / "demo" / "summary.json").read_text())
    lift = full["inconsistency_lift"]
    assert lift["n"] == 40 and lift["n_top"] == 4 and 0 <= lift["top_rate"] <= 1
    assert lift["ratio"] is None or lift["ratio"] == pytest.approx(lift["top_rate"] / lift["random_rate"], abs=1e-3)


def test_learning_curve_plot_is_written(tmp_path):
    from ms_perception.metrics.plots import plot_learning_curves
    curve = [{"iteration": i, "miss_rate": {"all": 90.0 - i / 100, "night": None}} for i in (1000, 2000, 3000)]
    out = plot_learning_curves({"default": curve}, tmp_path / "curve.png", "default model")
    img = cv2.imread(out)
    assert img is not None and img.shape[1] == 600   # 6 in at 100 dpi


def test_learning_curves_grouped_by_arm_share_a_colour_per_arm(tmp_path, monkeypatch):
    """One arm's seeds: one colour, a line style each; another arm: the next colour."""
    from ms_perception.metrics import plots
    seen = {}
    real = plots._finish
    monkeypatch.setattr(plots, "_finish", lambda plt, fig, ax, path, title: (
        seen.update({ln.get_label().split(" all")[0]: (ln.get_color(), ln.get_linestyle()) for ln in ax.get_lines()}),
        real(plt, fig, ax, path, title))[1])
    curve = [{"iteration": i, "miss_rate": {"all": 90.0 - i / 100}} for i in (1000, 2000)]
    plots.plot_learning_curves({"a s0": curve, "b s0": curve, "a s1": curve, "a s2": curve}, tmp_path / "c.png",
                               subsets=("all",), group=lambda label: label.rsplit(" s", 1)[0])
    assert seen["a s0"][0] == seen["a s1"][0] == seen["a s2"][0] != seen["b s0"][0]
    assert [seen[k][1] for k in ("a s0", "a s1", "a s2", "b s0")] == ["-", "--", ":", "-"]
    assert cv2.imread(str(tmp_path / "c.png")) is not None


def test_precision_recall_curves_and_plot(tmp_path):
    from ms_perception.metrics.plots import coco_pr_curves, plot_precision_recall
    gt_path, gt, dets = _small_coco(tmp_path)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    curves = coco_pr_curves(gt, perfect)
    present = {c["name"] for c in gt["categories"] if any(a["category_id"] == c["id"] for a in gt["annotations"])}
    for name in present:
        rec, prec = curves[name]
        assert prec.min() == pytest.approx(1.0)  # perfect detections: precision 1 at every recall
    plot_precision_recall(coco_pr_curves(gt, dets), tmp_path / "pr.png")
    assert cv2.imread(str(tmp_path / "pr.png")) is not None
