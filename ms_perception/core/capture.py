"""Capture of uncertain frame pairs for labeling: a policy and a writer that never blocks.

Policy (which pairs): a per-frame score (``score``: the paper's image inconsistency by default,
or one of the detection-level scores of :data:`CAPTURE_SCORES`), optionally smoothed over time
(exponential moving average), passes a fixed threshold or lies in the top fraction of a
sliding window of recent scores; at least ``min_interval_s`` since the last capture; and
the scene differs from the last captured one (mean absolute difference of 32x24 gray
thumbnails), so a robot parked in front of a confusing scene does not capture it a hundred
times.

Writer (how): ``submit`` puts the record on a bounded queue and returns at once (a full
queue drops the record and counts it); a thread writes each record into a temporary folder
(files fsynced), renames it into place (atomic on POSIX), fsyncs the folder, then rewrites
the JSONL manifest atomically. A disk quota is enforced by evicting lowest-score, oldest
records first (never a record scoring higher than the new one), by the score the policy ranked
them by (a record's ``rank``; its ``score`` is always the image inconsistency). Any OSError (a full disk)
removes the temporary folder, is counted, and writing goes on: no partial record, and the
pipeline never stops.
"""
from __future__ import annotations

import errno
import json
import math

from ms_perception.core import jsonio
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

MANIFEST = "manifest.jsonl"
WRITER_NICE = 10        # the capture writer thread's nice value (Linux), above the pipeline's
CAPTURE_FORMAT = 1      # record.json's "capture_format"; a reader refuses a newer one (records without it are 1)
# the per-frame scores a policy can rank pairs by (the pipeline computes them; core/inconsistency.py):
# "inconsistency": the scale-balanced image score of the active-learning paper (mono branches needed);
# "detection_inconsistency": the sum of I over the frame's kept detections (mono branches, detection);
# "detection_entropy": the sum of the fused detections' binary entropies (any detection model)
CAPTURE_SCORES = ("inconsistency", "detection_inconsistency", "detection_entropy")


def sanitize_id(text: str, fallback: str = "robot") -> str:
    """Make an id safe as one path component: [A-Za-z0-9_.-], no leading dot, <= 64 chars."""
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))[:64].lstrip(".")
    return s or fallback


@dataclass
class CapturePolicyConfig:
    mode: str = "threshold"          # "threshold" | "top_fraction"
    threshold: float = 0.2           # the score (bits) at or above which a pair is uncertain (mode threshold)
    top_fraction: float = 0.05       # mode top_fraction: capture scores in the top 5% of the window
    window: int = 200                # sliding window length (pairs) for top_fraction
    min_interval_s: float = 2.0      # at most one capture per this many seconds (stamp time)
    smoothing: float = 0.0           # EMA weight of the previous smoothed score (0 = none)
    duplicate_threshold: float = 4.0  # mean |Δ| of 32x24 gray thumbnails (0-255) below which a scene is a repeat
    score: str = "inconsistency"     # which per-frame score ranks the pairs (CAPTURE_SCORES)

    def __post_init__(self):
        if self.score not in CAPTURE_SCORES:
            raise ValueError(f"capture score must be one of {list(CAPTURE_SCORES)}, got {self.score!r}")
        if self.mode not in ("threshold", "top_fraction"):
            raise ValueError(f"capture mode must be 'threshold' or 'top_fraction', got {self.mode!r}")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"capture top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"capture smoothing must be in [0, 1), got {self.smoothing}")
        if self.window < 1 or self.min_interval_s < 0:
            raise ValueError("capture window must be >= 1 and min_interval_s >= 0")


AUTO, PAUSED, FORCE = 0, 1, 2


