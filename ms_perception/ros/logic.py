"""Everything the detector node does, without ROS: the node hands in messages and the current
(ROS, possibly simulated) time and publishes what comes back.

Lifecycle mapping: ``configure`` loads engines and the capture writer; ``on_pair`` runs the
pipeline on a synchronized visible/thermal pair; ``on_visible``/``on_thermal`` see every single
image (counting, thermal-loss watchdog and the visible-only fallback); ``diagnostics`` reports
rate, latency, pairing and capture health; ``cleanup`` drains the capture queue and releases.
"""
from __future__ import annotations

import logging
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ms_perception.build import build_pipeline, load_engine
from ms_perception.core.capture import CapturePolicy, CaptureWriter
from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.overlay import colored_mask, overlay
from ms_perception.core.pipeline import Pipeline
from ms_perception.core.postprocess import ModelOutputError
from ms_perception.core.preprocess import InputError, visible_to_rgb
from ms_perception.engines import EngineError
from ms_perception.core.card import lineage_summary
from ms_perception.ros import messages as M
from ms_perception.ros.params import DEFAULTS, capture_config, check_all, check_value, pipeline_config


class _PythonLogger:
    """The node's logger interface (``info``/``warning``/``error`` with one message) over Python logging,
    for use without ROS; the node passes its rclpy logger so messages reach /rosout."""

    def __init__(self, name: str = "ms_perception.detector"):
        self._log = logging.getLogger(name)

    def info(self, msg: str) -> None:
        self._log.info(msg)

    def warning(self, msg: str) -> None:
        self._log.warning(msg)

    def error(self, msg: str) -> None:
        self._log.error(msg)


INVALID_RUN_ERROR = 3   # this many frames in a row with unusable model outputs: diagnostics ERROR


class ConfigureError(RuntimeError):
    """configure failed; the message names the parameter and the fix."""


@dataclass
class Outputs:
    """Messages to publish, by output name (detections, mask, colored_mask, inconsistency, overlay)."""
    messages: dict = field(default_factory=dict)
    result: object = None
    error: str = ""
    visible: Frame | None = None   # for the overlay, built only while someone subscribes


@dataclass
class Counters:
    visible: int = 0
    thermal: int = 0
    pairs: int = 0
    fallback_frames: int = 0
    overlays: int = 0   # overlay images built (only while the overlay topic has a subscriber)
    errors: int = 0
    last_error: str = ""
    invalid_outputs: int = 0       # frames whose model outputs were non-finite or out of range (results dropped)
    invalid_run: int = 0           # ... of them in a row, now


