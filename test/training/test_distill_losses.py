"""Formula tests for the distillation losses and Mutual Guidance on hand-computed inputs."""
import math

import pytest
import torch
from ms_perception_training.assign import IoUAssigner, MutualGuidanceAssigner
from ms_perception_training.losses.distill import (
    classification_distill,
    conditional_regression_distill,
    cross_entropy_ignore,
    disagreement_map,
    f_mse,
    pdf_distill_loss,
    pdf_weights,
    segmentation_distill,
)


def test_f_mse_by_hand():
    # C=2, H=1, W=2: location 0 differs by (1, 1) -> e0 = 2, location 1 equal -> e1 = 0
    s = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])
    t = torch.zeros_like(s)
    w0 = math.exp(2) / (math.exp(2) + 1)
    assert f_mse(s, t).item() == pytest.approx(w0 * 2 / 2)
    assert f_mse(t, t).item() == 0


def test_classification_distill_by_hand():
    ds = torch.tensor([[math.log(3.0), 0.0]])  # student p = [0.75, 0.25]
    dt = torch.tensor([[0.0, 0.0]])            # teacher: uniform at any T
    hard = torch.tensor([0])
    hard_ce = -math.log(0.75)
    soft_ce = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    for zeta in (0.5, 0.2, 1.0):               # ζ·g(y^h, φ(d^s)) + (1 − ζ)·g(φ(d^t/T), φ(d^s))
        got = classification_distill(ds, dt, hard, zeta=zeta, temperature=4.0).item()
        assert got == pytest.approx(zeta * hard_ce + (1 - zeta) * soft_ce)
    # the teacher is softened by T, the student is not: dt = [ln 9, 0] at T = 2 gives [0.75, 0.25]
    got = classification_distill(ds, torch.tensor([[math.log(9.0), 0.0]]), hard, zeta=0.0, temperature=2.0).item()
    assert got == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_conditional_regression_is_bounded_by_the_teacher():
    y = torch.zeros(2, 4)
    t_s = torch.tensor([[1.0, 0, 0, 0], [0.1, 0, 0, 0]])
    t_t = torch.tensor([[0.5, 0, 0, 0], [0.5, 0, 0, 0]])
    # row 0: ‖ts−y‖² = 1 > 0.25 -> penalty 1; row 1: 0.01 < 0.25 -> none
    # smooth L1 (β = 1/9): row 0: 1 − β/2; row 1: 0.5·0.01/β
    beta = 1 / 9
    sl1 = ((1 - beta / 2) + 0.5 * 0.01 / beta) / 2
    got = conditional_regression_distill(t_s, t_t, y, epsilon=0.5, delta=0.0).item()
    assert got == pytest.approx(sl1 + 0.5 * (1.0 + 0.0) / 2)
    # a margin δ = 0.3 also penalizes row 1 (0.01 + 0.3 > 0.25)
    got = conditional_regression_distill(t_s, t_t, y, epsilon=0.5, delta=0.3).item()
    assert got == pytest.approx(sl1 + 0.5 * (1.0 + 0.01) / 2)


def test_segmentation_distill_and_ignore():
    # pixel 0: student [ln 3, 0] -> p [.75, .25], gt 0, teacher uniform; pixel 1: gt ignored,
    # student uniform, teacher [ln 4, 0] -> [.8, .2]
    logits = torch.tensor([[[[math.log(3.0), 0.0]], [[0.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, math.log(4.0)]], [[0.0, 0.0]]]])
    gt = torch.tensor([[[0, 255]]])
    hard = -math.log(0.75)                                             # mean over labeled pixels
    soft = (-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) + math.log(2)) / 2   # mean over all pixels
    for xi in (0.5, 0.3):
        assert segmentation_distill(logits, gt, teacher, xi=xi).item() == pytest.approx(xi * hard + (1 - xi) * soft)
    assert cross_entropy_ignore(logits, torch.full((1, 1, 2), 255)).item() == 0


