"""The trainer's torch box coding and box-drawn masks equal the runtime's numpy ones, by hand and on
random boxes, and stay on the tensors' device."""
import math

import numpy as np
import pytest
import torch
from ms_perception_training.assign import decode_boxes_torch, encode_boxes_torch
from ms_perception_training.objectives import box_mask_torch, ellipse_mask_torch
from ms_perception_training.data.transforms import box_mask, ellipse_mask

from ms_perception.core.anchors import BoxCoder


def test_encode_by_hand():
    # anchor 10x20 centred (5, 10); box 20x20 centred (7, 12): dx = 2/10, dy = 2/20, dw = ln 2, dh = 0
    d = encode_boxes_torch(torch.tensor([[0., 0, 10, 20]]), torch.tensor([[-3., 2, 17, 22]]), (1, 1, 1, 1))
    assert d[0].tolist() == pytest.approx([0.2, 0.1, math.log(2), 0.0])
    w = encode_boxes_torch(torch.tensor([[0., 0, 10, 20]]), torch.tensor([[-3., 2, 17, 22]]), (10, 10, 5, 5))
    assert w[0].tolist() == pytest.approx([2.0, 1.0, 5 * math.log(2), 0.0])


def test_torch_box_coder_agrees_with_the_runtime_numpy_one():
    rng = np.random.default_rng(0)
    a0 = rng.uniform(0, 300, (500, 2))
    anchors = np.concatenate([a0, a0 + rng.uniform(4, 120, (500, 2))], 1).astype(np.float32)
    b0 = a0 + rng.uniform(-20, 20, (500, 2))
    boxes = np.concatenate([b0, b0 + rng.uniform(4, 150, (500, 2))], 1).astype(np.float32)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    want = coder.encode(anchors, boxes)
    got = encode_boxes_torch(torch.from_numpy(anchors), torch.from_numpy(boxes), coder.weights).numpy()
    assert np.allclose(got, want, atol=1e-5)
    back = decode_boxes_torch(torch.from_numpy(anchors), torch.from_numpy(want), coder.weights, coder.clip).numpy()
    assert np.allclose(back, coder.decode(anchors, want), atol=1e-3) and np.allclose(back, boxes, atol=1e-2)


def test_masks_by_hand():
    # a 10x10 box at the origin: 80 pixel centres inside its inscribed circle (see transforms test)
    assert int(ellipse_mask_torch(torch.tensor([[0., 0, 10, 10]]), (12, 12)).sum()) == 80
    # pixel (i, j) inside [x0, x1) x [y0, y1) when its centre is: [1.4, 3.6) covers centres 1.5, 2.5
    m = box_mask_torch(torch.tensor([[1.4, 0.0, 3.6, 1.0], [2.0, 0.0, 4.0, 1.0]]), (5, 1), torch.tensor([7, 9]))
    assert m.tolist() == [[0, 7, 9, 9, 0]]                                   # the later box on top


def test_masks_agree_with_the_numpy_ones_on_random_boxes():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(0, 6))
        p0 = rng.uniform(-5, 40, (n, 2))
        boxes = np.concatenate([p0, p0 + rng.uniform(0, 25, (n, 2))], 1)
        labels = rng.integers(1, 5, n)
        size = (int(rng.integers(8, 48)), int(rng.integers(8, 48)))
        t = torch.from_numpy(boxes)
        assert np.array_equal(ellipse_mask_torch(t, size).numpy(), ellipse_mask(boxes, size))
        assert np.array_equal(box_mask_torch(t, size, torch.from_numpy(labels)).numpy(), box_mask(boxes, size, labels))
        assert np.array_equal(box_mask_torch(t, size).numpy(), box_mask(boxes, size))
