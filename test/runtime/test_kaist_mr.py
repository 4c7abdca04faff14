"""KAIST log-average miss rate: the real reference case and hand-checkable edge cases."""
import math

import numpy as np
import pytest

from ms_perception.formats.kaist import ImageAnnotation, load_detections, load_kaist_json
from ms_perception.metrics.kaist import KaistEvalConfig, evaluate_kaist, log_average_miss_rate, match_image


def gt(boxes, heights=None, occ=None, ignore=None, image_id=0, condition="day"):
    b = np.asarray(boxes, float).reshape(-1, 4)
    n = len(b)
    return ImageAnnotation(image_id, f"img{image_id}", b, b[:, 3].copy() if heights is None else np.asarray(heights, float),
                           np.zeros(n, int) if occ is None else np.asarray(occ), np.zeros(n, bool) if ignore is None
                           else np.asarray(ignore, bool), condition)


def test_gaff_reference_reproduces_paper_matlab_numbers(kaist_fixture):
    g = load_kaist_json(kaist_fixture / "kaist_test_improved_annotations.json")
    d = load_detections(kaist_fixture / "gaff_detections.txt")
    assert len(g) == 2252
    r = evaluate_kaist(g, d)  # default = KAIST MATLAB devkit semantics
    got = {k: round(100 * v.miss_rate, 2) for k, v in r.items()}
    assert got == {"all": 6.48, "day": 8.35, "night": 3.46}  # GAFF paper, Table (fixture README)


def test_gaff_reference_mlpd_python_script(kaist_fixture):
    g = load_kaist_json(kaist_fixture / "kaist_test_improved_annotations.json")
    d = load_detections(kaist_fixture / "gaff_detections.txt")
    r = evaluate_kaist(g, d, KaistEvalConfig(count_gt_without_detections=False))
    assert round(100 * r["all"].miss_rate, 2) == 6.38
    assert round(100 * r["night"].miss_rate, 2) == 3.46
    # The fixture README reports 8.25 for day with that script; we get 8.22. The gap is
    # documented in metrics/kaist.py; this bound keeps it from silently growing.
    assert abs(100 * r["day"].miss_rate - 8.25) < 0.05


def test_detection_matching_a_gt_is_tp():
    g = gt([[10, 10, 20, 60]])
    s, tp, ig, n = match_image(np.array([[10, 10, 20, 60, 0.9], [100, 10, 20, 60, 0.5]]), g, KaistEvalConfig(boundary=(0, 0, 1e9, 1e9), height_range=(0, math.inf)))
    assert n == 1 and tp.tolist() == [True, False] and ig.tolist() == [False, False]


def test_iou_threshold_is_inclusive_and_one_gt_one_match():
    # det shifted so IoU = 0.5 exactly: boxes 0..30 and 10..40 (h equal) -> inter 20, union 40
    g = gt([[0, 0, 30, 60]])
    cfg = KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf))
    _, tp, _, _ = match_image(np.array([[10, 0, 30, 60, 0.9]]), g, cfg)
    assert tp.tolist() == [True]  # IoU = 20/40 = 0.5 >= 0.5
    _, tp, _, _ = match_image(np.array([[0, 0, 30, 60, 0.9], [0, 0, 30, 60, 0.8]]), g, cfg)
    assert tp.tolist() == [True, False]  # the second duplicate is a false positive


def test_ignore_region_absorbs_several_detections_by_intersection_over_detection():
    # an ignored 'people' region 0..100 wide; two small dets inside it: ioa = 1, IoU would be tiny
    g = gt([[0, 0, 100, 80]], ignore=[True])
    cfg = KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf))
    _, tp, ig, n = match_image(np.array([[5, 5, 10, 30, 0.9], [50, 5, 10, 30, 0.8], [300, 5, 10, 30, 0.7]]), g, cfg)
    assert n == 0 and tp.tolist() == [False] * 3 and ig.tolist() == [True, True, False]


def test_subset_filters_height_occlusion_and_boundary():
    cfg = KaistEvalConfig()  # height >= 55, occ in {0, 1}, inside [5, 5, 635, 507]
    g = gt([[100, 100, 30, 60], [200, 100, 20, 50], [300, 100, 30, 60], [2, 100, 30, 60]],
           occ=[0, 0, 2, 0])
    # only the first is regular: second too short, third heavily occluded, fourth crosses x=5
    dets = np.array([[100, 100, 30, 60, 0.9], [200, 100, 20, 50, 0.8], [300, 100, 30, 60, 0.7], [2, 100, 30, 60, 0.6]])
    _, tp, ig, n = match_image(dets, g, cfg)
    assert n == 1 and tp.tolist() == [True, False, False, False] and ig.tolist() == [False, True, True, True]


def test_log_average_reads_nine_fppi_points():
    # 100 images, one GT each; detections: 50 TPs with high score, then 100 FPs (1 per image)
    gts = [gt([[10, 10, 30, 60]], image_id=i) for i in range(100)]
    dets = {}
    for i in range(100):
        rows = [[400, 10, 30, 60, 0.1]]  # a FP in every image
        if i < 50:
            rows.append([10, 10, 30, 60, 0.9])
        dets[i] = np.array(rows)
    cfg = KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf))
    r = log_average_miss_rate(gts, dets, cfg)
    # all TPs come before any FP, so at every FPPI point recall = 0.5
    assert np.allclose(r.miss_at_points, 0.5)
    assert r.miss_rate == pytest.approx(0.5)
    assert r.num_gt == 100 and r.num_detections == 150


def test_miss_rate_is_one_when_nothing_is_found_and_nan_without_gt():
    gts = [gt([[10, 10, 30, 60]], image_id=0)]
    cfg = KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf))
    assert log_average_miss_rate(gts, {}, cfg).miss_rate == pytest.approx(1.0)
    empty = [gt(np.zeros((0, 4)), image_id=0)]
    assert math.isnan(log_average_miss_rate(empty, {0: np.array([[0, 0, 5, 5, 0.5]])}, cfg).miss_rate)


def test_gt_without_detections_switch():
    gts = [gt([[10, 10, 30, 60]], image_id=0), gt([[10, 10, 30, 60]], image_id=1)]
    dets = {0: np.array([[10, 10, 30, 60, 0.9]])}
    cfg = KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf))
    assert log_average_miss_rate(gts, dets, cfg).miss_rate == pytest.approx(0.5)  # devkit: 1 of 2 found
    cfg.count_gt_without_detections = False
    assert log_average_miss_rate(gts, dets, cfg).miss_rate == pytest.approx(1e-10)  # MLPD: image 1 skipped


def test_max_detections_per_image():
    g = gt([[10, 10, 30, 60]])
    cfg = KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf), max_detections=2)
    dets = np.array([[300, 10, 30, 60, 0.9], [400, 10, 30, 60, 0.8], [10, 10, 30, 60, 0.1]])
    s, tp, _, _ = match_image(dets, g, cfg)
    assert len(s) == 2 and not tp.any()  # the true match was cut as the third-best


def test_day_night_split_normalizes_fppi_per_subset():
    gts = [gt([[10, 10, 30, 60]], image_id=0, condition="day"), gt([[10, 10, 30, 60]], image_id=1, condition="night")]
    dets = {0: np.array([[10, 10, 30, 60, 0.9]]), 1: np.zeros((0, 5))}
    r = evaluate_kaist(gts, dets, KaistEvalConfig(boundary=(-1e9, -1e9, 1e9, 1e9), height_range=(0, math.inf)))
    assert r["day"].num_images == 1 and r["night"].num_images == 1
    assert r["night"].miss_rate == pytest.approx(1.0)
