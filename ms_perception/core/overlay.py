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


def draw_boxes(img: np.ndarray, detections, class_names: list[str], thickness: int = 2,
               color: tuple[int, int, int] | None = None, label: bool = True) -> np.ndarray:
    """Draw ``detections`` (boxes in ``img``'s pixels) on ``img`` in place; class colors unless ``color``."""
    cols = palette(len(class_names) + 1)
    for b, s, c in zip(detections.boxes, detections.scores, detections.labels):
        x0, y0, x1, y1 = (int(round(float(v))) for v in b)
        col = color or tuple(int(v) for v in cols[int(c) + 1])
        cv2.rectangle(img, (x0, y0), (x1, y1), col, thickness)
        if label:
            cv2.putText(img, f"{class_names[int(c)]} {s:.2f}", (x0, max(12, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, col, 1)
    return img


def side_by_side(rgb: np.ndarray, thermal_rgb: np.ndarray, result, class_names: list[str],
                 title: str = "") -> np.ndarray:
    """Why a pair was scored as it was: the visible image with the visible branch's detections
    beside the registered thermal image with the thermal branch's, the fused detections as thin
    white boxes on both, and the pair's inconsistency above (RGB, height + 28 rows x 2 widths)."""
    panels = []
    for name, img in (("visible", rgb), ("thermal", thermal_rgb)):
        img = np.ascontiguousarray(img).copy()
        draw_boxes(img, result.detections, class_names, thickness=1, color=(255, 255, 255), label=False)
        branch = result.branch_detections.get(name)
        if branch is not None:
            draw_boxes(img, branch, class_names)
        n = "-" if branch is None else len(branch)
        cv2.putText(img, f"{name} branch: {n} detections", (8, img.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1)
        panels.append(img)
    body = np.concatenate(panels, 1)
    head = np.zeros((28, body.shape[1], 3), np.uint8)
    text = f"{title}  fused: {len(result.detections)} detections (white)".strip()
    if result.inconsistency is not None:
        text += f"  inconsistency {result.inconsistency.score:.3f}{'  CAPTURED' if result.captured else ''}"
    cv2.putText(head, text, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
    return np.concatenate([head, body], 0)


def thermal_view(thermal_u8: np.ndarray) -> np.ndarray:
    """An 8-bit thermal image (already registered to the visible image) as RGB (inferno colormap)."""
    return cv2.cvtColor(cv2.applyColorMap(thermal_u8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, result, class_names: list[str], title: str = "") -> np.ndarray:
    img = rgb.copy()
    if result.mask is not None:
        color = colored_mask(result.mask, len(class_names))
        img = np.where(result.mask[..., None] > 0, (img * 0.5 + color * 0.5).astype(np.uint8), img)
    draw_boxes(img, result.detections, class_names)
    text = title
    if result.inconsistency is not None:
        text += f"  inconsistency {result.inconsistency.score:.3f}{'  CAPTURED' if result.captured else ''}"
    if text.strip():
        cv2.putText(img, text.strip(), (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
    return img
