"""KAIST log-average miss rate (numpy only).

Semantics follow the benchmark's reference Python evaluator (the MLPD project's
``evaluation_script.py``, itself a port of the Caltech/KAIST MATLAB devkit):

1. Ground truth is *ignored* when flagged (non-``person`` labels, explicit ignore), when its
   height is outside ``height_range``, its occlusion not in ``occlusions``, or the box is
   not inside ``boundary`` = (x0, y0, x1, y1) (``x < 5``, ``y < 5``, ``x+w > 635``,
   ``y+h > 507`` for 640x512 images).
2. Per image, detections are sorted by score (stable) and cut to ``max_detections``.
3. Each detection, best first, matches the unmatched regular GT with the highest IoU
   >= ``iou_threshold`` (ties go to the later GT, as in the reference). Failing that it
   is *ignored* when its intersection-over-detection-area with an ignored GT is
   >= the threshold; ignored GT can absorb any number of detections. Otherwise it is a
   false positive. Detections are not filtered by size (the MATLAB devkit does that,
   which is why the paper's 6.48 differs from the Python evaluator's 6.38 for GAFF).
4. All non-ignored detections are pooled, sorted by score (stable), and the miss-rate
   (1 - recall) is read at 9 FPPI points 10^[-2:0.25:0] (the last point whose FPPI <=
   the reference; miss rate 1 when none). The log-average miss rate is
   ``exp(mean(log(max(mr, 1e-10))))``.

Two references, one switch. The MATLAB devkit (the benchmark's official tool, used for
the papers' tables) counts every regular ground-truth object. The MLPD Python script
skips an image that has no detection at all, so that image's ground truth drops out of
the recall denominator. ``count_gt_without_detections=True`` (default) is the devkit's
behaviour and reproduces the GAFF paper's 6.48 / 8.35 / 3.46 (all / day / night) from the
authors' published detections exactly; ``False`` (``--mlpd-compat`` on the CLI)
reproduces the MLPD script's 6.38 (all) and 3.46 (night) exactly, and gives 8.22 for day
where the script's README reports 8.25 (the 0.03 gap is unexplained; see test_kaist_mr).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ms_perception.formats.kaist import ImageAnnotation

FPPI_POINTS = 10.0 ** np.arange(-2.0, 0.0001, 0.25)  # 9 points, Dollar et al. 2012


@dataclass
class KaistEvalConfig:
    """Evaluation settings; defaults are the benchmark's "reasonable" subset."""

    height_range: tuple[float, float] = (55.0, math.inf)  # MD/AL papers use 55; the thesis 50
    occlusions: tuple[int, ...] = (0, 1)  # none and partial
    boundary: tuple[float, float, float, float] = (5.0, 5.0, 635.0, 507.0)  # x0, y0, x1, y1
    iou_threshold: float = 0.5
    max_detections: int = 1000  # per image
    fppi_points: np.ndarray = field(default_factory=lambda: FPPI_POINTS.copy())
    count_gt_without_detections: bool = True  # False = MLPD Python script's quirk


@dataclass
class MissRateResult:
    """Log-average miss rate (fraction in [0, 1]) and the curve it came from."""

    miss_rate: float  # NaN when the subset holds no regular ground truth
    fppi: np.ndarray  # (K,) FPPI after each non-ignored detection, by score
    miss: np.ndarray  # (K,) miss rate at those points
    miss_at_points: np.ndarray  # (9,) miss rate at the reference FPPI points
    num_images: int
    num_gt: int  # regular GT counted in the recall denominator
    num_detections: int  # non-ignored detections

    @property
    def recall(self) -> float:
        return float(1.0 - self.miss[-1]) if len(self.miss) else 0.0


def _gt_ignore(gt: ImageAnnotation, cfg: KaistEvalConfig) -> np.ndarray:
    b = gt.boxes
    x0, y0, x1, y1 = cfg.boundary
    return (gt.ignore.astype(bool)
            | (gt.heights < cfg.height_range[0]) | (gt.heights > cfg.height_range[1])
            | ~np.isin(gt.occlusion, np.asarray(cfg.occlusions))
            | (b[:, 0] < x0) | (b[:, 1] < y0) | (b[:, 0] + b[:, 2] > x1) | (b[:, 1] + b[:, 3] > y1))


