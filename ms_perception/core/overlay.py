"""Overlay drawing shared by the demo and the ROS node: boxes with class and score, the
segmentation mask blended in, and the inconsistency score (RGB in, RGB out)."""
from __future__ import annotations

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """Distinct RGB colors per class id (0 = black)."""
    hsv = np.stack([np.linspace(0, 179, max(n, 1), endpoint=False, dtype=np.float32),
                    np.full(max(n, 1), 200, np.float32), np.full(max(n, 1), 255, np.float32)], 1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    rgb[0] = 0
    return rgb


def colored_mask(mask: np.ndarray, n_classes: int) -> np.ndarray:
    return palette(max(n_classes, int(mask.max()) + 1))[mask]


def overlay(rgb: np.ndarray, result, class_names: list[str], title: str = "") -> np.ndarray:
    img = rgb.copy()
    if result.mask is not None:
        color = colored_mask(result.mask, len(class_names))
        img = np.where(result.mask[..., None] > 0, (img * 0.5 + color * 0.5).astype(np.uint8), img)
    cols = palette(len(class_names) + 1)
    for b, s, c in zip(result.detections.boxes, result.detections.scores, result.detections.labels):
        x0, y0, x1, y1 = (int(round(float(v))) for v in b)
        col = tuple(int(v) for v in cols[int(c) + 1])
        cv2.rectangle(img, (x0, y0), (x1, y1), col, 2)
        cv2.putText(img, f"{class_names[int(c)]} {s:.2f}", (x0, max(12, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    col, 1)
    text = title
    if result.inconsistency is not None:
        text += f"  inconsistency {result.inconsistency.score:.3f}{'  CAPTURED' if result.captured else ''}"
    if text.strip():
        cv2.putText(img, text.strip(), (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
    return img
