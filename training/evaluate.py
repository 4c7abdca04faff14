"""Evaluation of a torch model on a pool with the project's metrics (issue [data]).

Detection: the runtime's own NMS (``ms_perception.core.postprocess.select_detections``) on
the decoded main-branch (or a named branch's) output; the KAIST log-average miss rate of
persons (all/day/night) in rig pixels, its height floor scaled with the rig height (55 px at
512 rows, the MD/AL papers' setting), and COCO mAP / AP50 over all classes with pycocotools.
Segmentation: mean class accuracy and mIoU (class 0 excluded, padding ignored).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from ms_perception_training.export.onnx_export import decode_boxes_torch
from ms_perception_training.models.multispectral import flatten_levels
from ms_perception_training.data.sources import SEG_IGNORE
from ms_perception_training.data.loader import make_batch

from ms_perception.core.anchors import BoxCoder, grid_anchors
from ms_perception.core.postprocess import select_detections


@torch.no_grad()
def predict(model, mcfg, pool, indices, branch: str | None = None, score_threshold: float = 0.05,
            device="cpu") -> list:
    """Per pool item: detections (boxes xyxy at the model input, scores, labels) or a label map."""
    was_training = model.training
    model.eval()
    b = make_batch(pool, indices, mcfg, augment=False, device=device)
    out = model(*model.inputs(b.visible, b.thermal))
    br = out.branches[branch or out.main_branch]
    res = []
    if mcfg.task == "segmentation":
        pred = br.mask_logits.argmax(1).cpu().numpy().astype(np.uint8)
        res = list(pred)
    else:
        K = mcfg.num_classes
        sizes = [tuple(x.shape[-2:]) for x in br.cls_logits]
        anchors = torch.from_numpy(grid_anchors(model.anchor_levels(), sizes)).to(b.visible.device)
        coder = BoxCoder(tuple(mcfg.head.box_coder_weights))
        if model.score_activation == "sigmoid":
            probs = torch.sigmoid(flatten_levels(br.cls_logits, K))
        else:
            probs = torch.softmax(flatten_levels(br.cls_logits, K + 1), -1)[..., 1:]
        deltas = flatten_levels(br.box_deltas, 4)
        for i in range(len(indices)):
            boxes = decode_boxes_torch(anchors, deltas[i], coder.weights, coder.clip)
            d = select_detections(probs[i].float().cpu().numpy(), boxes.float().cpu().numpy(),
                                  score_threshold=score_threshold, max_detections=100)
            res.append(d)
    model.train(was_training)
    return res


def predict_pool(model, mcfg, pool, branch: str | None = None, batch_size: int = 8, device="cpu") -> list:
    idx = list(range(len(pool)))
    preds = []
    for s in range(0, len(idx), batch_size):
        preds.extend(predict(model, mcfg, pool, idx[s:s + batch_size], branch, device=device))
    return preds


def evaluate(model, mcfg, pool, branch: str | None = None, batch_size: int = 8, device="cpu",
             items: list | None = None) -> dict:
    """The source's metric on its items: KAIST reasonable miss rate (all/day/night) and COCO AP
    for detection, mIoU for segmentation. ``items``: the pool's items already read (a disk
    source is read once)."""
    preds = predict_pool(model, mcfg, pool, branch, batch_size, device)
    items = items if items is not None else _items(pool)
    if mcfg.task == "segmentation":
        return segmentation_scores(items, preds, mcfg.num_classes)
    return detection_scores(items, preds, mcfg.class_names)


def _items(pool) -> list:
    return pool if isinstance(pool, list) else [pool[i] for i in range(len(pool))]


def segmentation_scores(pool, preds, num_classes: int) -> dict:
    from ms_perception.metrics.segmentation import evaluate_segmentation
    pairs = []
    for it, p in zip(pool, preds):
        keep = it.semantic != SEG_IGNORE
        pairs.append((it.semantic[keep], p[keep]))
    r = evaluate_segmentation(pairs, num_classes, ignore_index=0)
    return {"mean_accuracy": _pct(r.mean_accuracy), "miou": _pct(r.miou)}


def _pct(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(100 * float(x), 2)


def person_curves(pool, preds, class_names: list[str]) -> dict:
    """KAIST reasonable person miss rate of every subset (all/day/night) with its MR-FPPI curve
    (``MissRateResult``), at the rig's resolution (height floor 55 px at 512 rows)."""
    from ms_perception.metrics.kaist import person_miss_rates
    rig_h, rig_w = pool[0].letterbox.src_hw
    return person_miss_rates(person_images(pool, preds, class_names), (rig_h, rig_w),
                             height_floor=55.0 * rig_h / 512)


