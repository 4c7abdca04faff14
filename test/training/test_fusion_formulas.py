"""Each fusion module's formula on small hand-made tensors (METHODS.md §4)."""
import math

import pytest
import torch
from ms_perception_training.models.fusion import CFL, CFR, GAFF, MAF, PSFuse, SimpleFusion, gaff_inter_labels
from ms_perception_training.models.fusion.gaff import IGNORE, THERMAL, VISIBLE
from ms_perception_training.models.fusion.psfuse import schedule


def _center_kernel(conv, weights_per_in, bias=0.0):
    """Set a 3x3 conv (1 output) to a centre tap with the given per-input-channel weights."""
    with torch.no_grad():
        conv.weight.zero_()
        for i, w in enumerate(weights_per_in):
            conv.weight[0, i, 1, 1] = w
        conv.bias.fill_(bias)


def test_gaff_hand_computed():
    g = GAFF(1)
    _center_kernel(g.intra_v, [1.0])
    _center_kernel(g.intra_t, [1.0])
    with torch.no_grad():  # inter input is concat(f_t, f_v); channel 0 = thermal logit = f_t, 1 = 0
        g.inter.weight.zero_()
        g.inter.bias.zero_()
        g.inter.weight[THERMAL, 0, 1, 1] = 1.0
    f_v = torch.zeros(1, 1, 3, 3)
    f_t = torch.full((1, 1, 3, 3), math.log(3.0))
    fused, ex = g(f_v, f_t)
    assert torch.allclose(ex["intra_v"], torch.full_like(f_v, 0.5))
    assert torch.allclose(ex["intra_t"], torch.full_like(f_v, 0.75))
    assert torch.allclose(ex["inter_t"], torch.full_like(f_v, 0.75))
    assert torch.allclose(ex["inter_v"], torch.full_like(f_v, 0.25))
    # f_fused = (ln3 * (1 + .75) * (1 + .75) + 0) / 2
    assert torch.allclose(fused, torch.full_like(f_v, math.log(3.0) * 1.75 * 1.75 / 2))
    # MD teacher mask m_T = m_intra^v m_inter^v + m_intra^t m_inter^t = .5*.25 + .75*.75
    assert torch.allclose(GAFF.combined_mask(ex), torch.full_like(f_v, 0.125 + 0.5625))


def test_gaff_residual_vs_direct():
    g = GAFF(1, residual=False, use_inter=False)
    _center_kernel(g.intra_v, [0.0])
    _center_kernel(g.intra_t, [0.0])
    f = torch.ones(1, 1, 2, 2)
    fused, _ = g(f, f)
    assert torch.allclose(fused, torch.full_like(f, 0.5))  # f * m with m = σ(0)


def test_gaff_inter_only_still_predicts_the_intra_masks_without_applying_them():
    """Same weights as the hand-computed case, intra off: the intra masks (0.5, 0.75) are still in the
    outputs (the inter labels are built from them) but the features are weighted by the inter mask
    only: f_fused = ln3 * (1 + .75) / 2. Before, no intra masks meant no inter labels and no guidance."""
    from ms_perception_training.objectives import guidance_loss
    from ms_perception_training.models.output import ModelOutput
    g = GAFF(1, use_intra=False)
    _center_kernel(g.intra_v, [1.0])
    _center_kernel(g.intra_t, [1.0])
    with torch.no_grad():
        g.inter.weight.zero_()
        g.inter.bias.zero_()
        g.inter.weight[THERMAL, 0, 1, 1] = 1.0
    f_v = torch.zeros(1, 1, 3, 3)
    f_t = torch.full((1, 1, 3, 3), math.log(3.0))
    fused, ex = g(f_v, f_t)
    assert torch.allclose(ex["intra_v"], torch.full_like(f_v, 0.5)) and torch.allclose(ex["intra_t"],
                                                                                          torch.full_like(f_v, 0.75))
    assert torch.allclose(fused, torch.full_like(f_v, math.log(3.0) * 1.75 / 2))
    # the guidance loss now has labels for the inter mask: the ellipse inscribed in a box over the whole
    # 3x3 map covers all 9 pixel centres (corner: 2 * (1/1.5)^2 = 0.89 <= 1), so m_gt = 1; e_v = .5,
    # e_t = .25, e_v - e_t > margin 0.1 -> label THERMAL everywhere; CE = -log softmax(ln3, 0)[0] = -log .75
    out = ModelOutput(main_branch="fused", attention={f"fusion.{k}": v for k, v in ex.items()})
    li, le = guidance_loss(out, [(torch.tensor([[0.0, 0.0, 3.0, 3.0]]), torch.tensor([0]))], (3, 3), 0.1)
    assert torch.is_tensor(li) and le.item() == pytest.approx(-math.log(0.75), rel=1e-5)