def test_pdf_distil_weights_and_loss_by_hand():
    # 1 anchor x 1 class, H=1, W=2: teacher/student disagree only at location 0
    pt = torch.tensor([[[[0.9, 0.2]]]])
    ps = torch.tensor([[[[0.5, 0.2]]]])
    d = disagreement_map(pt, ps, num_anchors=1, metric="l2")
    assert d.flatten().tolist() == pytest.approx([0.16, 0.0], abs=1e-6)
    m = pdf_weights(d, "soft")
    assert m.flatten().tolist() == pytest.approx([2.0, 0.0])          # H·W·D/ΣD, mean 1
    xt = torch.tensor([[[[1.0, 1.0]]]])
    xs = torch.zeros(1, 1, 1, 2)
    # Σ_hw M·Σ_c (xt−xs)² / (H·W·C) = (2·1 + 0·1) / 2
    assert pdf_distill_loss(xs, xt, m).item() == pytest.approx(1.0)
    assert pdf_distill_loss(xs, xt, pdf_weights(d, "uniform")).item() == pytest.approx(1.0)   # FitNets: MSE
    hard = pdf_weights(torch.tensor([[[3.0, 1.0, 2.0, 0.0]]]), "hard", top_fraction=0.5)
    assert hard.tolist() == [[[2.0, 0.0, 2.0, 0.0]]]
    similar = pdf_weights(torch.tensor([[[3.0, 1.0, 2.0, 0.0]]]), "similar", top_fraction=0.25)
    assert similar.tolist() == [[[0.0, 0.0, 0.0, 4.0]]]          # the most similar quarter, mean 1
    assert disagreement_map(pt, ps, 1, "l1").flatten().tolist() == pytest.approx([0.4, 0.0])
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert disagreement_map(pt, ps, 1, "kl")[0, 0, 0].item() == pytest.approx(kl, rel=1e-5)


# ----------------------------------------------------------------------------- Mutual Guidance

def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_mutual_guidance_empty_ground_truth_is_all_negative():
    a = boxes([0, 0, 10, 10], [5, 5, 15, 15])
    r = MutualGuidanceAssigner().assign(a, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), a, torch.zeros(2, 1))
    assert r.cls_labels.tolist() == [0, 0] and r.reg_gt_index.tolist() == [-1, -1]


def test_localize_to_classify_reranks_by_regressed_iou_keeping_np_ni():
    gt = boxes([0, 0, 10, 10])
    # anchors: A exact (IoU 1), B IoU 0.47 (ignored by the static rule), C far, D far
    anchors = boxes([0, 0, 10, 10], [0, 0, 10, 4.7], [50, 50, 60, 60], [80, 80, 90, 90])
    static = IoUAssigner().assign(anchors, gt)
    assert static.labels.tolist() == [1, -1, 0, 0] and static.num_pos.tolist() == [1] and \
        static.num_ignored.tolist() == [1]
    # predictions: B regresses onto the object, A drifts away; C's prediction lands half on it
    pred = boxes([3, 3, 13, 13], [0, 0, 10, 10], [0, 0, 10, 5], [80, 80, 90, 90])
    scores = torch.tensor([[0.1], [0.1], [0.1], [0.1]])
    r = MutualGuidanceAssigner(sigma=2.0).assign(anchors, gt, torch.tensor([0]), pred, scores)
    # IoU_regressed: A 49/151 = 0.32, B 1.0, C 0.5, D 0: top Np=1 -> B positive, next Ni=1 -> C ignored
    assert r.cls_labels.tolist() == [0, 1, -1, 0] and r.cls_gt_index.tolist() == [-1, 0, -1, -1]
    # Classify to Localize with low scores: ~IoU_anchor ranking -> A regresses (Np = 1)
    assert r.reg_gt_index.tolist() == [0, -1, -1, -1]


def test_classify_to_localize_amplifies_confident_anchors():
    gt = boxes([0, 0, 10, 10])
    anchors = boxes([0, 0, 10, 6], [0, 0, 10, 4.8], [50, 50, 60, 60])    # IoU 0.6 (pos), 0.48 (ignored): Np = 1
    pred = anchors.clone()
    # IoU_amp = IoU ** ((σ − p)/σ), σ = 2: A: 0.6 ** (2/2) = 0.6 with p = 0; B: 0.48 ** ((2 − 1)/2) = 0.693
    scores = torch.tensor([[0.0], [1.0], [0.0]])
    r = MutualGuidanceAssigner(sigma=2.0).assign(anchors, gt, torch.tensor([0]), pred, scores)
    assert 0.48 ** 0.5 > 0.6
    assert r.reg_gt_index.tolist() == [-1, 0, -1]
    # with a huge σ amplification vanishes and A (higher IoU_anchor) wins
    r = MutualGuidanceAssigner(sigma=1e6).assign(anchors, gt, torch.tensor([0]), pred, scores)
    assert r.reg_gt_index.tolist() == [0, -1, -1]
    with pytest.raises(ValueError, match="sigma > 1"):
        MutualGuidanceAssigner(sigma=1.0)


def test_two_objects_competing_for_an_anchor():
    gt = boxes([0, 0, 10, 10], [2, 0, 12, 10])
    anchors = boxes([0, 0, 10, 10], [2, 0, 12, 10], [1, 0, 11, 10], [40, 40, 50, 50])
    pred = anchors.clone()
    scores = torch.zeros(4, 2)
    r = MutualGuidanceAssigner().assign(anchors, gt, torch.tensor([0, 1]), pred, scores)
    # each object keeps its own best anchor; the shared middle anchor follows static counts
    assert r.cls_gt_index[0].item() == 0 and r.cls_gt_index[1].item() == 1
    assert r.cls_labels[3].item() == 0


