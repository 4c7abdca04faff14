"""Image conversion, thermal normalization, registration, letterbox, NMS, inconsistency."""
import math
import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ms_perception.core.frames import Frame
from ms_perception.core.inconsistency import (
    binary_entropy,
    detection_inconsistency,
    pixel_inconsistency,
    prediction_inconsistency,
    segmentation_inconsistency,
)
from ms_perception.core.postprocess import ModelOutputError, iou_matrix, select_detections
from ms_perception.core.preprocess import (
    InputError,
    Letterbox,
    ThermalNormalization,
    load_calibration,
    thermal_to_unit,
    visible_to_rgb,
    warp_thermal,
)
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator, celsius_to_counts


def test_visible_encodings():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(visible_to_rgb(Frame(rgb, 0, "rgb8")), rgb)
    assert np.array_equal(visible_to_rgb(Frame(rgb[..., ::-1].copy(), 0, "bgr8")), rgb)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 255, np.uint8)], 2)
    assert np.array_equal(visible_to_rgb(Frame(rgba, 0, "rgba8")), rgb)
    g = visible_to_rgb(Frame(rgb[..., 0].copy(), 0, "mono8"))
    assert g.shape == (4, 5, 3) and np.array_equal(g[..., 1], rgb[..., 0])


def test_encoding_errors_name_the_fix():
    with pytest.raises(InputError, match=r"visible image encoding 'yuv422' is not supported; use one of"):
        visible_to_rgb(Frame(np.zeros((2, 2, 2), np.uint8), 0, "yuv422"))
    with pytest.raises(InputError, match=r"says 'rgb8' .* holds uint16"):
        visible_to_rgb(Frame(np.zeros((2, 2, 3), np.uint16), 0, "rgb8"))
    with pytest.raises(InputError, match="16-bit thermal: publish mono16"):
        thermal_to_unit(Frame(np.zeros((2, 2, 3), np.uint8), 0, "rgb8"), ThermalNormalization())
    with pytest.raises(InputError, match="no finite value"):
        thermal_to_unit(Frame(np.full((2, 2), np.nan, np.float32), 0, "32FC1"), ThermalNormalization("percentile"))


def test_thermal_window_and_percentile():
    # 20 °C and 35 °C in 0.01 K counts; window -10..50 °C -> 0.5 and 0.75
    counts = np.array([[celsius_to_counts(20.0), celsius_to_counts(35.0)]], np.uint16)
    u = thermal_to_unit(Frame(counts, 0, "mono16"), ThermalNormalization())
    np.testing.assert_allclose(u, [[0.5, 0.75]], atol=1e-4)
    u16 = thermal_to_unit(Frame(counts, 0, "16UC1"), ThermalNormalization())
    np.testing.assert_array_equal(u, u16)
    c = np.array([[20.0, 35.0, np.nan]], np.float32)
    np.testing.assert_allclose(thermal_to_unit(Frame(c, 0, "32FC1"), ThermalNormalization()), [[0.5, 0.75, 0.0]])
    ramp = np.arange(1000, 2001, dtype=np.uint16).reshape(1, -1)
    p = thermal_to_unit(Frame(ramp, 0, "mono16"), ThermalNormalization("percentile", low_percentile=10,
                                                                        high_percentile=90))
    assert p.min() == 0 and p.max() == 1 and 0.45 < p[0, 500] < 0.55
    # 16-bit keeps sub-8-bit detail: 0.01 K steps are distinct (cv_bridge's 16->8 would merge them)
    fine = np.array([[30000, 30001]], np.uint16)
    a = thermal_to_unit(Frame(fine, 0, "mono16"), ThermalNormalization())
    assert a[0, 1] > a[0, 0]
    with pytest.raises(ValueError):
        ThermalNormalization("auto")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["rgb8", "bgr8", "mono8", "mono16", "16UC1", "32FC1", "rgba8", "bgr16", "8UC3"]),
       hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32, np.int16]),
                  st.tuples(st.integers(1, 6), st.integers(1, 6)) | st.tuples(st.integers(1, 6), st.integers(1, 6),
                                                                              st.integers(1, 4))))
def test_fuzz_conversion_gives_image_or_input_error(encoding, data):
    frame = Frame(data, 0, encoding)
    for fn in (visible_to_rgb, lambda fr: thermal_to_unit(fr, ThermalNormalization("percentile"))):
        try:
            out = fn(frame)
        except InputError as exc:
            assert str(exc)
            continue
        assert out.shape[:2] == data.shape[:2]
        if out.dtype == np.float32:
            assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        else:
            assert out.dtype == np.uint8 and out.shape[2] == 3


