"""Frames and frame pairs: what the pipeline consumes (built from ROS Image messages or bags)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One camera image as delivered.

    data: (H, W) or (H, W, C) array in the message's encoding (no conversion yet);
    stamp_ns: header stamp in nanoseconds; encoding: the sensor_msgs/Image encoding string.
    """
    data: np.ndarray
    stamp_ns: int
    encoding: str
    frame_id: str = ""

    @property
    def shape_hw(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.data.shape[1])


@dataclass
class FramePair:
    visible: Frame
    thermal: Frame | None
    meta: dict = field(default_factory=dict)

    @property
    def stamp_ns(self) -> int:
        """The pair's stamp is the visible image's (outputs use the visible header)."""
        return self.visible.stamp_ns

    @property
    def skew_ns(self) -> int:
        return 0 if self.thermal is None else self.thermal.stamp_ns - self.visible.stamp_ns
