"""YOLOv8 peers for ``ms-perception bench --peer`` (outside CI): the detector a user would pick
instead, built from ultralytics' own model yaml (random weights: engine time does not depend on
them) and exported to ONNX at the bench's 640x512, opset 17, static shapes, no simplification.

    pip install --no-deps --target /tmp/yolo_site ultralytics==8.4.190 torchvision==0.28.0
    PYTHONPATH=/tmp/yolo_site python bench/yolo_peer.py --out /tmp/yolo yolov8n yolov8s
    ms-perception bench --peer /tmp/yolo/yolov8s.onnx --peer /tmp/yolo/yolov8n.onnx

Installed with ``--no-deps`` beside the project's torch (a full install would pull a CUDA torch).
PyPI's torchvision wheel is built against CUDA, so its compiled operators do not load against a
CPU-only torch; torchvision's Python part then fails on import when it registers fake kernels for
``torchvision::nms`` / ``qnms``. Declaring those two schemas first lets it import. YOLOv8's forward
pass (Conv, C2f, SPPF, Detect) uses no torchvision operator, and the exported graph ends before
NMS (output (1, 84, 6720)), so the timed model is ultralytics' own, unchanged. Checked: the
parameter counts equal ultralytics' published summaries (YOLOv8n 3,157,200; YOLOv8s 11,166,560).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="ultralytics model yaml names, e.g. yolov8n yolov8s")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="640x512", help="WxH (default 640x512)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    import torch
    lib = torch.library.Library("torchvision", "DEF")   # see the module docstring
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        from ultralytics import YOLO
    except ImportError:
        print("ultralytics is not importable; install it as the module docstring says", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        model = YOLO(f"{name}.yaml")
        params = sum(p.numel() for p in model.model.parameters())
        path = Path(model.export(format="onnx", imgsz=(h, w), opset=17, simplify=False, dynamic=False))
        dest = out / f"{name}.onnx"
        if path.resolve() != dest.resolve():
            shutil.move(str(path), dest)
        print(f"{name}: {params:,} parameters -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
