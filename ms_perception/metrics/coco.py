"""COCO-style detection AP through pycocotools (no re-implementation).

``coco_eval(gt_json, dets)`` returns the 12 standard numbers as fractions in [0, 1]
(-1 where pycocotools reports a metric as undefined, e.g. no large objects).
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Sequence

from ms_perception.formats.errors import FormatError, read_json
from ms_perception.formats.validate import check_coco_gt, check_coco_results

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_eval(gt: str | os.PathLike | dict, dets: str | os.PathLike | Sequence[dict],
              iou_type: str = "bbox", quiet: bool = True) -> dict[str, float]:
    """Evaluate COCO results against a COCO ground-truth JSON with pycocotools.

    ``gt``: path or dict in COCO format; ``dets``: path or list of
    ``{image_id, category_id, bbox: [x, y, w, h], score}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = read_json(gt, "COCO ground truth") if not isinstance(gt, dict) else gt
    check_coco_gt(gt_data, str(gt) if not isinstance(gt, dict) else "<gt>")
    det_list = read_json(dets, "COCO detections") if isinstance(dets, (str, os.PathLike)) else list(dets)
    check_coco_results(det_list, str(dets) if isinstance(dets, (str, os.PathLike)) else "<detections>")
    img_ids = {im["id"] for im in gt_data["images"]}
    cat_ids = {c["id"] for c in gt_data["categories"]}
    for i, d in enumerate(det_list):
        if "category_id" not in d:
            raise FormatError(str(dets), None, f"[{i}]: needs 'category_id' (has {sorted(d)})")
        if d["image_id"] not in img_ids:
            raise FormatError(str(dets), None, f"detection {i}: image_id {d['image_id']} is not in the ground truth")
        if d["category_id"] not in cat_ids:
            raise FormatError(str(dets), None, f"detection {i}: category_id {d['category_id']} is not in the ground truth "
                                               f"(valid: {sorted(cat_ids)})")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        coco_gt = COCO()
        coco_gt.dataset = gt_data
        coco_gt.createIndex()
        if not det_list:
            return {k: 0.0 for k in COCO_STAT_NAMES}
        coco_dt = coco_gt.loadRes([dict(d) for d in det_list])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(COCO_STAT_NAMES, ev.stats)}
