"""Building the node's output messages, for rclpy message classes or rosbags dataclasses alike.

The two differ in how messages are constructed (rosbags needs every field; rclpy accepts
keywords for any subset) and in how primitive arrays and ``byte`` fields are held (rosbags:
numpy arrays and ints; rclpy: ``array.array``/lists and 1-byte ``bytes``). Builders below pass
every field by keyword and route arrays through the adapter, so one code path serves both; the
tests serialize what it builds to CDR with the real definitions.
"""
from __future__ import annotations

import array
import importlib
from abc import ABC, abstractmethod

import numpy as np

from ms_perception.core.postprocess import Detections

DETECTION_ARRAY = "vision_msgs/msg/Detection2DArray"


class MessageAdapter(ABC):
    """How one message library builds messages: the class of a type, primitive arrays, bytes."""

    @abstractmethod
    def cls(self, name: str):
        """The message class of ``pkg/msg/Type``."""

    def new(self, type_name: str, /, **fields):
        return self.cls(type_name)(**fields)

    @abstractmethod
    def array(self, values, dtype: str):
        """A primitive array field of ``dtype`` (uint8, float32, float64)."""

    @abstractmethod
    def byte(self, value: int):
        """A ``byte`` field."""


class RclpyAdapter(MessageAdapter):
    """Real ROS 2 Python message classes (``vision_msgs.msg.Detection2D`` ...)."""
    _CODES = {"uint8": "B", "float32": "f", "float64": "d", "int32": "i", "uint32": "I"}

    def __init__(self):
        self._cache: dict = {}

    def cls(self, name: str):
        c = self._cache.get(name)
        if c is None:
            pkg, kind, typ = name.split("/")
            c = self._cache[name] = getattr(importlib.import_module(f"{pkg}.{kind}"), typ)
        return c

    def array(self, values, dtype: str):
        if dtype == "uint8":
            return array.array("B", np.ascontiguousarray(values, np.uint8).tobytes())
        if dtype == "float64":
            return [float(x) for x in np.asarray(values, np.float64).ravel()]
        return array.array(self._CODES[dtype], np.asarray(values, dtype).ravel().tolist())

    def byte(self, value: int):
        return bytes([value])


class TypestoreAdapter(MessageAdapter):
    """rosbags typestore dataclasses (serializable to CDR with the same definitions as ROS 2)."""

    def __init__(self, typestore):
        self.ts = typestore

    def cls(self, name: str):
        return self.ts.types[name]

    def array(self, values, dtype: str):
        return np.ascontiguousarray(values, dtype).ravel()

    def byte(self, value: int):
        return int(value)


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def header_at(ad: MessageAdapter, t_ns: int, frame_id: str = ""):
    return ad.new("std_msgs/msg/Header", stamp=ad.new("builtin_interfaces/msg/Time", sec=int(t_ns // 10**9),
                                                      nanosec=int(t_ns % 10**9)), frame_id=frame_id)


def _identity_pose(ad: MessageAdapter):
    pose = ad.new("geometry_msgs/msg/Pose", position=ad.new("geometry_msgs/msg/Point", x=0.0, y=0.0, z=0.0),
                  orientation=ad.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0))
    return ad.new("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=ad.array(np.zeros(36), "float64"))


def detection_array(ad: MessageAdapter, header, det: Detections, class_names: list[str], class_id_format="name"):
    """vision_msgs 4.x Detection2DArray; boxes are visible-image pixels (center + size)."""
    dets = []
    for box, score, label in zip(det.boxes, det.scores, det.labels):
        x0, y0, x1, y1 = (float(v) for v in box)
        cid = class_names[int(label)] if class_id_format == "name" else str(int(label))
        hyp = ad.new("vision_msgs/msg/ObjectHypothesisWithPose",
                     hypothesis=ad.new("vision_msgs/msg/ObjectHypothesis", class_id=cid, score=float(score)),
                     pose=_identity_pose(ad))
        center = ad.new("vision_msgs/msg/Pose2D", position=ad.new("vision_msgs/msg/Point2D", x=(x0 + x1) / 2,
                                                                   y=(y0 + y1) / 2), theta=0.0)
        bbox = ad.new("vision_msgs/msg/BoundingBox2D", center=center, size_x=x1 - x0, size_y=y1 - y0)
        dets.append(ad.new("vision_msgs/msg/Detection2D", header=header, results=[hyp], bbox=bbox, id=""))
    return ad.new(DETECTION_ARRAY, header=header, detections=dets)


def label_info(ad: MessageAdapter, header, class_names: list[str], threshold: float):
    classes = [ad.new("vision_msgs/msg/VisionClass", class_id=i, class_name=n) for i, n in enumerate(class_names)]
    return ad.new("vision_msgs/msg/LabelInfo", header=header, class_map=classes, threshold=float(threshold))


def image(ad: MessageAdapter, header, data: np.ndarray, encoding: str):
    a = np.ascontiguousarray(data)
    h, w = a.shape[:2]
    ch = 1 if a.ndim == 2 else a.shape[2]
    return ad.new("sensor_msgs/msg/Image", header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                  step=w * ch * a.dtype.itemsize, data=ad.array(a.view(np.uint8).ravel(), "uint8"))


def inconsistency(ad: MessageAdapter, header, result, card, class_names, model_hash: str, skew_ns: int):
    inc = result.inconsistency
    return ad.new("ms_perception_msgs/msg/Inconsistency", header=header,
                  score=float(inc.score) if inc is not None else float("nan"),
                  per_level=ad.array(inc.per_level if inc is not None else [], "float32"),
                  per_class=ad.array(inc.per_class if inc is not None else [], "float32"),
                  class_names=list(class_names), model_name=card.name, model_hash=model_hash,
                  captured=bool(result.captured), capture_reason=result.capture_reason, pair_skew=skew_ns / 1e9)


LEVELS = {"ok": 0, "warn": 1, "error": 2, "stale": 3}


def diagnostic_array(ad: MessageAdapter, header, statuses: list[tuple[str, str, str, dict]]):
    """statuses: (level ok|warn|error|stale, name, message, key/values)."""
    out = []
    for level, name, message, values in statuses:
        kv = [ad.new("diagnostic_msgs/msg/KeyValue", key=str(k), value=str(v)) for k, v in values.items()]
        out.append(ad.new("diagnostic_msgs/msg/DiagnosticStatus", level=ad.byte(LEVELS[level]), name=name,
                          message=message, hardware_id="", values=kv))
    return ad.new("diagnostic_msgs/msg/DiagnosticArray", header=header, status=out)
