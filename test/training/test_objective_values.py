"""Hand-checkable values of the losses that earlier tests only checked for presence: GAFF's
guidance, CFR's masks, the segmentation auxiliary loss, the cross-modal feature term, MAF's
weights, PDF-Distil over several anchors, classes and images, and Mutual Guidance's contested
anchor. Each expected value is worked out in the comments."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ms_perception_training.assign import IoUAssigner, MutualGuidanceAssigner  # noqa: E402
from ms_perception_training.losses.distill import (  # noqa: E402
    disagreement_map,
    feature_distill,
    pdf_distill_loss,
    pdf_weights,
)
from ms_perception_training.models.config import ModelConfig  # noqa: E402
from ms_perception_training.models.fusion import MAF  # noqa: E402
from ms_perception_training.models.output import ModelOutput  # noqa: E402
from ms_perception_training.objectives import Objective, object_masks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LN3 = math.log(3.0)


def _objective(module: str) -> Objective:
    cfg = ModelConfig(name="hand")
    cfg = replace(cfg, fusion=replace(cfg.fusion, scheme="halfway", module=module))
    return Objective(None, cfg)


def test_gaff_guidance_losses_by_hand():
    """A 4x4 input with one 4x4 box. Its inscribed ellipse (pixel centres 0.5..3.5, centre 2, radii 2)
    holds the 12 pixels whose (dx² + dy²) ≤ 4: all but the 4 corners (2.25 + 2.25 = 4.5).
    L_intra = Dice(m_v, gt) + Dice(m_t, gt) with Dice = 1 − (2Σpg + 1)/(Σp + Σg + 1):
      m_v = gt: 1 − 25/25 = 0;  m_t = 0.5: Σp = 8, Σpg = 6 -> 1 − 13/21 = 8/21.
    Inter labels (eq. 4.14): e_v = 0, e_t = 0.5 everywhere -> e_t − e_v = 0.5 > 0.1: VISIBLE (1) at
    every pixel; logits (thermal 0, visible ln 3) give p_visible = 3/4: L_inter = −ln 0.75."""
    targets = [(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0]))]
    like = torch.zeros(1, 1, 4, 4)
    gt = object_masks(targets, like, (4, 4), ellipse=True)
    assert gt[0, 0].tolist() == [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    out = ModelOutput(main_branch="fused")
    out.attention.update(intra_v=gt.clone(), intra_t=torch.full((1, 1, 4, 4), 0.5),
                         inter_logits=torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), LN3)], 1))
    parts = _objective("gaff").module_losses(out, targets, (4, 4))
    assert parts["intra"].item() == pytest.approx(8 / 21, rel=1e-6)
    assert parts["inter"].item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_cfr_mask_loss_by_hand():
    """Box [0, 0, 2, 4] on a 4x4 map fills the 8 pixels of columns 0-1. Σ over loops and modalities
    of Dice(σ(logits), mask): logits 0 (p = 0.5, Σp = 8, Σpg = 4): 1 − 9/17 = 8/17;
    logits ln 3 (p = 0.75, Σp = 12, Σpg = 6): 1 − 13/21 = 8/21."""
    targets = [(torch.tensor([[0.0, 0.0, 2.0, 4.0]]), torch.tensor([0]))]
    out = ModelOutput(main_branch="fused")
    out.attention.update(mask_logits_v0=torch.zeros(1, 1, 4, 4), mask_logits_t0=torch.full((1, 1, 4, 4), LN3))
    parts = _objective("cfr").module_losses(out, targets, (4, 4))
    assert parts["cfr_masks"].item() == pytest.approx(8 / 17 + 8 / 21, rel=1e-6)


def test_segmentation_auxiliary_loss_by_hand():
    """The 4x4 logit map of an 8x8 input (scale 1/2). Box [0, 0, 4, 8] of class 0 -> [0, 0, 2, 4] on
    the map: target 1 (class + 1) on 8 pixels, background 0 on the other 8. Logits (0, ln 3) give
    p_1 = 0.75, p_0 = 0.25: CE = (8·(−ln 0.75) + 8·(−ln 0.25)) / 16. A box [0, 0, 2, 4] covers 2
    map pixels: (2·(−ln 0.75) + 14·(−ln 0.25)) / 16."""
    out = ModelOutput(main_branch="fused")
    out.aux["seg_logits"] = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), LN3)], 1)
    half = [(torch.tensor([[0.0, 0.0, 4.0, 8.0]]), torch.tensor([0]))]
    small = [(torch.tensor([[0.0, 0.0, 2.0, 4.0]]), torch.tensor([0]))]
    got = _objective("add").module_losses(out, half, (8, 8))["seg_aux"].item()
    assert got == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)
    got = _objective("add").module_losses(out, small, (8, 8))["seg_aux"].item()
    assert got == pytest.approx((-2 * math.log(0.75) - 14 * math.log(0.25)) / 16, rel=1e-6)


def test_cross_modal_feature_term_by_hand():
    """L_F = ρ‖A(E_s) − E_t‖² (mean over elements), E_t = [visible, thermal] teacher features.
    Hand case: feature_distill([[1, 2], [3, 4]], 0) = (1 + 4 + 9 + 16) / 4 = 7.5. In the distiller,
    with the adapter zeroed and both teacher features 2 everywhere: ρ · 4 = 0.5 · 4 = 2."""
    assert feature_distill(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)).item() == 7.5
    from ms_perception_training.distillers import build_distiller
    from ms_perception_training.experiment import load_experiment
    from ms_perception_training.models.build import build_model
    from ms_perception_training.data.sources import make_pool
    from ms_perception_training.data.loader import make_batch
    cfg, mcfg, tcfg = load_experiment(REPO / "config/experiments/crossmodal_smoke.yaml")
    pool = make_pool(mcfg, replace(cfg.data, pairs=4))
    torch.manual_seed(0)
    student, teacher = build_model(mcfg), build_model(tcfg)
    b = make_batch(pool, [0, 1], mcfg, augment=False)
    dist = build_distiller(cfg.distill, teacher, tcfg, student, mcfg, b)
    assert cfg.distill.rho == 0.5
    with torch.no_grad():
        dist.adapter.weight.zero_()
        dist.adapter.bias.zero_()
    s_out, t_out = student(b.visible), dist.forward_teacher(b)
    for k in dist.t_keys:
        t_out.features[k] = torch.full_like(t_out.features[k], 2.0)
    parts = dist.losses(student, s_out, t_out, b, Objective(student, mcfg))
    assert parts["cm_feature"].item() == pytest.approx(2.0, rel=1e-6)


def test_cross_modal_distiller_without_its_soft_terms_is_the_plain_students_loss():
    """Liu et al. Table IV's ablation arms (bench/train_experiments.py, rgb_only_cm_*) switch one
    term at a time; with all four off (ζ = 1, ε = 0, ξ = 1, ρ = 0) what is left must be the plain
    RGB-only student's own losses on the same batch: the focal loss over the positive count, the
    segmentation CE, and eq. 17's smooth L1, which the plain objective gives with balanced_l1 off.
    The project's default objective (balanced L1) differs in the box term only."""
    from ms_perception_training.data.loader import make_batch
    from ms_perception_training.data.sources import make_pool
    from ms_perception_training.distillers import build_distiller
    from ms_perception_training.experiment import load_experiment
    from ms_perception_training.models.build import build_model
    cfg, mcfg, tcfg = load_experiment(REPO / "config/experiments/crossmodal_smoke.yaml")
    dcfg = replace(cfg.distill, zeta=1.0, epsilon=0.0, xi=1.0, rho=0.0)
    pool = make_pool(mcfg, replace(cfg.data, pairs=24))        # scene 0 (pairs 0-19) holds no person
    torch.manual_seed(0)
    student, teacher = build_model(mcfg), build_model(tcfg)
    b = make_batch(pool, [20, 21, 22, 23], mcfg, augment=False)
    assert sum(len(t[0]) for t in b.targets) == 8
    dist = build_distiller(dcfg, teacher, tcfg, student, mcfg, b)
    s_out, t_out = student(*student.inputs(b.visible, b.thermal)), dist.forward_teacher(b)
    hw = tuple(b.visible.shape[-2:])
    parts = dist.losses(student, s_out, t_out, b, Objective(student, mcfg))
    main = s_out.main_branch
    smooth = Objective(student, mcfg, balanced_l1=False)
    plain = {**smooth.task_losses(s_out, b.targets), **smooth.module_losses(s_out, b.targets, hw)}
    assert parts["cm_feature"].item() == 0.0 and parts["cm_reg"].item() > 0
    assert parts["cm_cls"].item() == pytest.approx(plain[f"{main}_cls"].item(), rel=1e-5)
    assert parts["cm_reg"].item() == pytest.approx(plain[f"{main}_box"].item(), rel=1e-5)
    assert parts["cm_seg"].item() == pytest.approx(plain["seg_aux"].item(), rel=1e-5)
    balanced = Objective(student, mcfg).task_losses(s_out, b.targets)
    assert balanced[f"{main}_cls"].item() == pytest.approx(plain[f"{main}_cls"].item(), rel=1e-6)
    assert abs(balanced[f"{main}_box"].item() - parts["cm_reg"].item()) > 1e-3 * parts["cm_reg"].item()
    # the full distiller (the paper's weights) halves the hard focal term and adds the soft ones
    dist.dcfg = cfg.distill
    assert cfg.distill.zeta == 0.5
    parts_full = dist.losses(student, s_out, t_out, b, Objective(student, mcfg))
    assert parts_full["cm_cls"].item() != pytest.approx(parts["cm_cls"].item(), rel=1e-3)