def test_letterbox_round_trip():
    lb = Letterbox.fit((480, 640), (512, 640))  # 4:3 into 5:4: pad top/bottom
    assert lb.size_hw == (480, 640) and lb.pad == (0, 16)
    boxes = np.array([[10, 20, 110, 220]], np.float32)
    model = boxes.copy()
    model[:, [1, 3]] += 16
    np.testing.assert_allclose(lb.boxes_to_image(model), boxes)
    img = np.random.default_rng(0).integers(0, 9, (480, 640), dtype=np.uint8)
    np.testing.assert_array_equal(lb.mask_to_image(lb.apply(img)), img)
    lb2 = Letterbox.fit((1024, 1280), (256, 320))  # downscale by 4
    assert lb2.scale_xy == (0.25, 0.25) and lb2.pad == (0, 0)
    np.testing.assert_allclose(lb2.boxes_to_image(np.array([[10, 10, 20, 20.0]])), [[40, 40, 80, 80]])


def test_calibration_and_thermal_warp_register_the_synthetic_rig(tmp_path):
    # The generator renders thermal at 1/4 the pixels with a known homography thermal->visible.
    gen = SyntheticGenerator(SynthConfig(width=320, height=256, thermal_factor=4, misregistration_px=3.0), seed=3)
    sp = next(iter(gen.pairs(1)))
    (tmp_path / "cal.yaml").write_text("thermal_to_visible:\n  homography: " + str(sp.homography.tolist()) + "\n")
    m = load_calibration(tmp_path / "cal.yaml")
    np.testing.assert_allclose(m, sp.homography / sp.homography[2, 2])
    unit = thermal_to_unit(Frame(sp.thermal_raw, 0, "mono16"), ThermalNormalization())
    lb = Letterbox.fit((256, 320), (256, 320))
    warped = warp_thermal(unit, m, lb, (256, 320))
    assert warped.shape == (256, 320) and warped.dtype == np.float32
    # the warp equals OpenCV's centre-convention warp of the same homography
    c = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    mc = np.linalg.inv(c) @ m @ c
    # the rig's homography is affine: OpenCV's affine warp (OpenCV 4 rounds its affine and perspective
    # paths differently, by up to 1/32 of a pixel step, so the reference takes the same path)
    assert abs(mc[2, 0]) < 1e-15 and abs(mc[2, 1]) < 1e-15
    ref = cv2.warpAffine(unit, mc[:2], (320, 256), flags=cv2.INTER_LINEAR)
    np.testing.assert_allclose(warped, ref, atol=1e-6)
    persp = cv2.warpPerspective(unit, mc, (320, 256), flags=cv2.INTER_LINEAR)
    np.testing.assert_allclose(warped, persp, atol=0.02)
    with pytest.raises(InputError, match="not invertible"):
        (tmp_path / "bad.yaml").write_text("homography: [0,0,0, 0,0,0, 0,0,1]\n")
        load_calibration(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="expected 'homography'"):
        (tmp_path / "bad2.yaml").write_text("homography: [1, 2]\n")
        load_calibration(tmp_path / "bad2.yaml")


def test_nms_class_aware_and_thresholds():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.zeros((4, 2), np.float32)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 0] = 0.9, 0.8, 0.7, 0.2
    d = select_detections(scores, boxes, score_threshold=0.3, nms_iou=0.5)
    # box 1 overlaps box 0 (IoU 9/11) in the same class -> suppressed; box 2 is another class -> kept
    assert d.labels.tolist() == [0, 1] and d.anchor_index.tolist() == [0, 2]
    np.testing.assert_allclose(d.scores, [0.9, 0.7])
    assert len(select_detections(scores, boxes, score_threshold=0.95)) == 0
    d2 = select_detections(scores, boxes, score_threshold=0.3, nms_iou=0.85)  # IoU 0.818 < 0.85 -> both kept
    assert d2.anchor_index.tolist() == [0, 1, 2]
    assert len(select_detections(scores, boxes, 0.1, 0.5, max_detections=2)) == 2
    scores[0, 0] = np.nan
    with pytest.raises(ModelOutputError, match="NaN"):
        select_detections(scores, boxes)
    np.testing.assert_allclose(iou_matrix(boxes[:1], boxes[1:2]), [[90 / 110]])


def test_inconsistency_formula_by_hand():
    assert binary_entropy(np.array(0.5)) == pytest.approx(1.0)
    assert prediction_inconsistency(np.array(1.0), np.array(0.0)) == pytest.approx(1.0, abs=1e-9)  # maximal
    assert prediction_inconsistency(np.array(0.3), np.array(0.3)) == pytest.approx(0.0, abs=1e-12)  # consistent
    # p_v = 0.9, p_t = 0.1: H(0.5) - H(0.9) = 1 - 0.46900
    h09 = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert prediction_inconsistency(np.array(0.9), np.array(0.1)) == pytest.approx(1 - h09)
    # scale-balanced: level 0 has 3 anchors with I=0, level 1 one anchor with I=1 -> (0 + 1) / 2, not 1/4
    sv = np.array([[0.5], [0.5], [0.5], [1.0]])
    st_ = np.array([[0.5], [0.5], [0.5], [0.0]])
    s = detection_inconsistency(sv, st_, [3, 1])
    assert s.score == pytest.approx(0.5, abs=1e-6) and s.per_level == pytest.approx([0, 1], abs=1e-6)
    with pytest.raises(ValueError, match="level counts"):
        detection_inconsistency(sv, st_, [3, 2])
    # pixels: identical distributions -> 0; disjoint one-hot -> 1 bit (JS divergence maximum)
    pv = np.zeros((3, 2, 2))
    pt = np.zeros((3, 2, 2))
    pv[0], pt[2] = 1, 1
    np.testing.assert_allclose(pixel_inconsistency(pv, pt), 1.0, atol=1e-9)
    seg = segmentation_inconsistency(pv, pv, keep_map=True)
    assert seg.score == pytest.approx(0, abs=1e-9) and seg.map.shape == (2, 2)


