"""Paired augmentation: boxes, label maps and thermal stay consistent under every transform."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ms_perception_training.data.transforms import (
    Compose,
    Expand,
    HorizontalFlip,
    LowResThermal,
    RandomCrop,
    Resize,
    Sample,
    Thermal3Ch,
    ThermalPhotometric,
    VisiblePhotometric,
    box_mask,
    default_train_transforms,
    ellipse_mask,
    mixup,
    sample_mixup_lambda,
)

W, H = 96, 64


def make_sample(rng, n=3, thermal_ratio=2):
    boxes = []
    for _ in range(n):  # even integer boxes so the half-resolution thermal is exact
        x0, y0 = rng.integers(0, W - 20) // 2 * 2, rng.integers(0, H - 20) // 2 * 2
        boxes.append([x0, y0, x0 + rng.integers(2, 10) * 2, y0 + rng.integers(2, 10) * 2])
    boxes = np.array(boxes, np.float32)
    labels = np.arange(1, n + 1)
    vis = rng.integers(0, 255, (H, W, 3)).astype(np.uint8)
    ids = box_mask(boxes[:1], (W, H), labels[:1])  # one box in the label map: exact bounds to check
    thermal = (ids[::thermal_ratio, ::thermal_ratio] * 1000 + 20000).astype(np.uint16)
    return Sample(vis, thermal, boxes, labels, np.zeros(n, bool), mask=ids)


def bounds(m):
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else None


GEOMETRIC = [HorizontalFlip(p=1.0), RandomCrop(min_scale=0.5), Expand(max_ratio=2.0, p=1.0)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), order=st.permutations(range(3)))
def test_geometric_transforms_keep_boxes_masks_and_thermal_registered(seed, order):
    rng = np.random.default_rng(seed)
    s = make_sample(rng)
    t = Compose([GEOMETRIC[i] for i in order])(s, rng)
    # the label map's object still has the box's bounds (if the box survived a crop)
    if len(t.boxes) and t.labels[0] == 1:
        assert bounds(t.mask == 1) == pytest.approx(t.boxes[0].tolist())
    # thermal is still the label map sampled at half resolution: the modalities stay registered
    assert t.thermal.shape == (t.mask.shape[0] // 2, t.mask.shape[1] // 2)
    assert np.array_equal(t.thermal > 20500, t.mask[::2, ::2] == 1) or (t.mask == 1).sum() == 0
    # boxes stay inside the image
    Wt, Ht = t.size
    assert (t.boxes[:, :2] >= 0).all() and (t.boxes[:, 2] <= Wt).all() and (t.boxes[:, 3] <= Ht).all()


def test_flip_is_exact():
    s = make_sample(np.random.default_rng(0))
    f = HorizontalFlip(p=1.0)(s, np.random.default_rng(0))
    assert np.array_equal(f.visible, s.visible[:, ::-1])
    assert f.boxes[0].tolist() == [W - s.boxes[0, 2], s.boxes[0, 1], W - s.boxes[0, 0], s.boxes[0, 3]]
    assert np.array_equal(HorizontalFlip(p=1.0)(f, np.random.default_rng(0)).visible, s.visible)


def test_resize_scales_boxes_masks_and_thermal_proportionally():
    s = make_sample(np.random.default_rng(1))
    r = Resize((192, 128))(s)
    assert r.visible.shape == (128, 192, 3) and r.thermal.shape == (64, 96) and r.mask.shape == (128, 192)
    assert np.allclose(r.boxes, s.boxes * 2)
    assert bounds(r.mask == 1) == pytest.approx(r.boxes[0].tolist(), abs=1)


def test_crop_drops_boxes_whose_centre_leaves_and_clips_the_rest():
    s = Sample(np.zeros((H, W, 3), np.uint8), None, np.array([[0, 0, 10, 10], [40, 10, 80, 30]], np.float32),
               np.array([1, 2]), np.zeros(2, bool))
    from ms_perception_training.data.transforms import crop
    c = crop(s, (20, 0, 50, 40))  # box 2 centre x=60 inside [20, 70): kept and clipped; box 1 centre outside
    assert c.labels.tolist() == [2] and c.boxes.tolist() == [[20, 10, 50, 30]]


def test_photometric_transforms_touch_only_their_modality():
    s = make_sample(np.random.default_rng(2))
    v = VisiblePhotometric()(s, np.random.default_rng(3))
    assert np.array_equal(v.thermal, s.thermal) and not np.array_equal(v.visible, s.visible)
    t = ThermalPhotometric()(s, np.random.default_rng(3))
    assert np.array_equal(t.visible, s.visible) and not np.array_equal(t.thermal, s.thermal)
    assert t.thermal.dtype == np.uint16 and np.array_equal(t.boxes, s.boxes)


def test_low_res_thermal_simulation():
    th = np.zeros((64, 64), np.float32)
    th[::2, ::2] = 1.0  # finest checkerboard-like detail
    s = Sample(np.zeros((64, 64, 3), np.uint8), th, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
    lo = LowResThermal(16)(s)
    assert lo.thermal.shape == (64, 64)
    assert lo.thermal.std() < 0.1 * th.std()  # 4x per side: the fine detail is gone
    assert lo.thermal.mean() == pytest.approx(th.mean(), abs=0.02)
    const = Sample(np.zeros((64, 64, 3), np.uint8), np.full((64, 64), 7.0, np.float32), np.zeros((0, 4)),
                   np.zeros(0, np.int64), np.zeros(0, bool))
    assert np.allclose(LowResThermal(64)(const).thermal, 7.0)
    with pytest.raises(ValueError, match="square number"):
        LowResThermal(8)
    assert Thermal3Ch()(s).thermal.shape == (64, 64, 3)


def test_mixup_mixes_images_and_weights_boxes_by_lambda():
    rng = np.random.default_rng(4)
    a, b = make_sample(rng, n=2), make_sample(rng, n=3)
    m = mixup(a, b, 0.3)
    assert len(m.boxes) == 5
    assert m.box_weights.tolist() == pytest.approx([0.3, 0.3, 0.7, 0.7, 0.7])
    expect = np.rint(0.3 * a.visible.astype(float) + 0.7 * b.visible.astype(float))
    assert np.abs(m.visible.astype(float) - expect).max() <= 1
    lams = [sample_mixup_lambda(rng) for _ in range(2000)]
    assert 0.45 < np.mean(lams) < 0.55 and min(lams) >= 0 and max(lams) <= 1  # Beta(1, 1) = uniform


def test_object_masks_from_boxes():
    boxes = np.array([[10, 10, 50, 90]], np.float32)
    e = ellipse_mask(boxes, (100, 100))
    assert e.sum() == pytest.approx(math.pi * 20 * 40, rel=0.05)  # inscribed ellipse area
    assert e[50, 30] == 1 and e[11, 11] == 0  # centre in, corner out
    b = box_mask(boxes, (100, 100), labels=np.array([3]))
    assert (b == 3).sum() == 40 * 80 and b[10, 10] == 3 and b[9, 10] == 0
    assert ellipse_mask(boxes, (100, 100), ignore=np.array([True])).sum() == 0


def test_default_pipeline_runs_and_is_deterministic():
    s = make_sample(np.random.default_rng(5))
    tf = default_train_transforms(sizes=((96, 64), (128, 96)), low_res_factor=4)
    a = tf(s, np.random.default_rng(9))
    b = tf(s, np.random.default_rng(9))
    assert np.array_equal(a.visible, b.visible) and np.array_equal(a.boxes, b.boxes)
    assert a.size in ((96, 64), (128, 96))


def test_ellipse_mask_follows_the_box_pixel_convention():
    """Box [0, 0, 10, 10]: centre (5, 5), half-sizes 5. Pixel (row 5, col 0) has its centre at
    (0.5, 5.5): (4.5/5)^2 + (0.5/5)^2 = 0.82 <= 1, inside; pixel (0, 0) at (0.5, 0.5): 2 * 0.81 > 1,
    outside. Nothing outside the box's columns/rows 0..9, and the mask is symmetric (cv2.ellipse
    put it half a pixel down-right and one pixel wider: column 10 and row 10 were set)."""
    m = ellipse_mask(np.array([[0, 0, 10, 10]], np.float32), (12, 12))
    assert m[5, 0] == 1 and m[0, 0] == 0 and m[0, 5] == 1
    assert m[:, 10:].sum() == 0 and m[10:, :].sum() == 0
    inner = m[:10, :10]
    assert (inner == inner[::-1, :]).all() and (inner == inner[:, ::-1]).all() and (inner == inner.T).all()
    # count by hand: per row i (centre i + 0.5), the columns j with (j + 0.5 - 5)^2 <= 25 - (i + 0.5 - 5)^2
    want = sum(1 for i in range(10) for j in range(10) if (j + 0.5 - 5) ** 2 + (i + 0.5 - 5) ** 2 <= 25)
    assert m.sum() == want == 80