def test_gaff_parameter_overhead_matches_thesis_table_4_12():
    # 54C + 4: ResNet-18 (C=256) 23,751,725 -> 23,765,553; VGG-16 (C=512) 31,403,053 -> 31,430,705
    assert sum(p.numel() for p in GAFF(256).parameters()) == 23_765_553 - 23_751_725
    assert sum(p.numel() for p in GAFF(512).parameters()) == 31_430_705 - 31_403_053


def test_gaff_inter_labels_margin():
    m_v = torch.tensor([0.9, 0.2, 0.5, 0.5, 0.75]).view(1, 1, 1, 5)
    m_t = torch.tensor([0.2, 0.9, 0.55, 0.5, 0.5]).view(1, 1, 1, 5)
    gt = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]).view(1, 1, 1, 5)
    lab = gaff_inter_labels(m_v, m_t, gt, margin=0.1)
    # e_v - e_t = -0.7 (visible better), 0.7 (thermal better), 0.05, 0, -0.25
    assert lab.tolist() == [[[VISIBLE, THERMAL, IGNORE, IGNORE, VISIBLE]]]
    # a larger margin ignores the -0.25 case too
    assert gaff_inter_labels(m_v, m_t, gt, margin=0.3).tolist() == [[[VISIBLE, THERMAL, IGNORE, IGNORE, IGNORE]]]
    assert lab.dtype == torch.long and lab.shape == (1, 1, 5)


def test_cfr_loops_and_final_average_exclude_originals():
    c = CFR(1, loops=3, shared=True)
    with torch.no_grad():
        conv = c.fuse[0]
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # f_t
        conv.weight[0, 1, 1, 1] = 1.0  # f_v
    for bn in c.norm:
        bn.eps = 0.0
    c.eval()  # BN with running mean 0, var 1, eps 0 = identity
    f_t, f_v = torch.ones(1, 1, 3, 3), torch.full((1, 1, 3, 3), 2.0)
    out, ex = c(f_v, f_t)
    # loop 1: f_f=3, t=4, v=5; loop 2: f_f=9, t=13, v=14; loop 3: f_f=27, t=40, v=41
    assert torch.allclose(ex["refined_t"][0, 0, 1, 1], torch.tensor(40.0))
    assert torch.allclose(ex["refined_v"][0, 0, 1, 1], torch.tensor(41.0))
    assert torch.allclose(out[0, 0, 1, 1], torch.tensor((4 + 5 + 13 + 14 + 40 + 41) / 6))
    assert {f"mask_logits_{m}{i}" for m in "tv" for i in (1, 2, 3)} <= set(ex)


def test_cfr_unshared_has_one_conv_per_loop():
    assert len(CFR(4, loops=3, shared=False).fuse) == 3 and len(CFR(4, loops=3).fuse) == 1
    # folded: one conv, but a BatchNorm per loop (the loops' inputs differ in scale)
    assert len(CFR(4, loops=3).norm) == 3
    with pytest.raises(ValueError, match="at least one loop"):
        CFR(4, loops=0)


def test_cfr_folded_bn_statistics_are_per_loop():
    c = CFR(2, loops=3, shared=True).train()
    x_v, x_t = torch.rand(2, 2, 5, 5), torch.rand(2, 2, 5, 5)
    c(x_v, x_t)
    means = [bn.running_mean.clone() for bn in c.norm]
    # each loop's BN saw a different input (the refined features grow), so the statistics differ
    assert not torch.allclose(means[0], means[2])


def test_cfl_beta_gamma_hand_computed():
    m = CFL(2, alpha=0.5, groups=1)
    with torch.no_grad():
        m.shared.weight.copy_(torch.tensor([[1.0], [2.0]]).view(2, 1, 1, 1))
        m.shared.bias.zero_()
        for mod in ("v", "t"):
            m.group[mod].weight.zero_()
            m.group[mod].bias.zero_()
            m.point[mod].weight.copy_(torch.tensor([[1.0], [0.0]]).view(2, 1, 1, 1))
            m.point[mod].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.zeros(1, 2, 4, 4)
    x[:, 0] = 1.0  # shared half a = 1, specific half b = 0 -> S = [1, 2], R = [0, 1]
    (o_v, o_t), ex = m(x, x)
    b = 1 / (1 + math.exp(-1))  # e^1/(e^1+e^0) = e^2/(e^2+e^1)
    assert torch.allclose(ex["beta_v"].flatten(), torch.tensor([b, b]))
    assert torch.allclose(o_v[0, :, 2, 2], torch.tensor([b * 1, b * 2 + (1 - b) * 1]))
    assert torch.allclose(o_v, o_t)