def test_mutual_guidance_never_picks_anchors_that_do_not_overlap_the_object():
    """Fewer overlapping predictions than Np: the top-Np ranking used to fill up with IoU-0 ties,
    making an anchor 100+ px away a positive (and a regression target)."""
    gt = boxes([0, 0, 10, 10])
    # A exact, B IoU 0.6 (both static positives: Np = 2); C and D 100+ px away
    anchors = boxes([0, 0, 10, 10], [0, 0, 10, 6], [120, 120, 130, 130], [200, 200, 210, 210])
    static = IoUAssigner().assign(anchors, gt)
    assert static.num_pos.tolist() == [2] and static.num_ignored.tolist() == [0]
    # only A's prediction overlaps the object; B's drifted away, as far as C's and D's
    pred = boxes([1, 1, 11, 11], [150, 150, 160, 160], [120, 120, 130, 130], [200, 200, 210, 210])
    r = MutualGuidanceAssigner(sigma=2.0).assign(anchors, gt, torch.tensor([0]), pred, torch.full((4, 1), 0.5))
    assert r.cls_labels.tolist() == [1, 0, 0, 0] and r.cls_gt_index.tolist() == [0, -1, -1, -1]
    # Classify to Localize ranks anchors (A, B overlap): C and D are never regression targets
    assert r.reg_gt_index.tolist() == [0, 0, -1, -1]
    # a single anchor on the object and Np = 1 from the best-anchor rule: the far ones stay out
    r = MutualGuidanceAssigner().assign(anchors[2:], gt, torch.tensor([0]), pred[2:], torch.zeros(2, 1))
    assert r.cls_labels.tolist() == [0, 0] and r.reg_gt_index.tolist() == [-1, -1]


# ----------------------------------------------------------------------------- SSD (softmax) heads


def test_ssd_class_probabilities_are_the_softmax_over_k_plus_1_without_background():
    from ms_perception_training.models.multispectral import anchors_per_level, class_probabilities, level_class_probabilities
    # one level, 1x1 map, A = 2 anchors, K = 1: logits per anchor [background, person]
    x = torch.tensor([0.0, math.log(3.0), math.log(4.0), 0.0]).view(1, 4, 1, 1)
    p = level_class_probabilities(x, 1, "softmax")
    assert p.flatten().tolist() == pytest.approx([0.75, 0.2])            # e^ln3/(1+3), 1/(4+1)
    assert class_probabilities([x], 1, "softmax").flatten().tolist() == pytest.approx([0.75, 0.2])
    assert anchors_per_level([x], 1, "softmax") == [2] and anchors_per_level([x], 1, "sigmoid") == [4]
    # a sigmoid of every logit (the old scoring) would give sigmoid(ln 3) = 0.75 for the first but
    # 0.5 / 0.8 / 0.5 for the rest: four "anchors", background logits included
    assert torch.sigmoid(x).flatten().tolist() != pytest.approx([0.75, 0.2])


def test_softmax_classification_distill_by_hand():
    """Eq. 16 on an SSD head: positives + hardest 3x negatives, ζ·CE(hard) + (1−ζ)·CE(teacher soft)."""
    from ms_perception_training.assign import IoUAssigner
    from ms_perception_training.distillers import softmax_classification_distill_image
    anchors = torch.tensor([[0., 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]])
    gt, lab = torch.tensor([[0., 0, 10, 10]]), torch.tensor([0])
    s = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])          # [background, person] logits
    t = torch.tensor([[0.0, math.log(3.0)], [math.log(9.0), 0.0], [0.0, 0.0]])
    total, pos, reg_gt = softmax_classification_distill_image(s, t, anchors, gt, lab, IoUAssigner(), zeta=0.5)
    assert pos.tolist() == [True, False, False] and reg_gt.tolist() == [0, -1, -1]

    def lsm(a, b):                    # log softmax of two logits
        m = math.log(math.exp(a) + math.exp(b))
        return a - m, b - m
    hard = -lsm(0, 1)[1] - lsm(2, 0)[0] - lsm(0, 0)[0]              # person, background, background
    soft = -(0.25 * lsm(0, 1)[0] + 0.75 * lsm(0, 1)[1]) - (0.9 * lsm(2, 0)[0] + 0.1 * lsm(2, 0)[1]) \
        - (0.5 * lsm(0, 0)[0] + 0.5 * lsm(0, 0)[1])
    assert total.item() == pytest.approx(0.5 * hard + 0.5 * soft, rel=1e-6)