def set_background_priority() -> str:
    """Lower the calling thread's CPU priority: SCHED_IDLE where Linux allows it, else nice +WRITER_NICE;
    returns which ("idle", "nice" or "" where neither is available)."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, WRITER_NICE)
        return "nice"
    except (AttributeError, OSError):
        return ""


def restore_priority(tid: int) -> bool:
    """Give thread ``tid`` back the normal policy (SCHED_OTHER, nice 0). Linux lets a process do this
    when it is privileged or its RLIMIT_NICE allows nice 0; returns whether it happened."""
    try:
        if os.sched_getscheduler(tid) == os.SCHED_IDLE:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        elif os.getpriority(os.PRIO_PROCESS, tid) > 0:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        return True
    except (AttributeError, OSError):
        return False


def _json_score(score) -> float | None:
    """NaN (a record forced by the operator on a model without inconsistency) is stored as null."""
    return None if score is None or score != score else float(score)


def _rank(score) -> float:
    """Eviction rank: forced records without a score are kept longest (the operator asked for them)."""
    return float("inf") if score is None or score != score else float(score)


def _entry_rank(entry: dict) -> float:
    """A manifest entry's eviction rank: the score its policy ranked by (``rank``; entries written before
    there was a choice of score have only ``score``, which was that score)."""
    return _rank(entry.get("rank", entry.get("score")))


class CapturePolicy:
    def __init__(self, cfg: CapturePolicyConfig | None = None):
        self.cfg = cfg or CapturePolicyConfig()
        self.recent: deque[float] = deque(maxlen=self.cfg.window)
        self.smoothed: float | None = None
        self.last_stamp_ns: int | None = None
        self.last_thumb: np.ndarray | None = None
        self.reasons: dict[str, int] = {}
        self.mode = AUTO           # operator override: AUTO, PAUSED, FORCE (ms_perception_msgs/SetCaptureMode)
        self.force_remaining = 0

    def set_mode(self, mode: int, force_count: int = 1) -> tuple[bool, str, int]:
        """Operator override; returns (success, message, previous mode)."""
        prev = self.mode
        if mode not in (AUTO, PAUSED, FORCE):
            return False, f"unknown capture mode {mode}; use 0 (AUTO), 1 (PAUSED) or 2 (FORCE)", prev
        if mode == FORCE and force_count < 1:
            return False, "FORCE needs force_count >= 1", prev
        self.mode, self.force_remaining = mode, (force_count if mode == FORCE else 0)
        msg = {AUTO: "capturing by policy", PAUSED: "capture paused",
               FORCE: f"capturing the next {force_count} pair(s)"}[mode]
        return True, msg, prev

    @property
    def forcing(self) -> bool:
        return self.mode == FORCE and self.force_remaining > 0

    def _count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def decide(self, stamp_ns: int, score: float | None, visible_rgb: np.ndarray | None = None) -> tuple[bool, str]:
        """Whether to record this pair. ``score`` None: the model has no such score (only FORCE records)."""
        c = self.cfg
        if self.mode == PAUSED:
            self._count("paused")
            return False, "paused"
        if self.forcing:
            self.force_remaining -= 1
            if self.force_remaining == 0:
                self.mode = AUTO
            self.last_stamp_ns = stamp_ns
            self._count("forced")
            return True, "forced"
        if score is None:
            self._count("no_score")
            return False, "no_score"
        s = score if self.smoothed is None or c.smoothing == 0 else c.smoothing * self.smoothed + (1 - c.smoothing) * score
        self.smoothed = s
        self.recent.append(s)
        if c.mode == "threshold":
            hit = s >= c.threshold
        else:
            # in the top fraction: strictly above the (k+1)-th largest recent score (ties do not qualify,
            # so a flat stream of equal scores captures nothing)
            # s > the (k+1)-th largest  <=>  at most k recent scores (s among them) are >= s: one pass
            # in Python, no sort and no numpy call per frame
            n = len(self.recent)
            k = max(1, math.ceil(c.top_fraction * n))
            hit = n >= min(c.window, 10) and n > k and sum(1 for x in self.recent if x >= s) <= k
        reason = "below_threshold" if not hit else "captured"
        if hit and self.last_stamp_ns is not None and stamp_ns - self.last_stamp_ns < c.min_interval_s * 1e9:
            hit, reason = False, "min_interval"
        thumb = None
        if hit and visible_rgb is not None and c.duplicate_threshold > 0:   # 0: the check is off (~1 ms saved)
            thumb = gray_thumbnail(visible_rgb)
            if self.last_thumb is not None and float(np.abs(thumb - self.last_thumb).mean()) < c.duplicate_threshold:
                hit, reason = False, "near_duplicate"
        if hit:
            self.last_stamp_ns = stamp_ns
            if thumb is not None:
                self.last_thumb = thumb
        self._count(reason)
        return hit, reason


THUMB_W, THUMB_H = 32, 24


def area_thumbnail(image: np.ndarray) -> np.ndarray:
    """The mean of each of the 32x24 cells of a float32 (H, W) image (OpenCV's area weights): the width
    first, then the height. Area weights are separable, so this is the one-pass resize to ~1e-5; the
    one-pass resize of 512 rows to 24 (a ratio of 21.33) took 1 ms on the robot's CPU, this 0.1 ms."""
    h, w = image.shape[:2]
    if h < THUMB_H or w < THUMB_W:       # enlarging: the area rule is not a mean of cells there
        return cv2.resize(image, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA)
    a = cv2.resize(image, (THUMB_W, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(a, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA)


def gray_thumbnail(rgb: np.ndarray) -> np.ndarray:
    """32x24 gray thumbnail, float32 0-255: the near-duplicate check of the capture policy and of the
    fleet pool (one definition, so a pool compares thumbnails made the same way)."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    return area_thumbnail(np.asarray(g, np.float32))


@dataclass
class CaptureRecord:
    stamp_ns: int
    score: float
    visible: np.ndarray                 # native resolution, RGB uint8
    thermal: np.ndarray | None          # native resolution, as received (uint16 kept lossless)
    thermal_encoding: str = ""
    thermal_stamp_ns: int | None = None
    # all branch predictions; or a function that makes them, which the writer thread calls (the
    # pipeline defers the per-anchor entropy and the lists, so a captured frame costs its thread little)
    predictions: dict | Callable[[], dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    mask: np.ndarray | None = None      # segmentation models: (H, W) uint8 class ids at the visible size
    # the score the policy ranked this pair by (its capture_score), by which the quota evicts; None: ``score``
    rank: float | None = None

    @property
    def rank_score(self) -> float:
        return self.score if self.rank is None else self.rank


@dataclass
class CaptureStats:
    submitted: int = 0
    written: int = 0
    dropped_queue_full: int = 0
    write_errors: int = 0
    evicted: int = 0
    quota_skipped: int = 0
    bytes_used: int = 0
    recovered: int = 0            # complete records on disk the manifest lacked (a kill -9), added back at start
    manifest_bad_lines: int = 0   # manifest lines that are not a record entry ({} , null, torn): skipped
    unreadable_records: int = 0   # record folders without a valid record.json or with missing files: left alone
    failed_by_errno: dict = field(default_factory=dict)   # write errors by errno name (ENOSPC, EACCES, ...)
    last_error: str = ""
    # close() gave up waiting (a busy machine starves the idle-priority writer): records taken off the
    # queue unwritten, and the one the writer was still writing (it may yet finish, after the report)
    dropped_at_close: int = 0
    in_flight_at_close: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class CaptureWriter:
    def __init__(self, directory: str | Path, robot_id: str = "robot", model_hash: str = "", quota_bytes: int = 2 << 30,
                 queue_size: int = 8):
        if not int(quota_bytes) > 0:
            raise ValueError(f"capture quota must be > 0 bytes, got {quota_bytes}")
        if not int(queue_size) >= 1:
            raise ValueError(f"capture queue size must be >= 1, got {queue_size}")
        self.root = Path(directory)
        self.robot_id = sanitize_id(robot_id)
        self.dir = self.root / self.robot_id
        self.dir.mkdir(parents=True, exist_ok=True)
        probe = self.dir / f".tmp-probe-{uuid.uuid4().hex[:8]}"
        try:   # a folder that cannot be written is an error now, not a count of failed records later
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OSError(exc.errno, f"capture folder {self.dir} cannot be written ({exc.strerror})") from None
        self.model_hash = model_hash
        self.quota = int(quota_bytes)
        self.stats = CaptureStats()
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # record ids: stamp, this writer's random session token, a sequence number: unique across restarts
        # into the same folder (ids restarted at 1 and collided) and across robots
        self._session = uuid.uuid4().hex[:8]
        self._seq = 0
        self._cleanup_temp()
        self.entries: list[dict] = self._load_manifest()
        self._reconcile()
        self.stats.bytes_used = sum(e["bytes"] for e in self.entries)
        self.background_priority = ""     # how the writer thread lowered its priority: idle / nice / ''
        self._tid: int | None = None      # the writer thread's id (set by the thread)
        self._busy = False                # the thread is writing a record
        self._thread = threading.Thread(target=self._run, name="ms_perception-capture", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    def submit(self, rec: CaptureRecord) -> bool:
        """Never blocks: a full queue drops the record (counted)."""
        self.stats.submitted += 1
        try:
            self.queue.put_nowait(rec)
            return True
        except queue.Full:
            self.stats.dropped_queue_full += 1
            return False

    @property
    def pending(self) -> int:
        return self.queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Drain the queue (clean shutdown) and stop the thread; a second call does nothing.

        The writer runs at SCHED_IDLE, which a machine busy with other work starves. The pipeline has
        stopped by now, so the writer first gets the normal priority back where the OS allows it
        (``restore_priority``). What it has not written after ``timeout`` seconds is taken off the
        queue and counted (``dropped_at_close``, ``in_flight_at_close``): the counts always add up to
        the records submitted, and the report never misses one silently."""
        if not self._thread.is_alive():
            return
        if self._tid is not None:
            restore_priority(self._tid)
        deadline = time.monotonic() + timeout
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return
        left = 0
        while True:
            try:
                left += self.queue.get_nowait() is not None
            except queue.Empty:
                break
        self.stats.dropped_at_close += left
        self.stats.in_flight_at_close += int(self._busy)
        try:
            self.queue.put_nowait(None)          # the writer stops after its record, whenever it gets the CPU
        except queue.Full:
            pass

    def summary_line(self) -> str:
        """decided / written / dropped / failed (by errno) / quota-skipped, for a report's one line."""
        s = self.stats
        failed = f"failed {s.write_errors}" + (f" ({', '.join(f'{k} {v}' for k, v in s.failed_by_errno.items())})"
                                               if s.failed_by_errno else "")
        closing = (f", not written at shutdown {s.dropped_at_close + s.in_flight_at_close} (the writer was starved of "
                   "CPU)" if s.dropped_at_close or s.in_flight_at_close else "")
        return (f"capture: decided {s.submitted}, written {s.written}, dropped (queue full) {s.dropped_queue_full}, "
                f"{failed}, quota-skipped {s.quota_skipped}{closing} -> {self.dir}")

    # ----------------------------------------------------------------- writer
    def _run(self):
        # the writer yields the CPU to the pipeline (the engine's threads, the callbacks): encoding a PNG
        # on a 2-core robot otherwise delays the frame being processed. Linux: SCHED_IDLE for this thread
        # alone (it runs only on a core nothing else wants; a nice value of 10 still took its share from
        # the engine's threads: +1.4 to +2.6 ms on the frame after a capture, against +0.0 to +0.6),
        # else a higher nice value. A writer that falls behind fills its queue, and the drops are counted.
        self._tid = threading.get_native_id()
        self.background_priority = set_background_priority()
        while True:
            rec = self.queue.get()
            if rec is None:
                return
            self._busy = True
            try:
                self._write(rec)
            except Exception as exc:  # never let the writer thread die: count and continue
                self._failed(exc)
            finally:
                self._busy = False

    def _failed(self, exc: Exception) -> None:
        self.stats.write_errors += 1
        code = getattr(exc, "errno", None)
        key = errno.errorcode.get(code, str(code)) if code is not None else type(exc).__name__
        self.stats.failed_by_errno[key] = self.stats.failed_by_errno.get(key, 0) + 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"

    def _encode(self, rec: CaptureRecord, name: str) -> dict[str, bytes]:
        files = {}
        ok, png = cv2.imencode(".png", cv2.cvtColor(rec.visible, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError("visible image could not be encoded")
        files["visible.png"] = png.tobytes()
        if rec.thermal is not None:
            t = rec.thermal
            if t.dtype in (np.uint8, np.uint16):
                ok, tp = cv2.imencode(".png", t)  # 16-bit PNG: lossless radiometric counts
                if not ok:
                    raise ValueError("thermal image could not be encoded")
                files["thermal.png"] = tp.tobytes()
            else:
                import io
                buf = io.BytesIO()
                np.save(buf, t)
                files["thermal.npy"] = buf.getvalue()
        if rec.mask is not None:
            ok, mp = cv2.imencode(".png", np.ascontiguousarray(rec.mask, np.uint8))
            if not ok:
                raise ValueError("mask could not be encoded")
            files["mask.png"] = mp.tobytes()
        meta = {"capture_format": CAPTURE_FORMAT, "id": name, "robot_id": self.robot_id, "stamp_ns": int(rec.stamp_ns), "score": _json_score(rec.score),
                "rank": _json_score(rec.rank_score), "thermal_stamp_ns": rec.thermal_stamp_ns, "thermal_encoding": rec.thermal_encoding,
                "model_hash": self.model_hash, "visible_hw": list(rec.visible.shape[:2]),
                "thermal_hw": list(rec.thermal.shape[:2]) if rec.thermal is not None else None,
                "predictions": rec.predictions() if callable(rec.predictions) else rec.predictions,
                "extra": rec.extra, "files": sorted(files),
                "written_unix": time.time()}
        files["record.json"] = jsonio.dumps(meta).encode()   # compact: the C encoder, less time holding the GIL
        return files

    def _write(self, rec: CaptureRecord):
        self._seq += 1
        name = f"{int(rec.stamp_ns):020d}_{self._session}{self._seq:06d}"
        files = self._encode(rec, name)
        size = sum(len(b) for b in files.values())
        if not self._make_room(size, _rank(rec.rank_score)):
            self.stats.quota_skipped += 1
            return
        tmp = self.dir / f".tmp-{name}"
        final = self.dir / name
        try:
            tmp.mkdir()
            for fname, data in files.items():
                with open(tmp / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.dir)
            entry = {"id": name, "stamp_ns": int(rec.stamp_ns), "score": _json_score(rec.score),
                     "rank": _json_score(rec.rank_score), "bytes": size}
            self.entries.append(entry)
            try:
                self._save_manifest()
            except OSError:
                self.entries.pop()
                shutil.rmtree(final, ignore_errors=True)
                raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            self._failed(exc)
            return
        self.stats.written += 1
        self.stats.bytes_used += size

    def _make_room(self, size: int, score: float) -> bool:
        if size > self.quota:
            return False
        victims = sorted(self.entries, key=lambda e: (_entry_rank(e), e["stamp_ns"]))
        used = self.stats.bytes_used
        plan = []
        for v in victims:
            if used + size <= self.quota:
                break
            if _entry_rank(v) > score:
                return False  # only lower-scoring records may make room
            plan.append(v)
            used -= v["bytes"]
        if used + size > self.quota:
            return False
        for v in plan:
            shutil.rmtree(self.dir / v["id"], ignore_errors=True)
            self.entries.remove(v)
            self.stats.bytes_used -= v["bytes"]
            self.stats.evicted += 1
        if plan:
            self._save_manifest()
        return True

    # --------------------------------------------------------------- manifest
    def _save_manifest(self):
        path = self.dir / MANIFEST
        tmp = self.dir / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            for e in self.entries:
                f.write(jsonio.dumps(e) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _load_manifest(self) -> list[dict]:
        path = self.dir / MANIFEST
        if not path.exists():
            return []
        out, bad = [], []
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                e = None
            if not (isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]
                    and isinstance(e.get("bytes"), int) and isinstance(e.get("stamp_ns"), int)):
                bad.append(lineno)
                continue
            if (self.dir / e["id"]).is_dir():
                out.append(e)
        if bad:
            self.stats.manifest_bad_lines = len(bad)
            self.stats.last_error = (f"{path}: skipped {len(bad)} line(s) that are not record entries (line "
                                     f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); the records "
                                     "on disk are recovered from their record.json")
        return out

    def _reconcile(self) -> None:
        """Add back complete records on disk that the manifest lacks (the process was killed between the
        record's rename and the manifest rewrite, or the manifest line was damaged)."""
        known = {e["id"] for e in self.entries}
        found = []
        for d in sorted(p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if d.name in known:
                continue
            try:
                meta = json.loads((d / "record.json").read_text())
                files = meta["files"]
                size = sum((d / f).stat().st_size for f in files) + (d / "record.json").stat().st_size
                entry = {"id": d.name, "stamp_ns": int(meta["stamp_ns"]), "score": _json_score(meta.get("score")),
                         "rank": _json_score(meta.get("rank", meta.get("score"))), "bytes": int(size)}
            except (OSError, ValueError, KeyError, TypeError):
                self.stats.unreadable_records += 1
                continue
            if meta.get("id") != d.name:
                self.stats.unreadable_records += 1
                continue
            found.append(entry)
        if found:
            self.entries = sorted(self.entries + found, key=lambda e: (e["stamp_ns"], e["id"]))
            self.stats.recovered = len(found)
        if found or self.stats.manifest_bad_lines:
            self._save_manifest()

    def _cleanup_temp(self):
        for p in self.dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        (self.dir / (MANIFEST + ".tmp")).unlink(missing_ok=True)   # an interrupted manifest rewrite


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