def test_cfl_shared_weights_are_shared_and_specific_are_not():
    m = CFL(8, alpha=0.5, groups=2)
    names = [n for n, _ in m.named_parameters()]
    assert sum(n.startswith("shared.") for n in names) == 2  # one conv (weight, bias) for both
    assert {"group.v.weight", "group.t.weight", "point.v.weight", "point.t.weight"} <= set(names)
    assert m.group["v"].groups == 2 and m.group["v"].weight.shape == (8, 2, 3, 3)  # (1-α)C/G = 2 per group
    with pytest.raises(ValueError, match="groups"):
        CFL(6, alpha=0.5, groups=2)


def test_maf_weights_sum_to_one_and_combine():
    maf = MAF(4, modalities=2, grid=2, hidden=8)
    w = maf.weights([torch.randn(3, 4, 5, 7), torch.randn(3, 4, 5, 7)])
    assert w.shape == (3, 2) and torch.allclose(w.sum(1), torch.ones(3))
    mu = torch.tensor([[0.25, 0.75]])
    d = MAF.combine(mu, [torch.zeros(1, 5), torch.full((1, 5), 4.0)])
    assert torch.allclose(d, torch.full((1, 5), 3.0))


def test_psfuse_schedules():
    assert schedule("A", 512) == ([256, 128, 64], [128, 256, 512])
    assert schedule("B", 512) == ([256, 256, 256], [128, 256, 512])
    with pytest.raises(ValueError):
        schedule("C", 512)


def test_psfuse_level_equations():
    torch.manual_seed(0)
    m = PSFuse(4, 8, "A", levels=2).eval()               # mono 4, 2; fused 4, 8
    f_v, f_t = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    fused, ex = m(f_v, f_t)
    f0 = (f_t + f_v) / 2
    tf, vf = torch.cat([f_t, f0], 1), torch.cat([f_v, f0], 1)
    t1, v1, f1 = m.f1[0](tf), m.f2[0](vf), torch.relu((m.f3[0](tf) + m.f4[0](vf)) / 2)
    assert torch.allclose(ex["mono_t"], t1) and torch.allclose(ex["mono_v"], v1)
    tf2, vf2 = torch.cat([t1, f1], 1), torch.cat([v1, f1], 1)
    assert torch.allclose(fused, torch.relu((m.f3[1](tf2) + m.f4[1](vf2)) / 2))
    assert fused.shape == (1, 8, 5, 5) and ex["mono_t"].shape == (1, 4, 5, 5)


@pytest.mark.parametrize("setting", ["A", "B"])
def test_psfuse_builds_no_parameter_that_feeds_nothing(setting):
    """Every parameter gets a gradient from the fused output; the last level has no mono convs
    (A at C = 512: 2 x (384·64·9 + BN) = 0.44 M not built; B: 2.36 M)."""
    torch.manual_seed(0)
    m = PSFuse(16, 32, setting, levels=3)
    fused, _ = m(torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6))
    fused.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert len(m.f1) == len(m.f2) == 2 and len(m.f3) == 3
    if setting == "A":   # VGG conv3 (256) -> conv4 (512), by hand: conv k*k*cin*cout + BN 2*cout
        level0 = 2 * (512 * 256 * 9 + 512) + 2 * (512 * 128 * 9 + 256)      # mono 256, fused 128; cin 256+256
        level1 = 2 * (384 * 128 * 9 + 256) + 2 * (384 * 256 * 9 + 512)      # cin 256+128
        level2 = 2 * (384 * 512 * 9 + 1024)                                 # cin 128+256; fused only
        assert sum(p.numel() for p in PSFuse(256, 512, "A").parameters()) == level0 + level1 + level2


def test_simple_fusions():
    a, b = torch.full((1, 2, 2, 2), 2.0), torch.full((1, 2, 2, 2), 4.0)
    assert torch.equal(SimpleFusion(2, "add")(a, b)[0], a + b)
    assert torch.equal(SimpleFusion(2, "avg")(a, b)[0], (a + b) / 2)
    assert SimpleFusion(2, "concat")(a, b)[0].shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="not one of"):
        SimpleFusion(2, "max")