@pytest.mark.parametrize("value", [9.007199e15, 3.0e38, -3.0e38])
def test_percentile_stretch_of_extreme_flat_float_images_stays_finite(value):
    # found by the hypothesis fuzz: lo == hi at float32 precision divided by zero
    from ms_perception.core.frames import Frame
    from ms_perception.core.preprocess import ThermalNormalization, thermal_to_unit
    data = np.array([[value, value], [value, -value]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no overflow on the way (it made lo inf: every pixel 0)
        out = thermal_to_unit(Frame(data, 0, "32FC1"), ThermalNormalization(mode="percentile"))
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # sorted values (-v, v, v, v) for v > 0: the 1st percentile is -v + 0.03 * 2v, the 99th v, so the three
    # pixels at v map to 1 and -v to 0; for v < 0 the lone -v is the top and maps to 1 (clipped), v to 0
    expected = [[1, 1], [1, 0]] if value > 0 else [[0, 0], [0, 1]]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_chw_u8_is_the_transpose_for_every_layout():
    """The engine's (1, C, H, W) uint8 feed: OpenCV's split straight into the result's planes must
    give exactly numpy's transpose, for colour, alpha, odd sizes, views that are not contiguous and
    gray images; every call returns a new array (a feed is never overwritten by the next frame)."""
    from ms_perception.core.preprocess import chw_u8
    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (257, 321, 3), dtype=np.uint8)
    cases = [rgb, g.integers(0, 256, (5, 7, 4), dtype=np.uint8), rgb[10:100, 3:200], rgb[:, ::-1],
             g.integers(0, 256, (9, 11), dtype=np.uint8), g.integers(0, 256, (6, 4, 1), dtype=np.uint8)]
    for img in cases:
        got = chw_u8(img)
        want = (img[None, None] if img.ndim == 2 else img.transpose(2, 0, 1)[None])
        assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == want.shape
        assert np.array_equal(got, want)
    a, b = chw_u8(rgb), chw_u8(rgb)
    assert a is not b and not np.shares_memory(a, b) and not np.shares_memory(a, rgb)
    with pytest.raises(TypeError):
        chw_u8(rgb.astype(np.float32))      # never a silent cast of a float image to 8 bits


def test_score_from_level_means_is_numpys_mean_bit_for_bit():
    """inconsistency_from_level_class sums its few numbers in a plain loop (no numpy call per mean
    after the engine); numpy's means of rows shorter than 8 are that loop, so the numbers are equal
    exactly, and a hand value: levels [0.1, 0.3] x classes [1, 0] -> per level 0.05, 0.15; per class 0.2, 0."""
    from ms_perception.core.inconsistency import inconsistency_from_level_class
    r = inconsistency_from_level_class(np.array([[0.1, 0.0], [0.3, 0.0]], np.float32))
    assert r.per_level == [float(np.float32(0.1)) / 2, float(np.float32(0.3)) / 2]
    assert r.per_class == [(float(np.float32(0.1)) + float(np.float32(0.3))) / 2, 0.0]
    assert r.score == pytest.approx(0.1, rel=1e-6)
    rng = np.random.default_rng(0)
    for shape in [(4, 3), (1, 1), (5, 7), (3, 1)]:
        for _ in range(300):
            a = rng.random(shape).astype(np.float32) * rng.choice([1e-3, 0.37, 1.0])
            r, b = inconsistency_from_level_class(a), a.astype(np.float64)
            assert r.per_level == b.mean(1).tolist() and r.per_class == b.mean(0).tolist()
            assert r.score == float(b.mean(1).mean())
    assert inconsistency_from_level_class(np.zeros((0, 3), np.float32)).per_class == [0.0, 0.0, 0.0]


def test_check_boxes_counts_the_reversed_boxes():
    from ms_perception.core.postprocess import ModelOutputError, check_boxes
    check_boxes(np.zeros((0, 4), np.float32))
    check_boxes(np.array([[0, 0, 1, 1], [2, 2, 2, 2]], np.float32))          # a point box is not reversed
    with pytest.raises(ModelOutputError, match="^2 detection box"):
        check_boxes(np.array([[0, 0, 1, 1], [2, 0, 1, 1], [0, 3, 1, 1]], np.float32))
