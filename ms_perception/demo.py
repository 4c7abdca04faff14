"""End-to-end demo: synthetic rig -> rosbag2 (.mcap) -> replay through the pipeline with the
embedded default model -> summary, overlays, capture folder, KAIST-style accuracy.

Torch-free: it needs only the runtime (numpy, OpenCV, ONNX Runtime, rosbags).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from ms_perception.core import jsonio
from ms_perception.build import build_pipeline, default_model
from ms_perception.core.frames import Frame
from ms_perception.core.overlay import overlay, side_by_side, thermal_view
from ms_perception.replay.bag import write_annotations, write_bag
from ms_perception.replay.run import evaluate_persons, frame_score_lifts, replay_bag
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

DEFAULT_MODEL = default_model()
VISIBLE_TOPIC, THERMAL_TOPIC = "/camera/visible/image_raw", "/camera/thermal/image_raw"


def make_demo_bag(out: Path, pairs: int, seed: int, sequence_length: int = 20,
                  cfg: SynthConfig | None = None) -> tuple[Path, Path, SynthConfig]:
    """Synthetic sequences -> bag (visible rgb8 640x512, thermal mono16 320x256) + annotations + calibration.
    ``cfg``: another rig or mix of conditions (default: the demo's)."""
    cfg = cfg or SynthConfig(width=640, height=512, night_fraction=0.4, dusk_fraction=0.1, fog_fraction=0.1,
                             thermal_factor=4, sequence_length=sequence_length, misregistration_px=0.0)
    gen = SyntheticGenerator(cfg, seed)
    records, annotations, homography = [], [], None
    for sp in gen.pairs(pairs):
        homography = sp.homography if homography is None else homography
        # ros2 bag record stores receive time: stamps plus a few ms of transport delay
        records.append((VISIBLE_TOPIC, Frame(sp.visible, sp.stamp_visible_ns, "rgb8", "visible_optical"),
                        sp.stamp_visible_ns + 3_000_000))
        records.append((THERMAL_TOPIC, Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16", "thermal_optical"),
                        sp.stamp_thermal_ns + 5_000_000))
        annotations.append({"stamp_ns": sp.stamp_visible_ns, "condition": sp.condition,
                            "objects": [{"box": [float(v) for v in o.box], "class_id": int(o.class_id),
                                         "occlusion": int(o.occlusion), "crossover": bool(o.crossover)}
                                        for o in sp.objects],
                            # unlabeled look-alikes in one modality (hot blobs, posters) and the scene, for analyses
                            "distractors": [{"kind": d["kind"], "box": [float(v) for v in d["box"]]} for d in sp.distractors],
                            "sequence": int(sp.sequence_id)})
    records.sort(key=lambda r: r[2])
    bag = write_bag(out / "bag", records, storage="mcap")
    write_annotations(bag / "annotations.json", annotations)
    cal = out / "thermal_calibration.yaml"
    cal.write_text("# thermal pixel -> visible pixel homography (from the synthetic rig)\nthermal_to_visible:\n"
                   f"  homography: {np.round(homography, 9).tolist()}\n")
    return bag, cal, cfg


def draw(rgb: np.ndarray, res, class_names, title: str, thermal_u8: np.ndarray | None = None) -> np.ndarray:
    """BGR overlay for cv2.imwrite: visible and registered thermal side by side, each with its
    branch's detections, when the model has both branches; else the visible image alone."""
    if thermal_u8 is not None and res.branch_detections:
        img = side_by_side(rgb, thermal_view(thermal_u8), res, class_names, title)
    else:
        img = overlay(rgb, res, class_names, title)
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def run_demo(out: Path, pairs: int = 200, seed: int = 0, model: Path | None = None, backend: str = "onnxruntime",
             score_threshold: float = 0.3) -> int:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = Path(model) if model else DEFAULT_MODEL
    t0 = time.perf_counter()
    print(f"[1/3] synthetic rig -> rosbag2 (mcap): {pairs} pairs, visible rgb8 640x512, thermal mono16 320x256")
    bag, cal, _ = make_demo_bag(out, pairs, seed)
    print(f"      {bag} ({sum(f.stat().st_size for f in bag.iterdir()) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")

    print(f"[2/3] replaying through the pipeline: {model.name} on {backend}")
    # the node's parameters (one configuration for node, replay and demo), with the demo's own choices
    pipe = build_pipeline({"model_path": str(model), "backend": backend, "score_threshold": float(score_threshold),
                           "calibration_file": str(cal), "capture_enabled": True, "capture_dir": str(out / "capture"),
                           "robot_id": "demo_robot", "capture_quota_mb": 200.0, "capture_mode": "top_fraction",
                           "capture_top_fraction": 0.05, "capture_window": 100, "capture_min_interval_s": 1.0})
    card, writer = pipe.engine.card, pipe.writer
    pipe.cfg.branch_detections = True    # the overlays show each branch's own detections
    if card.notes:
        print(f"      model card: {card.notes}")
    overlays = out / "overlays"
    overlays.mkdir()
    count = {"n": 0}

    def on_result(pair, res):
        if count["n"] % 20 == 0 or res.captured:
            from ms_perception.core.preprocess import visible_to_rgb
            img = draw(visible_to_rgb(pair.visible), res, card.class_names, f"pair {count['n']}",
                       pipe.registered_thermal(pair))
            cv2.imwrite(str(overlays / f"pair_{count['n']:04d}.jpg"), img)
        count["n"] += 1

    summary, results = replay_bag(bag, pipe, VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.02, queue_size=10,
                                  on_result=on_result, keep=True)
    print(f"      pairs {summary.pairs}, unpaired {summary.pairing['unpaired']} "
          f"(dropped visible {summary.pairing['dropped']['visible']}, thermal {summary.pairing['dropped']['thermal']}), "
          f"detections {summary.detections}")
    lat = summary.latency_ms
    print("      latency ms p50/p95: " + ", ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in lat.items()))
    if summary.inconsistency:
        i = summary.inconsistency
        print(f"      inconsistency: min {i['min']:.4f}, median {i['p50']:.4f}, p95 {i['p95']:.4f}, max {i['max']:.4f}")
    print(f"      {writer.summary_line()}")
    for w in summary.warnings:
        print(f"      warning: {w}")

    print("[3/3] accuracy: KAIST log-average miss rate of 'person' (height >= 55 px, occlusion none/partial)")
    from ms_perception.replay.run import load_annotations
    anns, person = load_annotations(bag), card.class_names.index("person")
    mr = evaluate_persons(results, anns, person, (512, 640))
    for k, v in mr.items():
        print(f"      {k:>5}: {v:6.2f}%")
    lifts = frame_score_lifts(results, anns, person, (512, 640))
    for name, lift in lifts.items():   # the capture policy's possible scores (capture_score)
        print(f"      the top {lift['fraction']:.0%} of pairs by {name} hold a person miss or false alarm "
              f"{lift['top_rate']:.0%} of the time, all pairs {lift['random_rate']:.0%}: "
              + ("ratio n/a (no errors)" if lift["ratio"] is None else f"{lift['ratio']:.2f}x a random pick"))
    report = {"miss_rate": mr, "inconsistency_lift": lifts.get("inconsistency"), "frame_score_lifts": lifts,
              **summary.to_dict(), "model": card.name,
              "model_notes": card.notes,
              "total_s": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(jsonio.dumps(report, indent=2) + "\n")
    print(f"wrote {out}/summary.json, {overlays}/*.jpg, {out}/capture/")
    print(jsonio.dumps({"pairs": summary.pairs, "unpaired": summary.pairing["unpaired"],
                      "detections": summary.detections, "captured": summary.capture.get("written", 0),
                      "latency_total_p50_ms": lat["total"]["p50"], "miss_rate": mr}))
    return 0