def test_maf_weights_by_hand():
    """MAF: μ = softmax(MLP(concat_m pool(o^m))). One channel, a 2x2 grid: the visible map
    arange(16) (4x4) pools to quadrant means 2.5, 4.5, 10.5, 12.5; thermal 0. With a hidden unit
    h = ReLU(q_br − q_tl) = 10 and output logits (0.1 h, 0) = (1, 0): μ = (e/(e+1), 1/(e+1))."""
    maf = MAF(1, modalities=2, grid=2, hidden=1)
    v = torch.arange(16.0).view(1, 1, 4, 4)
    assert maf.pool(v).flatten().tolist() == pytest.approx([2.5, 4.5, 10.5, 12.5])
    with torch.no_grad():
        w1 = torch.zeros(1, 8)
        w1[0, 3], w1[0, 0] = 1.0, -1.0
        maf.mlp[0].weight.copy_(w1)
        maf.mlp[0].bias.zero_()
        maf.mlp[2].weight.copy_(torch.tensor([[0.1], [0.0]]))
        maf.mlp[2].bias.zero_()
    mu = maf.weights([v, torch.zeros(1, 1, 4, 4)])
    e = math.e
    assert mu.flatten().tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)], rel=1e-6)


def test_pdf_distil_over_anchors_classes_and_images_by_hand():
    """2 anchors x 2 classes (4 channels), 2 images, H = 1, W = 2.
    Image 0: location 0 differs by (0.4, 0, 0, 0.2): D = 0.16 + 0.04 = 0.20; location 1: 0.
      M = H·W·D/ΣD = (2, 0). Features: teacher 1, student 0 everywhere (Σ_c = 2 per location):
      loss_0 = (2·2 + 0·2) / (H·W·C = 4) = 1.
    Image 1: D = (0.01, 0.09) -> M = (0.2, 1.8); the student equals the teacher at location 1:
      loss_1 = (0.2·2 + 1.8·0) / 4 = 0.1.   Batch mean: 0.55 (FitNets' uniform M: (1 + 0.5)/2 = 0.75)."""
    pt = torch.tensor([[[[0.9, 0.5]], [[0.1, 0.5]], [[0.5, 0.5]], [[0.5, 0.5]]],
                       [[[0.2, 0.6]], [[0.2, 0.2]], [[0.2, 0.2]], [[0.2, 0.2]]]])
    ps = torch.tensor([[[[0.5, 0.5]], [[0.1, 0.5]], [[0.5, 0.5]], [[0.3, 0.5]]],
                       [[[0.1, 0.3]], [[0.2, 0.2]], [[0.2, 0.2]], [[0.2, 0.2]]]])
    d = disagreement_map(pt, ps, num_anchors=2)
    assert d.flatten().tolist() == pytest.approx([0.20, 0.0, 0.01, 0.09], abs=1e-6)
    m = pdf_weights(d, "soft")
    assert m.flatten().tolist() == pytest.approx([2.0, 0.0, 0.2, 1.8], rel=1e-5)
    xt = torch.ones(2, 2, 1, 2)
    xs = torch.zeros(2, 2, 1, 2)
    xs[1, :, 0, 1] = 1.0
    assert pdf_distill_loss(xs, xt, m).item() == pytest.approx(0.55, rel=1e-5)
    assert pdf_distill_loss(xs, xt, pdf_weights(d, "uniform")).item() == pytest.approx(0.75, rel=1e-6)
    with pytest.raises(ValueError, match="not 3 anchors"):
        disagreement_map(pt, ps, num_anchors=3)


