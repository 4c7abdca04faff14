"""Replay a bag through the pipeline: pairing as on the robot, per-stage latency, inconsistency
distribution, capture, and (when annotations are available) KAIST-style accuracy."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms_perception.core.frames import FramePair
from ms_perception.core.pairing import ApproximateTimePairer
from ms_perception.core.pipeline import Pipeline, Result
from ms_perception.replay.bag import read_frames

STAGES = ("preprocess", "infer", "postprocess", "inconsistency", "capture")


@dataclass
class ReplaySummary:
    pairs: int = 0
    pairing: dict = field(default_factory=dict)
    detections: int = 0
    latency_ms: dict = field(default_factory=dict)       # stage -> {p50, p95}
    inconsistency: dict = field(default_factory=dict)    # min, p50, p95, max, mean
    captured: int = 0
    capture: dict = field(default_factory=dict)
    errors: int = 0
    visible_hw: tuple = ()
    wall_s: float = 0.0
    thermal_saturated_pairs: int = 0
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values, np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "mean": round(float(a.mean()), 3)}


def replay_bag(bag: str | Path, pipeline: Pipeline, visible_topic: str, thermal_topic: str | None,
               slop_s: float = 0.05, queue_size: int = 10,
               on_result: Callable[[FramePair, Result], None] | None = None) -> tuple[ReplaySummary, list]:
    pairer = ApproximateTimePairer(slop_s, queue_size)
    results, lat = [], {s: [] for s in (*STAGES, "total")}
    incs = []
    summ = ReplaySummary()
    t0 = time.perf_counter()
    needs_thermal = pipeline.card.uses_thermal and thermal_topic is not None
    for stream, frame in read_frames(bag, visible_topic, thermal_topic if needs_thermal else None):
        if needs_thermal:
            pair = pairer.add(stream, frame)
            if pair is None:
                continue
        else:
            pair = FramePair(frame, None)
        res = pipeline.process(pair)
        if not summ.pairs:
            summ.visible_hw = pair.visible.shape_hw
        summ.pairs += 1
        summ.detections += len(res.detections)
        for k, v in res.timings_ms.items():
            lat[k].append(v)
        lat["total"].append(sum(res.timings_ms.values()))
        if res.inconsistency is not None:
            incs.append(res.inconsistency.score)
        summ.captured += int(res.captured)
        results.append((pair.stamp_ns, res))
        if on_result is not None:
            on_result(pair, res)
    pairer.flush()
    summ.pairing = pairer.stats.to_dict()
    summ.latency_ms = {k: percentiles(v) for k, v in lat.items() if v}
    if incs:
        a = np.asarray(incs)
        summ.inconsistency = {"min": float(a.min()), "p50": float(np.median(a)), "p95": float(np.percentile(a, 95)),
                              "max": float(a.max()), "mean": float(a.mean()),
                              "histogram": np.histogram(a, bins=10, range=(0, max(1e-9, float(a.max()))))[0].tolist()}
    if pipeline.writer is not None:
        pipeline.writer.close()
        summ.capture = pipeline.writer.stats.to_dict()
    summ.thermal_saturated_pairs = pipeline.saturation.saturated_frames
    summ.warnings = list(pipeline.warnings)
    summ.wall_s = time.perf_counter() - t0
    return summ, results


def evaluate_persons(results: list, annotations: list[dict], person_label: int, image_hw: tuple[int, int]) -> dict:
    """KAIST log-average miss rate of the 'person' class against per-stamp annotations
    (``{"stamp_ns", "condition", "objects": [{"box": xyxy, "class_id", "occlusion"}]}``)."""
    from ms_perception.metrics.kaist import person_miss_rates
    by_stamp = {int(a["stamp_ns"]): a for a in annotations}
    images = []
    for stamp, res in results:
        ann = by_stamp.get(int(stamp))
        if ann is None:
            continue
        persons = [o for o in ann["objects"] if o["class_id"] == 1]
        d = res.detections
        sel = d.labels == person_label
        images.append(([o["box"] for o in persons], [o["occlusion"] for o in persons], ann["condition"],
                       d.boxes[sel], d.scores[sel]))
    return {k: round(100 * r.miss_rate, 2) for k, r in person_miss_rates(images, image_hw).items()}


def load_annotations(bag: str | Path) -> list[dict] | None:
    p = Path(bag) / "annotations.json"
    return json.loads(p.read_text()) if p.exists() else None
