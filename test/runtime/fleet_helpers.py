"""Real capture folders for the fleet tests: the embedded default model, run by the runtime pipeline
on synthetic pairs, capturing every pair (threshold 0), through the robot's own CaptureWriter."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ms_perception.build import build_pipeline
from ms_perception.core.capture import CaptureRecord, CaptureWriter
from ms_perception.core.frames import Frame, FramePair
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator


def capture_robot(root: Path, robot_id: str, seed: int, pairs: int = 6, night: float = 0.3,
                  start_ns: int | None = None, model_path: str = "") -> tuple[Path, list]:
    """Capture ``pairs`` synthetic pairs as robot ``robot_id`` into ``root/<robot_id>``; returns the
    robot folder and the generator's pairs (their objects stand in for the annotator)."""
    cfg = SynthConfig(width=320, height=256, night_fraction=night, thermal_factor=4, sequence_length=1, dusk_fraction=0.0, fog_fraction=0.1,
                      misregistration_px=0.0)
    gen = SyntheticGenerator(cfg, seed)
    sps = list(gen.pairs(pairs))
    cal = root / f"cal_{robot_id}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    cal.write_text(f"thermal_to_visible:\n  homography: {np.round(sps[0].homography, 9).tolist()}\n")
    pipe = build_pipeline({"calibration_file": str(cal), "capture_enabled": True, "capture_dir": str(root),
                           "robot_id": robot_id, "capture_mode": "threshold", "capture_threshold": 0.0,
                           "capture_min_interval_s": 0.0, "capture_duplicate_threshold": 0.0,
                           "capture_queue_size": 64, "model_path": str(model_path)})
    offset = 0 if start_ns is None else start_ns - sps[0].stamp_visible_ns
    for sp in sps:
        pipe.process(FramePair(Frame(sp.visible, sp.stamp_visible_ns + offset, "rgb8", "visible_optical"),
                               Frame(sp.thermal_raw, sp.stamp_thermal_ns + offset, "mono16", "thermal_optical")))
    pipe.writer.close()
    assert pipe.writer.stats.written == pairs, pipe.writer.summary_line()
    return root / robot_id, sps


def capture_segmentation_robot(root: Path, robot_id: str, masks: list, class_names: list[str]) -> Path:
    """A segmentation robot's captures through the robot's own CaptureWriter: one record per mask
    (what a segmentation model would have written), noise images (no two frames near-duplicates),
    a 16-bit thermal image at half the size. Returns the robot folder."""
    rng = np.random.default_rng(0)
    h, w = masks[0].shape
    writer = CaptureWriter(root, robot_id=robot_id, model_hash="ab" * 8, queue_size=len(masks) + 1)
    for i, mask in enumerate(masks):
        writer.submit(CaptureRecord(
            stamp_ns=1_700_000_000_000_000_000 + i * 10**9, score=0.1 * (i + 1),
            visible=rng.integers(0, 255, (h, w, 3), np.uint8), thermal=rng.integers(28000, 32000, (h // 2, w // 2),
                                                                                    np.uint16),
            thermal_encoding="mono16", predictions={"fused": {}},
            extra={"task": "segmentation", "class_names": list(class_names), "model": "seg",
                   "homography_thermal_to_visible": [[2, 0, 0], [0, 2, 0], [0, 0, 1]]}, mask=mask))
    writer.close()
    assert writer.stats.written == len(masks), writer.summary_line()
    return root / robot_id


def accept_pre_annotations(robot: Path, work: Path, budget: int) -> Path:
    """The loop with an annotator who accepts the model's pre-annotations: captures merge -> select
    ``budget`` -> export COCO with pre-annotations -> import that file. Returns the dataset folder."""
    from ms_perception.cli import main
    assert main(["captures", "merge", str(robot), "--out", str(work / "pool")]) == 0
    assert main(["captures", "select", str(work / "pool"), "--budget", str(budget), "--out",
                 str(work / "sel.json")]) == 0
    exp = work / "exp"
    assert main(["captures", "export", str(work / "sel.json"), "--format", "coco", "--out", str(exp),
                 "--pre-annotate"]) == 0
    ds = work / "ds"
    assert main(["captures", "import", str(exp / "annotations" / "instances_default.json"), "--format", "coco",
                 "--into", str(ds)]) == 0
    return ds