def person_images(pool, preds, class_names: list[str]) -> list[tuple]:
    """Each image's persons and person detections in rig pixels, as ``person_miss_rates`` reads them."""
    pid = class_names.index("person")
    images = []
    for it, d in zip(pool, preds):
        sel = it.labels == pid
        ds = d.labels == pid if len(d) else np.zeros(0, bool)
        rb = it.letterbox.boxes_to_image(d.boxes[ds]) if len(d) else np.zeros((0, 4), np.float32)
        images.append((it.rig_boxes[sel], it.occlusion[sel], it.condition, rb,
                       d.scores[ds] if len(d) else np.zeros(0), it.ignore[sel]))
    return images


def detection_scores(pool, preds, class_names: list[str]) -> dict:
    from ms_perception.metrics.coco import coco_eval
    out = {}
    rig_h, rig_w = pool[0].letterbox.src_hw
    if "person" in class_names:
        out["miss_rate"] = {k: _pct(r.miss_rate) for k, r in person_curves(pool, preds, class_names).items()}
    images, anns, results = [], [], []
    for i, (it, d) in enumerate(zip(pool, preds)):
        images.append({"id": i, "width": rig_w, "height": rig_h})
        for k, (b, lab) in enumerate(zip(it.rig_boxes, it.labels)):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab) + 1, "area": w * h,
                         "bbox": [float(b[0]), float(b[1]), w, h], "iscrowd": int(it.ignore[k])})
        if len(d):
            rb = it.letterbox.boxes_to_image(d.boxes)
            for b, s, lab in zip(rb, d.scores, d.labels):
                results.append({"image_id": i, "category_id": int(lab) + 1, "score": float(s),
                                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    present = sorted({a["category_id"] for a in anns})
    if anns and results:
        gt = {"images": images, "annotations": anns,
              "categories": [{"id": c, "name": class_names[c - 1]} for c in present]}
        results = [r for r in results if r["category_id"] in present]
        m = coco_eval(gt, results) if results else {}
        out["map"] = _pct(m.get("AP", m.get("mAP", 0.0))) if m else 0.0
        out["ap50"] = _pct(m.get("AP50", 0.0)) if m else 0.0
    else:
        out["map"], out["ap50"] = 0.0, 0.0
    return out


def write_benchmark_files(items, preds, class_names, out_dir) -> dict:
    """The detections in the benchmarks' own formats, in the original image pixels, so external
    evaluators score them too: ``detections_kaist.txt`` (persons, ``index,x,y,w,h,score``, index
    1-based in the split list's order: the KAIST / MLPD evaluation format), and
    ``detections_coco.json`` (COCO results) with ``ground_truth_coco.json`` (the same images'
    annotations as COCO instances; image ids are positions in the split, category ids the model's
    class index + 1). Returns the paths written (each written atomically)."""
    import os
    from pathlib import Path

    from ms_perception.core import jsonio
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}

    def put(name: str, text: str):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
        written[name] = str(out / name)
    images, anns, results, kaist_rows = [], [], [], []
    pid = class_names.index("person") if "person" in class_names else None
    for i, (it, d) in enumerate(zip(items, preds)):
        h, w = it.letterbox.src_hw
        images.append({"id": i, "file_name": it.name or str(i), "width": int(w), "height": int(h)})
        for k, (b, lab) in enumerate(zip(it.rig_boxes, it.labels)):
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab) + 1, "area": bw * bh,
                         "bbox": [float(b[0]), float(b[1]), bw, bh], "iscrowd": int(it.ignore[k])})
        if not len(d):
            continue
        for b, sc, lab in zip(it.letterbox.boxes_to_image(d.boxes), d.scores, d.labels):
            x, y, bw, bh = float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])
            results.append({"image_id": i, "category_id": int(lab) + 1, "score": float(sc), "bbox": [x, y, bw, bh]})
            if pid is not None and int(lab) == pid:
                kaist_rows.append(f"{i + 1},{x:.4f},{y:.4f},{bw:.4f},{bh:.4f},{float(sc):.6f}\n")
    if pid is not None:
        put("detections_kaist.txt", "".join(kaist_rows))
    put("detections_coco.json", jsonio.dumps(results))
    put("ground_truth_coco.json", jsonio.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}))
    return written
