"""MultispectralModel is assembled from injected parts (encoder, heads, decision fusion), and
``build_model`` is a thin mapping of a config onto those constructors."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ms_perception_training.models.backbones import ResNet  # noqa: E402
from ms_perception_training.models.build import anchor_levels, build_model  # noqa: E402
from ms_perception_training.models.config import AnchorConfig, load_model_config  # noqa: E402
from ms_perception_training.models.fusion import GAFF  # noqa: E402
from ms_perception_training.models.multispectral import RetinaHead  # noqa: E402
from ms_perception_training.models.multispectral import (  # noqa: E402
    DecisionFusion,
    DetectionBranch,
    Halfway,
    MultispectralModel,
    OneStream,
    TwoStream,
)
from ms_perception_training.models.backbones import FPN  # noqa: E402
from ms_perception_training.objectives import Objective  # noqa: E402
from torch import nn  # noqa: E402

from ms_perception.core.anchors import AnchorLevel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class MaxFusion(nn.Module):
    """A user's own fusion module: elementwise max, then a learned 1x1 conv."""

    def __init__(self, c):
        super().__init__()
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, f_v, f_t):
        x = self.mix(torch.maximum(f_v, f_t))
        return x, {"max_share_v": (f_v >= f_t).float().mean((1, 2, 3))}


def _halfway_parts(fusion_cls, width=0.125, neck_ch=32, thermal_channels=1):
    bv, bt = ResNet("resnet18", 3, width), ResNet("resnet18", thermal_channels, width)
    c = bv.stage_channels
    fusion = fusion_cls(c[2])
    enc = Halfway(bv, bt, fusion, stage=2)
    levels = anchor_levels(AnchorConfig(), [16, 32, 64, 128])
    head = DetectionBranch(FPN([c[2], c[3]], neck_ch, 2), RetinaHead(neck_ch, levels[0].num_anchors, 1, neck_ch, 2),
                           levels=[2, 3])
    return enc, {"fused": head}, levels


def test_a_model_from_injected_parts_runs_and_trains_a_custom_fusion_module():
    torch.manual_seed(0)
    enc, heads, levels = _halfway_parts(MaxFusion)
    model = MultispectralModel(enc, heads, levels, input_hw=(96, 128), name="max_fusion")
    v, t = torch.randn(2, 3, 96, 128), torch.randn(2, 1, 96, 128)
    out = model(v, t)
    assert model.main_branch == "fused" and model.output_branches == ["fused"]
    assert [tuple(x.shape) for x in out.cls_logits] == [(2, 9, 6, 8), (2, 9, 3, 4), (2, 9, 2, 2), (2, 9, 1, 1)]
    assert out.attention["max_share_v"].shape == (2,)
    assert set(out.features) >= {"visible.C4", "thermal.C4", "fused.C4", "fused.C5"}
    # the thermal stream stops at the fusion stage: its C5 was pruned
    assert "thermal.C5" not in out.features
    # the objective trains it like any preset: the custom module gets gradients
    from ms_perception_training.models.config import ModelConfig
    obj = Objective(model, ModelConfig(name="max_fusion"))
    targets = [(torch.tensor([[10.0, 10.0, 50.0, 80.0]]), torch.tensor([0]))] * 2
    loss = sum(obj.task_losses(out, targets).values())
    loss.backward()
    assert enc.fusion.mix.weight.grad is not None and enc.fusion.mix.weight.grad.abs().sum() > 0


def test_build_model_is_the_preset_mapped_onto_the_constructors():
    """The GAFF preset and the same parts assembled by hand, from the same seed, are the same
    network: equal state dicts and equal outputs."""
    cfg = load_model_config(REPO / "config/models/tiny/gaff_r18_retinanet.yaml")
    torch.manual_seed(3)
    built = build_model(cfg).eval()
    torch.manual_seed(3)
    g = cfg.fusion.gaff
    enc, heads, levels = _halfway_parts(lambda c: GAFF(c, g.kernel_size, g.intra, g.inter, g.residual),
                                        width=cfg.backbone.width, neck_ch=cfg.neck.channels, thermal_channels=3)
    hand = MultispectralModel(enc, heads, levels, input_hw=(96, 128), thermal_channels=3).eval()
    sb, sh = built.state_dict(), hand.state_dict()
    assert list(sb) == list(sh)
    assert all(torch.equal(sb[k], sh[k]) for k in sb)
    assert built.anchor_levels() == hand.anchor_levels()
    v, t = torch.randn(1, 3, 96, 128), torch.randn(1, 1, 96, 128)
    with torch.no_grad():
        a, b = built(v, t), hand(v, t)
    assert all(torch.equal(x, y) for x, y in zip(a.cls_logits + a.box_deltas, b.cls_logits + b.box_deltas))


def test_decision_fusion_averages_probabilities_and_deltas():
    """Without MAF, the fused branch is the mean of the two branches' sigmoid probabilities
    (back to logits) and of their deltas: p_v = σ(0) = 0.5, p_t = σ(ln 3) = 0.75 -> 0.625."""
    class Const(nn.Module):
        def __init__(self, logit, delta):
            super().__init__()
            self.logit, self.delta = logit, delta
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, feats, hw, out, name):
            from ms_perception_training.models.output import BranchOutput
            z = torch.zeros(1, 1, 1, 1) + self.p
            return BranchOutput(cls_logits=[z + self.logit], box_deltas=[z.repeat(1, 4, 1, 1) + self.delta])

    enc = TwoStream(ResNet("resnet18", 3, 0.125), ResNet("resnet18", 1, 0.125))
    model = MultispectralModel(enc, {"visible": Const(0.0, 1.0), "thermal": Const(float(torch.log(torch.tensor(3.0))), 3.0)},
                               [AnchorLevel(8, (32.0,), (1.0,))], decision=DecisionFusion("sigmoid", 1))
    out = model.eval()(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
    assert model.output_branches == ["fused", "visible", "thermal"]
    assert torch.sigmoid(out.cls_logits[0]).item() == pytest.approx(0.625, abs=1e-6)
    assert out.box_deltas[0].flatten().tolist() == pytest.approx([2.0] * 4)


def test_parts_that_do_not_fit_are_refused_with_the_reason():
    enc = OneStream(ResNet("resnet18", 3, 0.125), "visible")
    head = nn.Identity()
    with pytest.raises(ValueError, match=r"heads \['fused'\] have no features: the encoder gives \['visible'\]"):
        MultispectralModel(enc, {"fused": head})
    with pytest.raises(ValueError, match="decision fusion combines a visible and a thermal head"):
        MultispectralModel(enc, {"visible": head}, decision=DecisionFusion("sigmoid", 1))
    with pytest.raises(ValueError, match="OneStream inputs"):
        OneStream(ResNet("resnet18", 3, 0.125), "rgb")
    with pytest.raises(ValueError, match="this model needs a visible image"):
        MultispectralModel(enc, {"visible": head})(None, torch.zeros(1, 1, 8, 8))