def test_mutual_guidance_contested_anchor_by_hand():
    """Two objects 2 px apart and an anchor M between them that both rank.
    gt0 = [0,0,10,10], gt1 = [2,0,12,10]; anchors A0 = gt0, A1 = gt1, M = [1.5,0,11.5,10], F far.
    Static IoU: M-gt0 = 85/115 = 0.739, M-gt1 = 95/105 = 0.905 -> M is gt1's: Np = (1, 2), Ni = (0, 0).
    Localize to Classify on the predictions (IoU with gt0, gt1):
      A0 -> [-3,0,7,10]: 70/130 = 0.538, 50/150 = 0.333;  A1 -> A1: 0.667, 1;
      M -> [0.8,0,10.8,10]: 92/108 = 0.852, 88/112 = 0.786;  F: 0, 0.
      gt0's top 1: M (0.852). gt1's top 2: A1 (1), M (0.786 > A0's 0.333). M is picked by both and
      goes where its value is higher: gt0 (0.852 > 0.786). A0 is picked by none: negative.
    Classify to Localize with p = 0 (IoU_anchor ** 1): gt0's top 1: A0 (1); gt1's top 2: A1 (1), M (0.905).
    So the contested anchor classifies gt0 but regresses to gt1."""
    box = lambda *r: torch.tensor(r, dtype=torch.float32)  # noqa: E731
    gt = box([0, 0, 10, 10], [2, 0, 12, 10])
    anchors = box([0, 0, 10, 10], [2, 0, 12, 10], [1.5, 0, 11.5, 10], [40, 40, 50, 50])
    static = IoUAssigner().assign(anchors, gt)
    assert static.gt_index.tolist() == [0, 1, 1, -1] and static.num_pos.tolist() == [1, 2]
    pred = box([-3, 0, 7, 10], [2, 0, 12, 10], [0.8, 0, 10.8, 10], [40, 40, 50, 50])
    r = MutualGuidanceAssigner(sigma=2.0).assign(anchors, gt, torch.tensor([0, 0]), pred, torch.zeros(4, 1))
    assert r.cls_labels.tolist() == [0, 1, 1, 0]
    assert r.cls_gt_index.tolist() == [-1, 1, 0, -1]
    assert r.reg_gt_index.tolist() == [0, 1, 1, -1]
