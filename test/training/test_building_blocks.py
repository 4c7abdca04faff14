"""Backbones, weight loading, necks/heads, anchors and box coding, BatchNorm folding."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ms_perception_training.export.onnx_export import decode_boxes_torch
from ms_perception_training.models.backbones import CEM, FPN, PAFPN, VGG16, ResNet, inflate_first_conv, load_torchvision_weights
from ms_perception_training.models.bn_fold import fold_batchnorm, fold_thermal_repeat
from ms_perception_training.models.multispectral import PRIOR_PROB, RetinaHead, flatten_levels
from ms_perception_training.models.layers import AdaptiveAvgPoolMatmul

from ms_perception.core.anchors import AnchorLevel, BoxCoder, cell_anchors, grid_anchors


def _torchvision_state(arch: str, seed: int = 0) -> dict:
    """A state dict in torchvision's layout: the backbone keys plus the classifier."""
    g = torch.Generator().manual_seed(seed)
    net = ResNet(arch) if arch.startswith("resnet") else VGG16()
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
             for k, v in net.state_dict().items()}
    if arch.startswith("resnet"):
        state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    else:
        for k in ("fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"):
            del state[k]  # torchvision's VGG has classifier.* Linear layers, not fc6/fc7 convs
        state["classifier.0.weight"], state["classifier.6.bias"] = torch.randn(4096, 25088), torch.randn(1000)
    return state


