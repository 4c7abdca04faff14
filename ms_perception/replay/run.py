"""Replay a bag through the pipeline: pairing as on the robot, per-stage latency, inconsistency
distribution, capture, and (when annotations are available) KAIST-style accuracy.

Memory stays bounded however long the bag is: latency and inconsistency are kept as running
statistics (exact count, mean, min and max; percentiles from fixed fine histograms), and a
pair's result is kept only when the caller asks for it (``keep``: the annotated stamps) or
streams it (``on_result``). A frame or pair that cannot be processed is skipped and counted
with its topic, stamp and reason; the capture writer is stopped on every exit path.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms_perception.core.frames import FramePair
from ms_perception.core.pairing import ApproximateTimePairer
from ms_perception.core.pipeline import Pipeline, Result
from ms_perception.core.postprocess import ModelOutputError
from ms_perception.core.preprocess import InputError
from ms_perception.replay.bag import EXAMPLES, ReadReport, prefetch, read_frames

STAGES = ("preprocess", "infer", "postprocess", "inconsistency", "capture")


class RunningStats:
    """count, mean, min, max exactly; percentiles from a histogram of ``bins`` over [lo, hi]
    (``log``: geometric bins, so the relative error of a percentile is at most half a bin:
    0.25 % with the latency defaults). Values outside [lo, hi] land in the end bins; min and
    max stay exact. Memory is the histogram, whatever the number of values."""

    def __init__(self, lo: float, hi: float, bins: int, log: bool = False):
        self.lo, self.hi, self.log = lo, hi, log
        self.edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        self.counts = np.zeros(bins, np.int64)
        self.n, self.total, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, v: float) -> None:
        v = float(v)
        self.n += 1
        self.total += v
        self.min, self.max = min(self.min, v), max(self.max, v)
        i = int(np.searchsorted(self.edges, v, side="right")) - 1
        self.counts[min(max(i, 0), len(self.counts) - 1)] += 1

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def percentile(self, q: float) -> float:
        """Value below which q % of the values lie (interpolated within the bin, clamped to min/max)."""
        if not self.n:
            return math.nan
        target = q / 100 * self.n
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(self.counts) - 1)
        before = cum[i] - self.counts[i]
        frac = (target - before) / self.counts[i] if self.counts[i] else 0.0
        a, b = self.edges[i], self.edges[i + 1]
        v = a * (b / a) ** frac if self.log else a + (b - a) * frac
        return float(min(max(v, self.min), self.max))

    def coarse(self, parts: int) -> list[int]:
        """The histogram merged into ``parts`` equal groups of bins (bins must divide evenly)."""
        return self.counts.reshape(parts, -1).sum(1).tolist()


def latency_stats() -> RunningStats:
    return RunningStats(1e-3, 1e6, 4000, log=True)   # 1 us .. 1000 s, bins 0.5 % wide


@dataclass
class ReplaySummary:
    pairs: int = 0                  # pairs the pipeline processed
    pairing: dict = field(default_factory=dict)
    detections: int = 0
    latency_ms: dict = field(default_factory=dict)       # stage -> {p50, p95, mean}
    inconsistency: dict = field(default_factory=dict)    # min, p50, p95, max, mean, histogram (10 bins on [0, 1])
    captured: int = 0               # pairs the capture policy decided to record (written: capture.written)
    capture: dict = field(default_factory=dict)
    read: dict = field(default_factory=dict)             # messages read / malformed / unread per topic, damage
    failed_pairs: dict = field(default_factory=lambda: {"count": 0, "examples": []})          # input errors
    invalid_output_pairs: dict = field(default_factory=lambda: {"count": 0, "examples": []})  # NaN / out of range
    visible_hw: tuple = ()
    wall_s: float = 0.0
    pairs_per_s: float = 0.0        # pairs processed / wall time (reading, pairing and the pipeline)
    thermal_saturated_pairs: int = 0
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def complete(self) -> bool:
        """The whole bag was read (no damage stopped or shortened the reader)."""
        return not self.read.get("damage") and not self.read.get("unread_messages")


def _count(into: dict, stamp_ns: int, reason: str) -> None:
    into["count"] += 1
    if len(into["examples"]) < EXAMPLES:
        into["examples"].append({"stamp_ns": int(stamp_ns), "reason": reason})


def replay_bag(bag: str | Path, pipeline: Pipeline, visible_topic: str, thermal_topic: str | None,
               slop_s: float = 0.05, queue_size: int = 10,
               on_result: Callable[[FramePair, Result], None] | None = None,
               keep: Callable[[int], bool] | bool = False, reader_thread: bool = True,
               camera_fps: float | None = None) -> tuple[ReplaySummary, list]:
    """Returns the summary and the (stamp_ns, Result) of the pairs ``keep`` selects (True: all of them;
    a predicate on the visible stamp: those; False: none, for bounded memory). ``reader_thread``: read
    and decode the bag on a thread, ahead of the pipeline (``prefetch``). ``camera_fps``: hand the
    pipeline at most this many pairs per second, as a camera delivers them (a pair that comes late is
    processed at once and the next one a period later); None: as fast as the pipeline goes."""
    if camera_fps is not None and not (math.isfinite(camera_fps) and camera_fps > 0):
        if pipeline.writer is not None:   # the run owns the writer on every exit path, this one too
            pipeline.writer.close()
        raise ValueError(f"camera_fps must be > 0, got {camera_fps}")
    period = 1.0 / camera_fps if camera_fps else 0.0
    due = 0.0
    pairer = ApproximateTimePairer(slop_s, queue_size)
    kept = []
    lat = {s: latency_stats() for s in (*STAGES, "total")}
    inc = RunningStats(0.0, 1.0, 10000)
    summ = ReplaySummary()
    report = ReadReport()
    t0 = time.perf_counter()
    needs_thermal = pipeline.card.uses_thermal and thermal_topic is not None
    try:
        frames = read_frames(bag, visible_topic, thermal_topic if needs_thermal else None, report)
        for stream, frame in (prefetch(frames) if reader_thread else frames):
            if needs_thermal:
                pair = pairer.add(stream, frame)
                if pair is None:
                    continue
            else:
                pair = FramePair(frame, None)
            if period:
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                due = max(due, time.perf_counter()) + period
            try:
                res = pipeline.process(pair)
            except ModelOutputError as exc:   # that frame's results are dropped; the replay goes on
                _count(summ.invalid_output_pairs, pair.stamp_ns, str(exc))
                continue
            except (InputError, ValueError) as exc:
                _count(summ.failed_pairs, pair.stamp_ns, str(exc))
                continue
            if not summ.pairs:
                summ.visible_hw = pair.visible.shape_hw
            summ.pairs += 1
            summ.detections += len(res.detections)
            for k, v in res.timings_ms.items():
                lat[k].add(v)
            lat["total"].add(sum(res.timings_ms.values()))
            if res.inconsistency is not None:
                inc.add(res.inconsistency.score)
            summ.captured += int(res.captured)
            if keep is True or (keep and keep(pair.stamp_ns)):
                kept.append((pair.stamp_ns, res))
            if on_result is not None:
                on_result(pair, res)
    finally:   # every exit path (an error, Ctrl-C) stops the writer thread: records accepted are written
        if pipeline.writer is not None:
            pipeline.writer.close()
    pairer.flush()
    summ.pairing = pairer.stats.to_dict()
    summ.read = report.to_dict()
    summ.latency_ms = {k: {"p50": round(s.percentile(50), 3), "p95": round(s.percentile(95), 3),
                           "mean": round(s.mean, 3)} for k, s in lat.items() if s.n}
    if inc.n:
        summ.inconsistency = {"min": inc.min, "p50": inc.percentile(50), "p95": inc.percentile(95), "max": inc.max,
                              "mean": inc.mean, "histogram": inc.coarse(10)}
    if pipeline.writer is not None:
        summ.capture = pipeline.writer.stats.to_dict()
    summ.thermal_saturated_pairs = pipeline.saturation.saturated_frames
    summ.warnings = list(pipeline.warnings) + _skip_warnings(summ, report)
    summ.wall_s = time.perf_counter() - t0
    summ.pairs_per_s = round(summ.pairs / summ.wall_s, 2) if summ.wall_s > 0 else 0.0
    return summ, kept


def _skip_warnings(summ: ReplaySummary, report: ReadReport) -> list[str]:
    out = []
    for topic, m in report.malformed.items():
        ex = m["examples"][0]
        out.append(f"{topic}: skipped {m['count']} malformed image(s); first at stamp {ex['stamp_ns']}: {ex['reason']}")
    for what, d in (("could not be processed", summ.failed_pairs),
                    ("had non-finite or out-of-range model outputs (results dropped)", summ.invalid_output_pairs)):
        if d["count"]:
            ex = d["examples"][0]
            out.append(f"{d['count']} pair(s) {what}; first at stamp {ex['stamp_ns']}: {ex['reason']}")
    if report.damage:
        out.append(report.damage)
    for topic, n in ({} if report.damage else report.unread).items():   # after damage, the damage line says it
        out.append(f"{topic}: {n} of {report.expected[topic]} message(s) listed in the bag's index were never read "
                   "(a damaged region); the results cover the rest")
    return out


def _person_images(results: list, annotations: list[dict], person_label: int) -> tuple[list, list]:
    """(plain per-image arrays of the annotated results, their results)."""
    by_stamp = {int(a["stamp_ns"]): a for a in annotations}
    images, kept = [], []
    for stamp, res in results:
        ann = by_stamp.get(int(stamp))
        if ann is None:
            continue
        persons = [o for o in ann["objects"] if o["class_id"] == 1]
        d = res.detections
        sel = d.labels == person_label
        images.append(([o["box"] for o in persons], [o["occlusion"] for o in persons], ann["condition"],
                       d.boxes[sel], d.scores[sel]))
        kept.append(res)
    return images, kept


def evaluate_persons(results: list, annotations: list[dict], person_label: int, image_hw: tuple[int, int]) -> dict:
    """KAIST log-average miss rate of the 'person' class against per-stamp annotations
    (``{"stamp_ns", "condition", "objects": [{"box": xyxy, "class_id", "occlusion"}]}``)."""
    from ms_perception.metrics.kaist import person_miss_rates
    images, _ = _person_images(results, annotations, person_label)
    return {k: round(100 * r.miss_rate, 2) for k, r in person_miss_rates(images, image_hw).items()}


def inconsistency_lift(results: list, annotations: list[dict], person_label: int, image_hw: tuple[int, int],
                       fraction: float = 0.1) -> dict | None:
    """Does the inconsistency score find the frames the model gets wrong? The share of the most
    inconsistent ``fraction`` of annotated pairs that hold a person miss or a false alarm (at the
    pipeline's score threshold, matched as the miss rate matches), over that share among all pairs
    (a random pick's expectation). None when the model gives no score."""
    return frame_score_lifts(results, annotations, person_label, image_hw, fraction).get("inconsistency")


def frame_score_lifts(results: list, annotations: list[dict], person_label: int, image_hw: tuple[int, int],
                      fraction: float = 0.1) -> dict:
    """:func:`inconsistency_lift` for every per-frame score the pipeline gave each annotated pair
    (``Result.frame_scores``: the image inconsistency, the detection-level inconsistency and entropy;
    the capture policy ranks by one of them, ``capture_score``): score name -> lift."""
    from ms_perception.metrics.kaist import frame_errors, top_fraction_lift
    images, kept = _person_images(results, annotations, person_label)
    if not kept:
        return {}
    scores = [_frame_scores(r) for r in kept]
    names = [n for n in scores[0] if all(n in f for f in scores)]
    if not names:
        return {}
    errors = frame_errors(images, image_hw)
    counts = {"pairs_with_miss": int((errors[:, 0] > 0).sum()), "pairs_with_false_alarm": int((errors[:, 1] > 0).sum())}
    return {n: {**top_fraction_lift([f[n] for f in scores], errors.sum(1) > 0, fraction), **counts} for n in names}


def _frame_scores(res) -> dict:
    """A result's per-frame scores, its image inconsistency among them (a Result made without the
    pipeline may carry only that)."""
    fs = dict(res.frame_scores)
    if res.inconsistency is not None:
        fs.setdefault("inconsistency", res.inconsistency.score)
    return fs


def load_annotations(bag: str | Path) -> list[dict] | None:
    p = Path(bag) / "annotations.json"
    return json.loads(p.read_text()) if p.exists() else None