def overlap_matrix(dets: np.ndarray, gts: np.ndarray, gt_ignore: np.ndarray) -> np.ndarray:
    """(D, G) IoU between xywh boxes; for ignored GT, intersection over detection area."""
    if len(dets) == 0 or len(gts) == 0:
        return np.zeros((len(dets), len(gts)))
    dx1, dy1 = dets[:, 0:1], dets[:, 1:2]
    dx2, dy2 = dx1 + dets[:, 2:3], dy1 + dets[:, 3:4]
    gx1, gy1 = gts[None, :, 0], gts[None, :, 1]
    gx2, gy2 = gx1 + gts[None, :, 2], gy1 + gts[None, :, 3]
    iw = np.minimum(dx2, gx2) - np.maximum(dx1, gx1)
    ih = np.minimum(dy2, gy2) - np.maximum(dy1, gy1)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    darea = dets[:, 2:3] * dets[:, 3:4]
    garea = (gts[:, 2] * gts[:, 3])[None, :]
    union = np.where(gt_ignore[None, :], darea, darea + garea - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(inter > 0, inter / union, 0.0)
    return out


def match_image(dets: np.ndarray, gt: ImageAnnotation, cfg: KaistEvalConfig):
    """Match one image. Returns (scores, is_tp, det_ignored, n_regular_gt), dets by score."""
    gt_ig = _gt_ignore(gt, cfg)
    # sort GT: regular first, ignored last (stable), as the reference does
    gorder = np.argsort(gt_ig, kind="mergesort")
    gboxes, gt_ig = gt.boxes[gorder], gt_ig[gorder]
    n_reg = int((~gt_ig).sum())
    if len(dets) == 0:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), n_reg
    dorder = np.argsort(-dets[:, 4], kind="mergesort")[: cfg.max_detections]
    d = dets[dorder]
    ov = overlap_matrix(d[:, :4], gboxes, gt_ig)
    thr = min(cfg.iou_threshold, 1 - 1e-10)
    is_tp = np.zeros(len(d), bool)
    det_ig = np.zeros(len(d), bool)
    gt_taken = np.zeros(n_reg, bool)
    reg, ign = ov[:, :n_reg], ov[:, n_reg:]
    ign_hit = (ign >= thr).any(axis=1) if ign.shape[1] else np.zeros(len(d), bool)
    for i in range(len(d)):
        if n_reg:
            cand = np.where(gt_taken, -1.0, reg[i])
            best = cand.max()
            if best >= thr:
                # ties go to the last GT reaching the best value (reference uses '<' to skip)
                j = n_reg - 1 - int(np.argmax(cand[::-1] == best))
                gt_taken[j] = True
                is_tp[i] = True
                continue
        det_ig[i] = ign_hit[i]
    return d[:, 4], is_tp, det_ig, n_reg


def log_average_miss_rate(gts: Sequence[ImageAnnotation], dets: Mapping[int, np.ndarray],
                          cfg: KaistEvalConfig | None = None) -> MissRateResult:
    """Log-average miss rate of ``dets`` ({image_id: (N, 5) x, y, w, h, score}) on ``gts``."""
    cfg = cfg or KaistEvalConfig()
    scores, tps, n_gt = [], [], 0
    empty = np.zeros((0, 5))
    for gt in gts:
        d = np.asarray(dets.get(gt.image_id, empty), dtype=np.float64).reshape(-1, 5)
        s, tp, ig, n_reg = match_image(d, gt, cfg)
        if len(d) == 0 and not cfg.count_gt_without_detections:
            continue
        n_gt += n_reg
        keep = ~ig
        scores.append(s[keep])
        tps.append(tp[keep])
    n_img = len(gts)
    s = np.concatenate(scores) if scores else np.zeros(0)
    tp = np.concatenate(tps) if tps else np.zeros(0, bool)
    order = np.argsort(-s, kind="mergesort")
    tp = tp[order]
    tp_cum = np.cumsum(tp).astype(np.float64)
    fp_cum = np.cumsum(~tp).astype(np.float64)
    fppi = fp_cum / max(n_img, 1)
    if n_gt == 0:
        return MissRateResult(float("nan"), fppi, np.ones_like(fppi), np.full(len(cfg.fppi_points), np.nan),
                              n_img, 0, len(tp))
    miss = 1.0 - tp_cum / n_gt
    idx = np.searchsorted(fppi, cfg.fppi_points, side="right") - 1
    at = np.where(idx >= 0, miss[np.clip(idx, 0, None)] if len(miss) else 1.0, 1.0)
    mr = float(np.exp(np.mean(np.log(np.maximum(at, 1e-10)))))
    return MissRateResult(mr, fppi, miss, at, n_img, n_gt, len(tp))


