"""Teacher → student distillation inside the trainer (METHODS.md §3, §5, §6).

A distiller holds the frozen teacher (eval mode, no gradients) and the student-side modules
that exist only for training (adapters, the MD mask conv and residual block); they are
optimized with the student and saved in its checkpoints under ``distill``, never exported.

- ``pdf``        PDF-Distil (thesis §3.3): per pyramid level, a 1×1 adapter projects the
                 student's neck feature to the teacher's channels; the disagreement map of
                 the two heads' class probabilities weighs the imitation (eq. 3.5–3.6).
                 ``pdf_weights: uniform`` is FitNets, ``hard`` the top-k ablation. The total
                 is L_det + w·Σ_levels L_kd (the thesis gives no weight: w = 1).
- ``modality``   Modality Distillation (WACV 2022): frozen GAFF teacher; attention transfer
                 Dice(σ(conv1×1(f_S)), m_intra^v m_inter^v + m_intra^t m_inter^t) and semantic
                 transfer F-MSE(residual_block(f_S), f_T) (plain MSE as the ablation) at the
                 teacher's fusion stage; L = L_task + L_att + L_sem.
- ``crossmodal`` Liu et al. §IV: frozen two-branch (CFL) teacher, RGB-only student with the
                 segmentation auxiliary head; L_TS = Ld_cls + λ·Ld_reg + η·Ld_seg + ρ·L_F with
                 λ = η = 1, ρ = 0.5, ζ = ε = ξ = 0.5 (eq. 14–18). The student's own task
                 losses are the hard-label halves of these terms. On a one-stage sigmoid head,
                 eq. 16 is applied per anchor and class as a two-way softmax (= sigmoid): the
                 hard half is the detector's focal loss, the soft half BCE against σ(d_t/T) with
                 the same |q − p|^γ modulation (else ~10⁴ background anchors swamp it), both
                 normalized by the positive count (METHODS §6: "apply the same losses to the
                 project's one-stage detectors").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ms_perception_training.assign import encode_boxes_torch
from ms_perception_training.objectives import dice_loss, sigmoid_focal_loss
from ms_perception_training.losses.distill import (
    conditional_regression_distill,
    disagreement_map,
    f_mse,
    feature_distill,
    mse,
    pdf_distill_loss,
    pdf_weights,
    segmentation_distill,
)
from ms_perception_training.models.fusion.gaff import GAFF
from ms_perception_training.models.multispectral import flatten_levels, level_class_probabilities
from ms_perception_training.objectives import assign_image, seg_aux_target
from torch import nn


def sigmoid_classification_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard: torch.Tensor,
                                   zeta: float = 0.5, temperature: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """Eq. 16 for sigmoid heads, summed over the given (anchor, class) entries:
    ζ·FL(d_s; y_hard) + (1 − ζ)·|q − σ(d_s)|^γ·BCE(d_s; q), q = σ(d_t / T). Normalize outside."""
    q = torch.sigmoid(teacher_logits.detach() / temperature)
    p = torch.sigmoid(student_logits)
    soft = (q - p).abs().detach().pow(gamma) * F.binary_cross_entropy_with_logits(student_logits, q, reduction="none")
    return zeta * sigmoid_focal_loss(student_logits, hard).sum() + (1 - zeta) * soft.sum()


def softmax_classification_distill_image(cls_s: torch.Tensor, cls_t: torch.Tensor, anchors, gt, lab, assigner,
                                         zeta: float = 0.5, temperature: float = 1.0, neg_pos_ratio: int = 3):
    """Eq. 16 for softmax (SSD) heads on one image, over the entries SSD's own loss trains: the
    positives and the hardest 3× as many negatives (by the student's hard-label CE):
    Σ ζ·CE(d_s, y_hard) + (1 − ζ)·(−Σ_c softmax(d_t / T)_c log softmax(d_s)_c), classes 0..K with
    0 background. Returns (sum, positives mask, regression GT index (−1: none)); normalize outside."""
    res = assigner.assign(anchors, gt)
    pos = res.labels == 1
    target = torch.zeros(cls_s.shape[0], dtype=torch.long, device=cls_s.device)
    target[pos] = lab[res.gt_index[pos]] + 1
    ce = F.cross_entropy(cls_s, target, reduction="none")
    neg = res.labels == 0
    k = min(int(neg.sum()), max(1, neg_pos_ratio * int(pos.sum())))
    sel = pos.clone()
    if k:
        sel[torch.where(neg, ce.detach(), torch.full_like(ce, -1.0)).topk(k).indices] = True
    soft = torch.softmax(cls_t[sel].detach() / temperature, -1)
    soft_ce = -(soft * F.log_softmax(cls_s[sel], -1)).sum(-1)
    reg_gt = torch.where(pos, res.gt_index, torch.full_like(res.gt_index, -1))
    return zeta * ce[sel].sum() + (1 - zeta) * soft_ce.sum(), pos, reg_gt


class ResidualBlock(nn.Module):
    """MD semantic transfer: (3×3 conv + BN) twice with a skip connection."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def _freeze(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Distiller(nn.Module):
    """Base: ``forward_teacher(batch)`` then ``losses(student, s_out, t_out, batch, objective)``."""
    replaces_task_loss = False

    def __init__(self, teacher: nn.Module, tcfg, scfg, dcfg):
        super().__init__()
        self.teacher = [_freeze(teacher)]          # a list: not a submodule (not trained, not saved)
        self.tcfg, self.scfg, self.dcfg = tcfg, scfg, dcfg

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher[0].eval()
        return self

    def forward(self, student, s_out, t_out, batch, objective) -> dict:
        """The losses as a module call (what DistributedDataParallel wraps)."""
        return self.losses(student, s_out, t_out, batch, objective)

    @torch.no_grad()
    def forward_teacher(self, batch):
        t = self.teacher[0]
        return t(*t.inputs(batch.visible, batch.thermal))


class PDFDistiller(Distiller):
    def __init__(self, teacher, tcfg, scfg, dcfg, student, probe_s, probe_t):
        super().__init__(teacher, tcfg, scfg, dcfg)
        ns = self._levels(probe_s, student.main_branch)
        nt = self._levels(probe_t, teacher.main_branch)
        if len(ns) != len(nt):
            raise ValueError(f"PDF-Distil: the student has {len(ns)} pyramid levels and the teacher {len(nt)}; "
                             "they must match (same in_levels/extra_levels)")
        for a, b in zip(ns, nt):
            if a.shape[-2:] != b.shape[-2:]:
                raise ValueError(f"PDF-Distil: pyramid sizes differ ({tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])})")
        if tcfg.class_names != scfg.class_names:
            raise ValueError("PDF-Distil compares class probabilities: teacher and student need the same class_names")
        self.adapters = nn.ModuleList([nn.Conv2d(a.shape[1], b.shape[1], 1) for a, b in zip(ns, nt)])
        self.num_anchors = teacher.anchor_levels()[0].num_anchors

    @staticmethod
    def _levels(out, branch):
        return [out.features[k] for k in sorted((k for k in out.features if k.startswith(f"neck.{branch}.")),
                                                key=lambda k: int(k.rsplit(".", 1)[1]))]

    def losses(self, student, s_out, t_out, batch, objective) -> dict:
        d = self.dcfg
        fs, ft = self._levels(s_out, s_out.main_branch), self._levels(t_out, t_out.main_branch)
        ps, pt = s_out.main.cls_logits, t_out.main.cls_logits
        K = self.scfg.num_classes
        total = 0.0
        for lv, (a, xs, xt) in enumerate(zip(self.adapters, fs, ft)):
            # class probabilities as each model's exported head computes them (SSD: softmax over K + 1,
            # background dropped; RetinaNet: sigmoid)
            dm = disagreement_map(level_class_probabilities(pt[lv], K, self.teacher[0].score_activation),
                                  level_class_probabilities(ps[lv], K, student.score_activation),
                                  self.num_anchors, d.pdf_metric)
            m = pdf_weights(dm, d.pdf_weights, d.pdf_top_fraction)
            total = total + pdf_distill_loss(a(xs), xt, m)
        return {"pdf_kd": d.pdf_weight * total}


class ModalityDistiller(Distiller):
    def __init__(self, teacher, tcfg, scfg, dcfg, student, probe_s, probe_t):
        super().__init__(teacher, tcfg, scfg, dcfg)
        if tcfg.fusion.module != "gaff" or tcfg.fusion.scheme != "halfway":
            raise ValueError(f"Modality Distillation needs a halfway GAFF teacher; {tcfg.name} has scheme "
                             f"{tcfg.fusion.scheme!r}, module {tcfg.fusion.module!r}")
        stage = dcfg.md_stage or tcfg.fusion.stage
        if stage == "all_levels":
            raise ValueError("distill.md_stage must name one stage when the teacher fuses all levels (e.g. C4)")
        self.t_key = f"fused.{stage}"
        self.s_key = next((k for k in (f"fused.{stage}", f"visible.{stage}") if k in probe_s.features), None)
        if self.s_key is None or self.t_key not in probe_t.features:
            raise ValueError(f"Modality Distillation: stage {stage!r} is not a feature of both models "
                             f"(student has {sorted(probe_s.features)[:6]}...)")
        fs, ft = probe_s.features[self.s_key], probe_t.features[self.t_key]
        if fs.shape[1:] != ft.shape[1:]:
            raise ValueError(f"MD: student feature {tuple(fs.shape[1:])} and teacher feature {tuple(ft.shape[1:])} "
                             "differ; use the same backbone and input size")
        self.att_prefix = "" if "intra_v" in probe_t.attention else f"{stage}."
        self.mask_conv = nn.Conv2d(fs.shape[1], 1, 1)
        self.residual = ResidualBlock(fs.shape[1]) if dcfg.md_semantic != "none" else None

    def losses(self, student, s_out, t_out, batch, objective) -> dict:
        d, parts = self.dcfg, {}
        fs, ft = s_out.features[self.s_key], t_out.features[self.t_key]
        if d.md_attention:
            a = {k: t_out.attention[self.att_prefix + k] for k in ("intra_v", "inter_v", "intra_t", "inter_t")}
            m_t = GAFF.combined_mask(a)
            m_s = torch.sigmoid(self.mask_conv(fs))
            parts["md_attention"] = d.md_attention_weight * dice_loss(m_s, m_t.detach(), eps=0.0 + 1e-6)
        if self.residual is not None:
            f = self.residual(fs)
            parts["md_semantic"] = d.md_semantic_weight * (f_mse(f, ft.detach()) if d.md_semantic == "f_mse"
                                                           else mse(f, ft.detach()))
        return parts


class CrossModalDistiller(Distiller):
    replaces_task_loss = True

    def __init__(self, teacher, tcfg, scfg, dcfg, student, probe_s, probe_t):
        super().__init__(teacher, tcfg, scfg, dcfg)
        if scfg.fusion.scheme != "visible_only":
            raise ValueError(f"cross-modal distillation trains an RGB-only student; {scfg.name} has scheme "
                             f"{scfg.fusion.scheme!r}")
        if scfg.head.type != tcfg.head.type or tcfg.class_names != scfg.class_names:
            raise ValueError("cross-modal distillation needs teacher and student with the same head type and classes")
        sa, ta = student.anchor_levels(), teacher.anchor_levels()
        if [(a.stride, a.sizes, a.aspect_ratios) for a in sa] != [(a.stride, a.sizes, a.aspect_ratios) for a in ta]:
            raise ValueError("cross-modal distillation compares per-anchor outputs: teacher and student need the "
                             "same anchor layout (strides, sizes, ratios)")
        stage = dcfg.cm_stage or scfg.neck.in_levels[-1]
        self.s_key = f"visible.{stage}"
        self.t_keys = [f"visible.{stage}", f"thermal.{stage}"]
        if self.s_key not in probe_s.features or any(k not in probe_t.features for k in self.t_keys):
            raise ValueError(f"distill.cm_stage {stage!r}: not a stage of both student and teacher")
        ct = sum(probe_t.features[k].shape[1] for k in self.t_keys)
        self.adapter = nn.Conv2d(probe_s.features[self.s_key].shape[1], ct, 1)

    def losses(self, student, s_out, t_out, batch, objective) -> dict:
        d = self.dcfg
        K = self.scfg.num_classes
        et = torch.cat([t_out.features[k] for k in self.t_keys], 1)
        parts = {"cm_feature": d.rho * feature_distill(self.adapter(s_out.features[self.s_key]), et)}
        sb, tb = s_out.main, t_out.main
        softmax = student.score_activation == "softmax"          # SSD heads: K + 1 logits, class 0 background
        kk = K + 1 if softmax else K
        cls_s, cls_t = flatten_levels(sb.cls_logits, kk), flatten_levels(tb.cls_logits, kk)
        box_s, box_t = flatten_levels(sb.box_deltas, 4), flatten_levels(tb.box_deltas, 4)
        anchors = objective.anchors(sb)
        coder = objective.coder
        total_cls, reg_terms, npos = cls_s.sum() * 0.0, [], 0
        for i, (gt, lab, *_) in enumerate(batch.targets):
            if softmax:
                cls_term, pos, reg_gt = softmax_classification_distill_image(
                    cls_s[i], cls_t[i], anchors, gt, lab, objective.assigner, d.zeta, d.temperature)
                total_cls = total_cls + cls_term
            else:
                labels, cls_gt, reg_gt = assign_image(anchors, gt, lab, box_s[i], cls_s[i], coder,
                                                      objective.assigner)
                valid = labels >= 0
                hard = torch.zeros_like(cls_s[i])
                pos = labels == 1
                if pos.any():
                    hard[pos, lab[cls_gt[pos]]] = 1.0
                total_cls = total_cls + sigmoid_classification_distill(cls_s[i][valid], cls_t[i][valid],
                                                                       hard[valid], d.zeta, d.temperature)
            npos += int(pos.sum())
            reg = reg_gt >= 0
            if reg.any():
                y = encode_boxes_torch(anchors[reg], gt[reg_gt[reg]], coder.weights).to(box_s)
                reg_terms.append((box_s[i][reg], box_t[i][reg], y))
        norm = max(1, objective.reduce_sum(npos)) / objective.world
        parts["cm_cls"] = total_cls / norm
        if reg_terms:
            ts, tt, y = (torch.cat(x) for x in zip(*reg_terms))
            parts["cm_reg"] = d.lam * conditional_regression_distill(ts, tt, y, d.epsilon, d.delta)
        seg_s, seg_t = s_out.aux.get("seg_logits"), t_out.aux.get("seg_logits")
        if seg_s is not None:
            if seg_t is None:
                raise ValueError("cross-modal distillation: the student has a seg_aux head but the teacher has none")
            if seg_t.shape[-2:] != seg_s.shape[-2:]:
                seg_t = F.interpolate(seg_t, size=seg_s.shape[-2:], mode="bilinear", align_corners=False)
            gt = seg_aux_target(batch.targets, seg_s, batch.visible.shape[-2:])
            parts["cm_seg"] = d.eta * segmentation_distill(seg_s, gt, seg_t, d.xi)
        return parts


KINDS = {"pdf": PDFDistiller, "modality": ModalityDistiller, "crossmodal": CrossModalDistiller}


def build_distiller(dcfg, teacher, tcfg, student, scfg, probe_batch) -> Distiller:
    with torch.no_grad():
        was = student.training
        student.eval()
        probe_s = student(*student.inputs(probe_batch.visible, probe_batch.thermal))
        student.train(was)
        probe_t = teacher.eval()(*teacher.inputs(probe_batch.visible, probe_batch.thermal))
    return KINDS[dcfg.method](teacher, tcfg, scfg, dcfg, student, probe_s, probe_t)