class DetectorLogic:
    def __init__(self, params: dict, adapter: M.MessageAdapter, to_frame: Callable[[object], Frame], logger=None):
        self.params = {**DEFAULTS, **params}
        self.log = logger if logger is not None else _PythonLogger()
        self.configure_error = ""   # why the last configure failed (reported in diagnostics until one succeeds)
        self.ad, self.to_frame = adapter, to_frame
        self.pipeline: Pipeline | None = None
        self.fallback: Pipeline | None = None
        self.writer: CaptureWriter | None = None
        self.policy: CapturePolicy | None = None
        self.class_names: list[str] = []
        self.model_hash = ""
        self.counters = Counters()
        self.latency_ms: deque[float] = deque(maxlen=1000)   # pipeline time per pair (preprocess..postprocess)
        self.callback_ms: deque[float] = deque(maxlen=1000)  # whole pair callback (conversion, pipeline, publish)
        self.pair_times_ns: deque[int] = deque(maxlen=200)
        self.last_thermal_ns: int | None = None
        self.thermal_lost = False
        self.activated_ns: int | None = None
        self.warned_no_pairs = False
        self._warned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # pipeline -> warnings logged

    # ---------------------------------------------------------------- lifecycle
    def configure(self) -> None:
        try:
            self._configure()
        except ConfigureError as exc:
            self.configure_error = f"configure failed: {exc}"
            self.cleanup()
            raise
        self.configure_error = ""

    def _configure(self) -> None:
        problems = check_all(self.params)
        if problems:
            raise ConfigureError("; ".join(problems))
        p = self.params
        try:
            engine = load_engine(p)
            fallback_engine = load_engine(p, p["fallback_model_path"]) if p["fallback_model_path"] else None
        except EngineError as exc:
            raise ConfigureError(f"{exc}; fix model_path / fallback_model_path") from None
        except Exception as exc:   # noqa: BLE001 - a corrupt file raises what its parser raises
            raise ConfigureError(f"cannot load the model ({type(exc).__name__}: {exc}); model_path must name an "
                                 "ONNX file exported by `ms-perception train export` (or '' for the default)") from None
        card = engine.card
        names = list(p["class_names"]) or list(card.class_names)
        if len(names) != len(card.class_names):
            raise ConfigureError(f"class_names has {len(names)} names but the model {card.name} has "
                                 f"{len(card.class_names)} classes {card.class_names}; fix class_names or set []")
        if fallback_engine is not None:
            fc = fallback_engine.card
            if fc.uses_thermal:
                raise ConfigureError(f"fallback_model_path {p['fallback_model_path']} needs a thermal image too; "
                                     "the fallback must be a visible-only model (e.g. the RGB-only student)")
            if fc.class_names != card.class_names:
                raise ConfigureError(f"fallback model classes {fc.class_names} differ from the main model's "
                                     f"{card.class_names}")
        self.class_names, self.model_hash = names, card.graph_sha256[:16]
        self.policy, self.writer = None, None
        try:
            self.pipeline = build_pipeline(p, engine)   # the same assembly as replay and the demo
        except OSError as exc:
            raise ConfigureError(f"capture_dir {p['capture_dir']}: {exc}; choose a writable folder or set "
                                 "capture_enabled false") from None
        except (InputError, ValueError) as exc:
            raise ConfigureError(str(exc)) from None
        self.policy, self.writer = self.pipeline.policy, self.pipeline.writer
        if fallback_engine is not None:
            self.fallback = build_pipeline({**p, "capture_enabled": False}, fallback_engine)
        for pipe in (self.pipeline, self.fallback):   # load-time notes (an accepted edited graph) go out now
            for w in pipe.warnings if pipe is not None else []:
                self.log.warning(w)
            if pipe is not None:
                self._warned[pipe] = len(pipe.warnings)

    def activate(self, now_ns: int) -> None:
        if self.pipeline is None:
            raise ConfigureError("activate before configure")
        self.activated_ns, self.warned_no_pairs = now_ns, False

    def deactivate(self) -> None:
        self.activated_ns = None

    def cleanup(self, timeout_s: float = 30.0) -> dict:
        """Drains the capture queue (records already accepted are written) and releases engines."""
        stats = {}
        if self.writer is not None:
            self.writer.close(timeout_s)
            stats = self.writer.stats.to_dict()
        for pipe in (self.pipeline, self.fallback):
            if pipe is not None:
                pipe.engine.close()
        self.pipeline = self.fallback = self.writer = self.policy = None
        return stats

    # --------------------------------------------------------------- parameters
    def set_param(self, name: str, value) -> str | None:
        """Validate and apply one parameter; returns the rejection reason or None."""
        reason = check_value(name, value)
        if reason is None:
            problems = check_all({**self.params, name: value})
            reason = "; ".join(problems) if problems else None
        if reason:
            return reason
        self.params[name] = value
        if self.pipeline is not None:
            try:
                cfg = pipeline_config(self.params)
            except (ValueError, OSError) as exc:
                return str(exc)
            for pipe in (self.pipeline, self.fallback):
                if pipe is not None:
                    pipe.cfg.score_threshold, pipe.cfg.nms_iou = cfg.score_threshold, cfg.nms_iou
                    pipe.cfg.max_detections, pipe.cfg.thermal = cfg.max_detections, cfg.thermal
            if self.policy is not None:
                self.policy.cfg = capture_config(self.params)
        return None

    # ------------------------------------------------------------------- frames
    def on_visible(self, msg, now_ns: int) -> Outputs | None:
        """Every visible image. While the thermal stream is lost, runs the fallback model (or nothing)."""
        self.counters.visible += 1
        self._update_thermal_state(now_ns)
        if not self.thermal_lost or self.pipeline is None:
            return None
        if self.params["thermal_loss_action"] != "fallback_model" or self.fallback is None:
            return None
        self.counters.fallback_frames += 1
        return self._run(self.fallback, msg, None, now_ns)

    def on_thermal(self, msg, now_ns: int) -> None:
        self.counters.thermal += 1
        self.last_thermal_ns = now_ns
        if self.thermal_lost:
            self.log.info("thermal stream is back; running the multispectral model again")
            self.thermal_lost = False

    def on_pair(self, vis_msg, th_msg, now_ns: int) -> Outputs:
        self.counters.pairs += 1
        self.pair_times_ns.append(now_ns)
        return self._run(self.pipeline, vis_msg, th_msg, now_ns)

    def _update_thermal_state(self, now_ns: int) -> None:
        ref = self.last_thermal_ns if self.last_thermal_ns is not None else self.activated_ns
        if ref is None:
            return
        lost = now_ns - ref > self.params["thermal_timeout_s"] * 1e9
        if lost and not self.thermal_lost:
            action = ("running the visible-only fallback model" if self.params["thermal_loss_action"] ==
                      "fallback_model" and self.fallback is not None else "publishing nothing until it returns")
            self.log.error(f"no thermal image for {(now_ns - ref) / 1e9:.1f} s on {self.params['thermal_topic']}: "
                           f"{action}")
        self.thermal_lost = lost

    def _run(self, pipe: Pipeline | None, vis_msg, th_msg, now_ns: int) -> Outputs:
        if pipe is None:
            return Outputs(error="not configured")
        try:
            vis = self.to_frame(vis_msg)
            th = self.to_frame(th_msg) if th_msg is not None else None
            res = pipe.process(FramePair(vis, th))
        except ModelOutputError as exc:   # one policy: counted, this frame's results dropped, the node goes on
            self.counters.invalid_outputs += 1
            self.counters.invalid_run += 1
            return Outputs(error=self.count_error(f"{self._topics(vis_msg, th_msg)}: {exc}"))
        except (InputError, ValueError, EngineError) as exc:
            # bad input is reported and counted; the node keeps running
            return Outputs(error=self.count_error(f"{self._topics(vis_msg, th_msg)}: {exc}"))
        except Exception as exc:   # noqa: BLE001 - e.g. OpenCV on a degenerate image: counted, never raised
            return Outputs(error=self.count_error(f"{self._topics(vis_msg, th_msg)}: {type(exc).__name__}: {exc}"))
        self.counters.invalid_run = 0
        self.latency_ms.append(sum(res.timings_ms.values()))
        while len(pipe.warnings) > self._warned.get(pipe, 0):   # once-only pipeline warnings, to the log
            self.log.warning(pipe.warnings[self._warned.get(pipe, 0)])
            self._warned[pipe] = self._warned.get(pipe, 0) + 1
        header = vis_msg.header
        names = self.class_names
        out = Outputs(result=res)
        fmt = self.params["class_id_format"]
        out.messages["detections"] = M.detection_array(self.ad, header, res.detections, names, fmt)
        if res.mask is not None:
            out.messages["mask"] = M.image(self.ad, header, res.mask, "mono8")
            if self.params["publish_colored_mask"]:
                out.messages["colored_mask"] = M.image(self.ad, header, colored_mask(res.mask, len(names)), "rgb8")
        if res.inconsistency is not None:
            skew = 0 if th is None else th.stamp_ns - vis.stamp_ns
            out.messages["inconsistency"] = M.inconsistency(self.ad, header, res, pipe.card, names, self.model_hash,
                                                            skew)
        out.visible = vis
        return out

    def _topics(self, vis_msg, th_msg) -> str:
        try:
            st = vis_msg.header.stamp
            stamp = f" stamp {int(st.sec)}.{int(st.nanosec):09d}"
        except AttributeError:
            stamp = ""
        topics = self.params["visible_topic"] + (f" + {self.params['thermal_topic']}" if th_msg is not None else "")
        return topics + stamp

    def count_error(self, message: str) -> str:
        """Count one frame that could not be processed; diagnostics report the count and the last reason."""
        self.counters.errors += 1
        self.counters.last_error = message
        return message

    def overlay(self, out: Outputs, header):
        if out.visible is None or out.result is None:
            return None
        return M.image(self.ad, header, overlay(visible_to_rgb(out.visible), out.result, self.class_names), "rgb8")

    def label_info(self, header):
        return M.label_info(self.ad, header, self.class_names, self.params["score_threshold"])

    def set_capture_mode(self, mode: int, force_count: int) -> tuple[bool, str, int]:
        if self.policy is None:
            return False, "capture is disabled (capture_enabled false) or the node is not configured", 0
        return self.policy.set_mode(mode, force_count)

    # -------------------------------------------------------------- diagnostics
    def diagnostics(self, now_ns: int):
        """DiagnosticArray + any warning to log once (no pairs arriving)."""
        c = self.counters
        self._update_thermal_state(now_ns)
        recent = [t for t in self.pair_times_ns if now_ns - t <= 5e9]
        rate = (len(recent) - 1) / ((recent[-1] - recent[0]) / 1e9) if len(recent) > 1 and recent[-1] > recent[0] \
            else 0.0
        lat = np.asarray(self.latency_ms) if self.latency_ms else None
        cb = np.asarray(self.callback_ms) if self.callback_ms else None
        values = {"pairs": c.pairs, "rate_hz": round(rate, 2), "visible_received": c.visible,
                  "thermal_received": c.thermal, "unpaired_visible": max(0, c.visible - c.pairs - c.fallback_frames),
                  "unpaired_thermal": max(0, c.thermal - c.pairs), "fallback_frames": c.fallback_frames,
                  "overlays": c.overlays, "errors": c.errors, "invalid_model_outputs": c.invalid_outputs,
                  "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat is not None else "",
                  "latency_p95_ms": round(float(np.percentile(lat, 95)), 2) if lat is not None else "",
                  "latency_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat is not None else "",
                  "callback_p50_ms": round(float(np.percentile(cb, 50)), 2) if cb is not None else "",
                  "callback_p99_ms": round(float(np.percentile(cb, 99)), 2) if cb is not None else ""}
        level, message, warning = "ok", "running", ""
        if self.configure_error:
            level, message = "error", self.configure_error
        elif self.pipeline is None:
            level, message = "warn", "not configured"
        elif self.activated_ns is None:
            level, message = "ok", "configured, inactive"
        if self.thermal_lost:
            if self.params["thermal_loss_action"] == "fallback_model" and self.fallback is not None:
                level, message = "warn", "thermal stream lost: visible-only fallback model"
            else:
                level, message = "error", (f"thermal stream lost (no image on {self.params['thermal_topic']} for "
                                           f"{self.params['thermal_timeout_s']} s): publishing nothing")
        sat = self.pipeline.saturation if self.pipeline is not None else None
        if sat is not None:
            values["thermal_saturated_frames"] = sat.saturated_frames
            if sat.warning:
                values["thermal_warning"] = sat.warning
            if sat.run >= sat.frames and level == "ok":
                level, message = "warn", sat.warning
        if c.invalid_run >= INVALID_RUN_ERROR:
            level, message = "error", (f"the last {c.invalid_run} frames had non-finite or out-of-range model outputs "
                                       f"(results dropped): {c.last_error}")
        if c.errors:
            values["last_error"] = c.last_error
        if self.pipeline is not None:   # which model, and where its weights came from
            card = self.pipeline.card
            values["model"] = f"{card.name} {card.graph_sha256[:16]}"
            values["model_lineage"] = lineage_summary(card)
        waited = (now_ns - self.activated_ns) / 1e9 if self.activated_ns is not None else 0.0
        if c.pairs == 0 and waited >= self.params["no_pairs_warning_s"]:
            p = self.params
            if c.visible == 0 and c.thermal == 0:
                detail = (f"no images at all on {p['visible_topic']} and {p['thermal_topic']}: check the topic names "
                          f"and QoS (this node subscribes {p['qos_reliability']}; a best-effort publisher never "
                          "reaches a reliable subscription)")
            elif c.thermal == 0 or c.visible == 0:
                missing = p["thermal_topic"] if c.thermal == 0 else p["visible_topic"]
                detail = f"images arrive on one topic only; nothing on {missing} (topic name, QoS, camera running?)"
            else:
                detail = (f"images arrive on both topics but never within sync_slop_s={p['sync_slop_s']} s of each "
                          "other: check the camera clocks/stamps or raise sync_slop_s")
            level = "error" if level == "error" else "warn"
            message = f"no pairs after {waited:.0f} s: {detail}"
            if not self.warned_no_pairs:
                warning, self.warned_no_pairs = message, True
        capture = {}
        if self.writer is not None:
            s = self.writer.stats
            capture = {"capture_written": s.written, "capture_dropped_queue_full": s.dropped_queue_full,
                       "capture_write_errors": s.write_errors, "capture_queue": self.writer.pending,
                       "capture_bytes_used": s.bytes_used}
            if s.write_errors and level == "ok":
                level, message = "warn", f"capture write errors: {s.last_error}"
        header = M.header_at(self.ad, now_ns)
        statuses = [(level, "ms_perception: detector", message, values)]
        if capture:
            statuses.append(("ok" if not capture["capture_write_errors"] else "warn", "ms_perception: capture",
                             f"{capture['capture_written']} records written", capture))
        return M.diagnostic_array(self.ad, header, statuses), warning