def evaluate_kaist(gts: Sequence[ImageAnnotation], dets: Mapping[int, np.ndarray],
                   cfg: KaistEvalConfig | None = None) -> dict[str, MissRateResult]:
    """Miss rate on all images and on the day / night subsets (present ones only).

    Each subset's FPPI is normalized by that subset's image count, as the benchmark does.
    """
    out = {"all": log_average_miss_rate(gts, dets, cfg)}
    for cond in ("day", "night"):
        sub = [g for g in gts if g.condition == cond]
        if sub:
            out[cond] = log_average_miss_rate(sub, dets, cfg)
    return out


def _plain_images(images, image_hw: tuple[int, int], height_floor: float):
    """Plain per-image arrays (see :func:`person_miss_rates`) -> (ImageAnnotations, detections, config)."""
    h, w = image_hw
    gts, dets = [], {}
    for i, (gt, occ, cond, db, ds, *rest) in enumerate(images):
        b = np.asarray(gt, np.float64).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
        ign = np.asarray(rest[0], bool).reshape(-1) if rest else np.zeros(len(b), bool)
        gts.append(ImageAnnotation(i, str(i), xywh, xywh[:, 3].copy(), np.asarray(occ, np.int64).reshape(-1),
                                   ign, "day" if cond in ("day", "fog") else "night", w, h))
        d = np.asarray(db, np.float64).reshape(-1, 4)
        dets[i] = np.concatenate([d[:, :2], d[:, 2:] - d[:, :2], np.asarray(ds, np.float64).reshape(-1, 1)], 1)
    cfg = KaistEvalConfig(height_range=(height_floor, math.inf), boundary=(5.0, 5.0, w - 5.0, h - 5.0))
    return gts, dets, cfg


def person_miss_rates(images, image_hw: tuple[int, int], height_floor: float = 55.0) -> dict[str, MissRateResult]:
    """Miss rate (all/day/night) of one class from plain arrays, boxes in image pixels.

    ``images``: iterable of ``(gt_xyxy (G, 4), gt_occlusion (G,), condition, det_xyxy (D, 4),
    det_scores (D,)[, gt_ignore (G,)])``; a "fog" condition counts as day; ignore regions
    (KAIST people/cyclist/person?) neither count as misses nor make their detections false alarms. ``height_floor``: the reasonable-subset
    height (55 px at 512 rows in the MD/AL papers); boundary 5 px inside the image.
    """
    gts, dets, cfg = _plain_images(images, image_hw, height_floor)
    return evaluate_kaist(gts, dets, cfg)


def frame_errors(images, image_hw: tuple[int, int], height_floor: float = 55.0) -> np.ndarray:
    """(N, 2) misses and false alarms of each image at the detections' operating point (all
    detections given count), matched as the miss rate matches them: a miss is a regular
    (reasonable-subset) object no detection matched at IoU 0.5; a false alarm is a detection that
    matched none and does not lie on an ignored object. ``images`` as in :func:`person_miss_rates`."""
    gts, dets, cfg = _plain_images(images, image_hw, height_floor)
    cfg.max_detections = 10 ** 9
    out = np.zeros((len(gts), 2), np.int64)
    for i, gt in enumerate(gts):
        _, tp, ig, n_reg = match_image(dets[gt.image_id], gt, cfg)
        out[i] = n_reg - int(tp.sum()), int((~tp & ~ig).sum())
    return out


def top_fraction_lift(scores, flags, fraction: float = 0.1) -> dict:
    """How much more often the ``fraction`` highest-scoring items are flagged than items drawn at
    random: rate among the top ceil(fraction * N) (ties broken by order) / rate among all N, which
    is the expected rate of a random draw. ``ratio`` is None when no item is flagged."""
    s = np.asarray(scores, np.float64).reshape(-1)
    f = np.asarray(flags, bool).reshape(-1)
    if len(s) != len(f) or len(s) == 0 or not 0 < fraction <= 1:
        raise ValueError(f"need as many scores as flags (got {len(s)} and {len(f)}), at least one, "
                         f"and 0 < fraction <= 1 (got {fraction})")
    k = int(math.ceil(fraction * len(s) - 1e-9))
    top = np.argsort(-s, kind="stable")[:k]
    top_rate, base_rate = float(f[top].mean()), float(f.mean())
    return {"fraction": fraction, "n": int(len(s)), "n_top": k, "top_rate": round(top_rate, 4),
            "random_rate": round(base_rate, 4), "ratio": round(top_rate / base_rate, 4) if base_rate > 0 else None}
