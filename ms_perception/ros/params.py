"""Detector node parameters: one declaration table, validation with reasons, and the mapping to
the core's configs. ROS-free (tested without ROS); ``config/detector.yaml`` documents every entry
(a test keeps the two in step).

Parameters marked ``live`` take effect immediately when set on a running node; the others are
read when the node is configured (lifecycle: deactivate, cleanup, configure, activate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ms_perception.core.capture import CAPTURE_SCORES, CapturePolicyConfig
from ms_perception.core.pipeline import PipelineConfig
from ms_perception.core.preprocess import ThermalNormalization
from ms_perception.engines import BACKENDS


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    check: Callable[[Any], str | None] | None = None   # returns the reason a value is rejected
    live: bool = False


def _choice(*options):
    def check(v):
        return None if v in options else f"must be one of {list(options)}, got {v!r}"
    return check


def _range(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    def check(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            return f"must be a number, got {v!r}"
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v}"
        return None
    return check


def _topic(v):
    if not isinstance(v, str) or not v or any(c in v for c in " #+*?") or v.endswith("/") or "//" in v:
        return f"is not a valid ROS topic name: {v!r}"
    return None


def _optional_topic(v):
    return None if v == "" else _topic(v)


def _file_or_empty(v):
    if v and not Path(v).expanduser().exists():
        return f"file not found: {v}"
    return None


def _names(v):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        return f"must be a list of non-empty class names, got {v!r}"
    if len(set(v)) != len(v):
        return "class names must be unique"
    return None


# defaults come from the core configs: one source for the node, replay and the demo
_P, _T, _C = PipelineConfig(), ThermalNormalization(), CapturePolicyConfig()

PARAMS: list[Param] = [
    # model
    Param("model_path", "", "ONNX model or TensorRT engine with a model card; '' = the embedded default "
          "(GAFF three-branch, synthetic data)", _file_or_empty),
    Param("backend", "onnxruntime", f"inference backend: one of {', '.join(BACKENDS)}", _choice(*BACKENDS)),
    Param("engine_cache_dir", "", "backend tensorrt: where engines built from the ONNX are cached "
          "('' = engines/ beside the model)"),
    Param("precision", "fp16", "backend tensorrt: fp32, fp16 or int8 (int8 needs a Q/DQ-quantized ONNX)",
          _choice("fp32", "fp16", "int8")),
    Param("accept_edited_graph", False, "accept a model whose graph no longer matches the card's graph_sha256 (edited on "
          "purpose); records then carry the graph's own hash"),
    Param("class_names", [], "override the card's class names (same count); [] = use the card", _names),
    Param("class_id_format", "name", "Detection2D results[].hypothesis.class_id: the class 'name' or its 'index'",
          _choice("name", "index"), live=True),
    Param("score_threshold", _P.score_threshold, "minimum detection score", _range(0, 1), live=True),
    Param("nms_iou", _P.nms_iou, "class-aware NMS IoU threshold", _range(0, 1, lo_open=True), live=True),
    Param("max_detections", _P.max_detections, "keep at most this many detections per frame", _range(1, 10000), live=True),
    # topics and QoS
    Param("visible_topic", "/camera/visible/image_raw", "visible sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8)",
          _topic),
    Param("thermal_topic", "/camera/thermal/image_raw", "thermal sensor_msgs/Image (mono8, mono16, 16UC1, 32FC1 in "
          "degC)", _topic),
    Param("detections_topic", "detections", "vision_msgs/Detection2DArray output", _topic),
    Param("label_info_topic", "label_info", "vision_msgs/LabelInfo (class map; transient local)", _topic),
    Param("mask_topic", "segmentation/mask", "segmentation models: mono8 class-id mask at the visible size", _topic),
    Param("colored_mask_topic", "segmentation/mask_color", "segmentation models: rgb8 colored mask", _topic),
    Param("inconsistency_topic", "inconsistency", "ms_perception_msgs/Inconsistency output", _topic),
    Param("overlay_topic", "overlay", "rgb8 overlay (boxes, mask, score); built only while someone subscribes",
          _topic),
    Param("qos_reliability", "best_effort", "image subscriptions: best_effort (sensor data, what most camera "
          "drivers publish) or reliable; a mismatch with the publisher yields no callbacks",
          _choice("best_effort", "reliable")),
    Param("qos_depth", 5, "image subscription queue depth", _range(1, 1000)),
    # pairing
    Param("sync_slop_s", 0.05, "approximate-time pairing: max stamp difference (s) of a visible/thermal pair",
          _range(0, 10, lo_open=True)),
    Param("sync_queue_size", 10, "approximate-time pairing: messages kept per topic", _range(1, 1000)),
    # thermal
    Param("thermal_normalization", _T.mode, "thermal to [0, 1]: fixed 'window' or per-frame 'percentile' stretch",
          _choice("window", "percentile"), live=True),
    Param("thermal_celsius_min", _T.celsius_min, "window low end (degC; 16-bit counts through the radiometric scale)",
          _range(-273.15, 2000), live=True),
    Param("thermal_celsius_max", _T.celsius_max, "window high end (degC)", _range(-273.15, 2000), live=True),
    Param("thermal_kelvin_per_count", _T.kelvin_per_count, "16-bit radiometric scale, K per count: 0.01 (TLinear "
          "high resolution, Boson, Lepton 3.5), 0.04 (FLIR low-resolution 16-bit mode), 0.1 (Optris)",
          _range(0, 10, lo_open=True), live=True),
    Param("thermal_offset_kelvin", _T.offset_kelvin, "16-bit radiometric offset, K at count 0 (Optris: 173.15)",
          _range(-1000, 1000), live=True),
    Param("thermal_raw_min", 0.0, "window low end in raw counts, overriding the degC window for 16-bit images "
          "(0 with thermal_raw_max 0 = use the degC window)", _range(0, 65535), live=True),
    Param("thermal_raw_max", 0.0, "window high end in raw counts (0 = use the degC window)", _range(0, 65535),
          live=True),
    Param("thermal_low_percentile", _T.low_percentile, "percentile stretch: low percentile", _range(0, 100), live=True),
    Param("thermal_high_percentile", _T.high_percentile, "percentile stretch: high percentile", _range(0, 100), live=True),
    Param("calibration_file", "", "YAML with the thermal->visible homography (thermal_to_visible.homography)",
          _file_or_empty),
    Param("assume_same_fov", _P.assume_same_fov, "no calibration: the cameras share the field of view and differ only in "
          "resolution"),
    # thermal loss
    Param("thermal_timeout_s", 1.0, "no thermal image for this long = thermal stream lost",
          _range(0, 3600, lo_open=True), live=True),
    Param("thermal_loss_action", "publish_nothing", "on thermal loss: 'fallback_model' (run fallback_model_path "
          "on visible only) or 'publish_nothing' (ERROR diagnostic until it returns)",
          _choice("fallback_model", "publish_nothing"), live=True),
    Param("fallback_model_path", "", "visible-only model (e.g. the RGB-only distilled student) for thermal loss",
          _file_or_empty),
    # capture
    Param("capture_enabled", True, "record uncertain pairs for labeling", live=True),
    Param("capture_dir", "~/ms_perception_capture", "capture root; records go to <capture_dir>/<robot_id>/"),
    Param("robot_id", "robot", "robot identifier stored in each record (sanitized before use in a path)"),
    Param("capture_mode", _C.mode, "'threshold' on the score or 'top_fraction' of a sliding window",
          _choice("threshold", "top_fraction"), live=True),
    Param("capture_score", _C.score, "which per-frame score ranks pairs: 'inconsistency' (the active-learning "
          "paper's image score, mono branches needed), 'detection_inconsistency' (sum of the branch disagreement over "
          "the frame's detections) or 'detection_entropy' (sum of the fused detections' entropies, any detection model)",
          _choice(*CAPTURE_SCORES)),
    Param("capture_threshold", _C.threshold, "mode threshold: the score (bits) at or above which a pair is "
          "recorded; the detection scores are sums over detections and may exceed 1", _range(0), live=True),
    Param("capture_top_fraction", _C.top_fraction, "mode top_fraction: record scores in this top fraction of the window",
          _range(0, 1, lo_open=True), live=True),
    Param("capture_window", _C.window, "mode top_fraction: sliding window length (pairs)", _range(1, 100000), live=True),
    Param("capture_min_interval_s", _C.min_interval_s, "at most one record per this many seconds (stamp time)", _range(0),
          live=True),
    Param("capture_smoothing", _C.smoothing, "EMA weight of the previous smoothed score (0 = none)", _range(0, 1, hi_open=True),
          live=True),
    Param("capture_duplicate_threshold", _C.duplicate_threshold, "skip near-duplicate scenes: mean abs difference of 32x24 gray "
          "thumbnails (0-255) below this", _range(0, 255), live=True),
    Param("capture_quota_mb", 2048.0, "disk quota; the lowest-score, oldest records are evicted first",
          _range(1, 1e9)),
    Param("capture_queue_size", 8, "records waiting for the writer thread; more are dropped and counted",
          _range(1, 10000)),
    # outputs
    Param("publish_overlay", True, "publish the overlay image (only while it has subscribers)", live=True),
    Param("publish_colored_mask", False, "segmentation models: also publish the rgb8 colored mask", live=True),
    Param("diagnostics_period_s", 1.0, "diagnostics publishing period", _range(0.05, 3600)),
    Param("no_pairs_warning_s", 5.0, "warn when no pair has arrived this long after activation (topics, QoS)",
          _range(0, 3600, lo_open=True)),
]
BY_NAME = {p.name: p for p in PARAMS}
DEFAULTS = {p.name: p.default for p in PARAMS}


def _same_type(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, list):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def coerce(name: str, value):
    """A parameter value as rclpy delivers it -> the plain Python value the logic uses: arrays and tuples
    become lists, and an integer for a float parameter (YAML ``score_threshold: 1``) becomes a float.
    Anything else is returned as it is, for ``check_value`` to accept or refuse with a reason."""
    if isinstance(value, (tuple, list)) or type(value).__name__ == "array":
        return list(value)
    p = BY_NAME.get(name)
    if p is not None and isinstance(p.default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_value(name: str, value) -> str | None:
    """The reason ``value`` is rejected for parameter ``name``, or None if it is acceptable."""
    p = BY_NAME.get(name)
    if p is None:
        return f"unknown parameter {name!r}; known: {sorted(BY_NAME)}"
    if not _same_type(p.default, value):
        return f"{name} must be a {type(p.default).__name__}, got {type(value).__name__} {value!r}"
    reason = p.check(value) if p.check else None
    return f"{name} {reason}" if reason else None


def check_all(values: dict) -> list[str]:
    """Every problem with a full parameter set, including the ones between parameters."""
    problems = [r for n, v in values.items() if (r := check_value(n, v))]
    v = {**DEFAULTS, **values}
    if (v["thermal_raw_min"] or v["thermal_raw_max"]) and v["thermal_raw_max"] <= v["thermal_raw_min"]:
        problems.append("thermal_raw_max must be greater than thermal_raw_min (or both 0: use the degC window)")
    if v["thermal_celsius_max"] <= v["thermal_celsius_min"]:
        problems.append("thermal_celsius_max must be greater than thermal_celsius_min")
    if v["thermal_high_percentile"] <= v["thermal_low_percentile"]:
        problems.append("thermal_high_percentile must be greater than thermal_low_percentile")
    if v["thermal_loss_action"] == "fallback_model" and not v["fallback_model_path"]:
        problems.append("thermal_loss_action fallback_model needs fallback_model_path (a visible-only model)")
    return problems


def pipeline_config(v: dict) -> PipelineConfig:
    thermal = ThermalNormalization(
        mode=v["thermal_normalization"], celsius_min=float(v["thermal_celsius_min"]),
        celsius_max=float(v["thermal_celsius_max"]), kelvin_per_count=float(v["thermal_kelvin_per_count"]),
        offset_kelvin=float(v["thermal_offset_kelvin"]),
        raw_min=float(v["thermal_raw_min"]) if (v["thermal_raw_min"] or v["thermal_raw_max"]) else None,
        raw_max=float(v["thermal_raw_max"]) if (v["thermal_raw_min"] or v["thermal_raw_max"]) else None,
        low_percentile=float(v["thermal_low_percentile"]), high_percentile=float(v["thermal_high_percentile"]))
    return PipelineConfig(score_threshold=float(v["score_threshold"]), nms_iou=float(v["nms_iou"]),
                          max_detections=int(v["max_detections"]), thermal=thermal,
                          calibration=str(Path(v["calibration_file"]).expanduser()) if v["calibration_file"] else None,
                          assume_same_fov=bool(v["assume_same_fov"]))


def capture_config(v: dict) -> CapturePolicyConfig:
    return CapturePolicyConfig(mode=v["capture_mode"], threshold=float(v["capture_threshold"]),
                               top_fraction=float(v["capture_top_fraction"]), window=int(v["capture_window"]),
                               min_interval_s=float(v["capture_min_interval_s"]),
                               smoothing=float(v["capture_smoothing"]),
                               duplicate_threshold=float(v["capture_duplicate_threshold"]),
                               score=v["capture_score"])


def render_yaml() -> str:
    """config/detector.yaml: every parameter with its default and description."""
    import json
    lines = ["# Parameters of the ms_perception detector node (ms_perception/ros/params.py is the source;",
             "# test/ros/test_params.py checks this file against it). (live) = changeable on a running node;",
             "# the rest take effect at the next configure. '/**' matches the node in any namespace.",
             "/**:", "  ros__parameters:"]
    for p in PARAMS:
        lines.append(f"    # {p.description}{' (live)' if p.live else ''}")
        val = json.dumps(p.default) if not isinstance(p.default, float) else repr(round(p.default, 6))
        if isinstance(p.default, bool):
            val = "true" if p.default else "false"
        if isinstance(p.default, list) and not p.default:
            # rcl's YAML parser rejects empty sequences: leave the entry commented out
            lines.append(f"    # {p.name}: [person, bicycle, car]")
        else:
            lines.append(f"    {p.name}: {val}")
    return "\n".join(lines) + "\n"