def test_resnet_keys_match_torchvision_names():
    keys = set(ResNet("resnet18").state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.bias", "layer4.1.bn2.weight"} <= keys
    assert sum(p.numel() for p in ResNet("resnet18").parameters()) == 11_689_512 - 513_000  # torchvision minus fc
    assert sum(p.numel() for p in ResNet("resnet34").parameters()) == 21_797_672 - 513_000


@pytest.mark.parametrize("in_ch", [3, 6, 1])
def test_load_torchvision_resnet_state_with_inflation(in_ch):
    state = _torchvision_state("resnet18")
    net = ResNet("resnet18", in_channels=in_ch)
    left = load_torchvision_weights(net, state)
    assert left == []
    assert torch.equal(net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(net.conv1.weight, inflate_first_conv(state["conv1.weight"], in_ch))


def test_load_torchvision_vgg_leaves_fc6_fc7():
    state = _torchvision_state("vgg16")
    net = VGG16()
    left = load_torchvision_weights(net, state)
    assert left == ["fc6.bias", "fc6.weight", "fc7.bias", "fc7.weight"]
    assert torch.equal(net.features[28].weight, state["features.28.weight"])


def test_load_rejects_width_multiplier_and_names_tensors(tmp_path):
    state = _torchvision_state("resnet18")
    with pytest.raises(ValueError, match="width multiplier"):
        load_torchvision_weights(ResNet("resnet18", width=0.5), state)
    p = tmp_path / "w.pth"
    torch.save(state, p)
    assert load_torchvision_weights(ResNet("resnet18"), p) == []
    with pytest.raises(FileNotFoundError):
        load_torchvision_weights(ResNet("resnet18"), tmp_path / "missing.pth")


def test_first_conv_inflation_rules():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3)
    x = torch.randn(1, 3, 9, 9)
    # 6 channels: duplicated and halved -> the same image twice gives the RGB response
    assert torch.allclose(F.conv2d(torch.cat([x, x], 1), inflate_first_conv(w, 6)), F.conv2d(x, w), atol=1e-5)
    w6 = inflate_first_conv(w, 6)
    assert torch.equal(w6[:, :3], w / 2) and torch.equal(w6[:, 3:], w / 2)
    # 1 channel: RGB mean -> a gray image gives the response of the same gray RGB image / 3 * 3
    g = torch.randn(1, 1, 9, 9)
    assert torch.allclose(F.conv2d(g, inflate_first_conv(w, 1)) * 3, F.conv2d(g.repeat(1, 3, 1, 1), w), atol=1e-5)
    with pytest.raises(ValueError):
        inflate_first_conv(w, 4)


def test_adaptive_pool_matmul_equals_torch():
    x = torch.randn(2, 3, 15, 20)
    for s in (1, 2, 3, 6):
        assert torch.allclose(AdaptiveAvgPoolMatmul(s)(x), F.adaptive_avg_pool2d(x, s), atol=1e-6)


def test_retina_head_prior_bias_and_shapes():
    h = RetinaHead(16, num_anchors=9, num_classes=3, channels=16, num_convs=2)
    assert torch.allclose(torch.sigmoid(h.cls_logits.bias), torch.full((27,), PRIOR_PROB))
    cls, box = h([torch.randn(1, 16, 8, 10), torch.randn(1, 16, 4, 5)])
    assert cls[0].shape == (1, 27, 8, 10) and box[1].shape == (1, 36, 4, 5)


def test_fpn_pafpn_cem_shapes():
    feats = [torch.randn(1, 8, 16, 20), torch.randn(1, 16, 8, 10), torch.randn(1, 32, 4, 5)]
    for cls in (FPN, PAFPN):
        out = cls([8, 16, 32], 12, extra_levels=2, cem=True)(feats)
        assert [tuple(o.shape[-2:]) for o in out] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
        assert all(o.shape[1] == 12 for o in out)
    c = CEM(16, 32, 4)
    with torch.no_grad():
        for m in (c.fine, c.coarse, c.glob):
            m.weight.fill_(1.0)
            m.bias.zero_()
    y = c(torch.ones(1, 16, 2, 2), torch.ones(1, 32, 1, 1))
    assert torch.allclose(y, torch.full((1, 4, 2, 2), 16.0 + 32 + 32))  # local + upsampled + global


def test_anchors_hand_checked():
    lv = AnchorLevel(stride=8, sizes=(16.0,), aspect_ratios=(1.0, 4.0))
    a = cell_anchors(lv)
    np.testing.assert_allclose(a, [[-8, -8, 8, 8], [-4, -16, 4, 16]])  # h/w = 4: w = 16/2, h = 16*2
    g = grid_anchors([lv], [(2, 3)])
    assert g.shape == (2 * 3 * 2, 4)
    np.testing.assert_allclose(g[0], [4 - 8, 4 - 8, 4 + 8, 4 + 8])     # cell (0,0), anchor 0
    np.testing.assert_allclose(g[3], [12 - 4, 4 - 16, 12 + 4, 4 + 16])  # cell (0,1), anchor 1
    np.testing.assert_allclose(g[2 * 3], [-4, 4, 12, 20])               # cell (1,0), anchor 0 centre (4, 12)


def test_flatten_levels_matches_anchor_order():
    # channel a*K + k at (y, x) must land at row (y*W + x)*A + a
    A, K, H, W = 2, 3, 2, 3
    x = torch.arange(A * K * H * W, dtype=torch.float32).view(1, A * K, H, W)
    flat = flatten_levels([x], K)
    y, xx, a, k = 1, 2, 1, 2
    assert flat[0, (y * W + xx) * A + a, k] == x[0, a * K + k, y, xx]


def test_box_coder_round_trip_and_torch_mirror():
    rng = np.random.default_rng(0)
    anchors = grid_anchors([AnchorLevel(16, (32.0, 45.0), (0.5, 1.0, 2.0))], [(3, 4)])
    boxes = anchors + rng.normal(0, 3, anchors.shape).astype(np.float32)
    for w in ((1, 1, 1, 1), (10, 10, 5, 5)):
        coder = BoxCoder(w)
        d = coder.encode(anchors, boxes)
        np.testing.assert_allclose(coder.decode(anchors, d), boxes, atol=1e-3)
        t = decode_boxes_torch(torch.from_numpy(anchors), torch.from_numpy(d)[None], w, coder.clip)[0].numpy()
        np.testing.assert_allclose(t, coder.decode(anchors, d), atol=1e-4)
    # huge dw is clamped at log(1000/16), not overflowing
    big = BoxCoder().decode(anchors[:1], np.array([[0, 0, 100.0, 0]], np.float32))
    assert np.isfinite(big).all() and big[0, 2] - big[0, 0] == pytest.approx(
        (anchors[0, 2] - anchors[0, 0]) * 1000 / 16, rel=1e-4)


def test_bn_fold_keeps_outputs():
    torch.manual_seed(0)
    net = ResNet("resnet18", width=0.25)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    ref = net(x)[-1]
    assert fold_batchnorm(net) == 20  # stem 1 + 8 blocks x 2 + 3 downsamples
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(net(x)[-1], ref, atol=1e-4)
    with pytest.raises(RuntimeError, match="eval"):
        fold_batchnorm(ResNet("resnet18", width=0.25))


def test_clip_constant():
    assert BoxCoder().clip == pytest.approx(math.log(1000 / 16))


def _tiny(name: str, seed: int = 0):
    from ms_perception_training.models.build import build_model
    from ms_perception_training.models.config import load_model_config
    torch.manual_seed(seed)
    return build_model(load_model_config(Path(__file__).resolve().parents[2] / "config/models/tiny" / f"{name}.yaml")).eval()


def test_thermal_repeat_fold_sums_the_three_thermal_kernels():
    """Image-level input [R, G, B, t, t, t]: kernels 0.1, 0.2, 0.3 on the thermal copies become one
    kernel 0.6 on t; the RGB kernels are untouched; a constant image gives the same response."""
    model = _tiny("image_r18_retinanet")
    conv = model.encoder.backbone.conv1
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0] = 1.0
        conv.weight[:, 3], conv.weight[:, 4], conv.weight[:, 5] = 0.1, 0.2, 0.3
    v, t = torch.full((1, 3, 16, 16), 2.0), torch.full((1, 1, 16, 16), 10.0)
    before = conv(torch.cat([v, model.prepare_thermal(t, (16, 16))], 1))
    assert fold_thermal_repeat(model) == 1
    assert conv.in_channels == 4 and conv.weight.shape[1] == 4 and model.thermal_channels == 1
    assert torch.allclose(conv.weight[:, 3], torch.full_like(conv.weight[:, 3], 0.6))
    assert torch.equal(conv.weight[:, 0], torch.ones_like(conv.weight[:, 0]))
    after = conv(torch.cat([v, model.prepare_thermal(t, (16, 16))], 1))
    # centre pixel: 49 taps x (1.0 x 2 + 0.6 x 10) = 392, before and after; borders see zeros in all copies
    assert after[0, 0, 4, 4].item() == pytest.approx(392.0, rel=1e-6)
    assert torch.allclose(before, after, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["md_paper_student_r18_retinanet", "gaff_three_branch_r18_retinanet",
                                  "halfway_avg_vgg16_fssd", "decision_r18_retinanet"])
def test_thermal_repeat_fold_keeps_the_outputs(name):
    model = _tiny(name, seed=1)
    h, w = model.input_hw
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(1, 3, h, w, generator=g), torch.randn(1, 1, h, w, generator=g)
    with torch.no_grad():
        ref = model(v, t)
        assert fold_thermal_repeat(model) >= 1
        got = model(v, t)
    for b in ref.branches:
        for a, c in zip(ref.branches[b].cls_logits, got.branches[b].cls_logits):
            assert torch.allclose(a, c, atol=1e-4), b


def test_thermal_repeat_fold_leaves_visible_only_and_one_channel_models():
    assert fold_thermal_repeat(_tiny("md_student_no_thermal_r18_retinanet")) == 0
    model = _tiny("image_r18_retinanet")
    fold_thermal_repeat(model)
    assert fold_thermal_repeat(model) == 0     # already folded: nothing repeats
