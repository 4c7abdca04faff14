"""Approximate-time pairing of the visible and thermal streams.

The semantics are those of ``message_filters.ApproximateTimeSynchronizer`` (ROS 2 Python)
for two inputs, so replay pairs exactly what the node pairs:

1. Each stream keeps a queue keyed by stamp (ns). A frame with a stamp already queued on
   its stream replaces the queued one (counted as ``overwritten``).
2. When a queue holds more than ``queue_size`` frames, the oldest stamp is dropped
   (counted as ``dropped_<stream>``: it was never paired).
3. On each arrival, the other stream's queued frames with |Δt| <= slop are candidates,
   nearest first; the nearest one is paired if |Δt| < slop (strictly), and both frames
   leave their queues. Otherwise the arrival waits in its queue.
Frames that are still queued at the end of a replay are reported by :meth:`flush` as
unpaired.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ms_perception.core.frames import Frame, FramePair

STREAMS = ("visible", "thermal")


@dataclass
class PairingStats:
    pairs: int = 0
    dropped: dict = field(default_factory=lambda: {s: 0 for s in STREAMS})
    overwritten: dict = field(default_factory=lambda: {s: 0 for s in STREAMS})
    received: dict = field(default_factory=lambda: {s: 0 for s in STREAMS})

    @property
    def unpaired(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "received": dict(self.received), "dropped": dict(self.dropped),
                "overwritten": dict(self.overwritten), "unpaired": self.unpaired}


class ApproximateTimePairer:
    def __init__(self, slop_s: float = 0.05, queue_size: int = 10):
        if not slop_s > 0:
            raise ValueError(f"slop must be > 0 seconds, got {slop_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = queue_size
        self.queues: dict[str, dict[int, Frame]] = {s: {} for s in STREAMS}
        self.stats = PairingStats()

    def add(self, stream: str, frame: Frame) -> FramePair | None:
        """Queue ``frame`` on ``stream`` ("visible" or "thermal"); return a pair if one completes."""
        if stream not in self.queues:
            raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
        q = self.queues[stream]
        self.stats.received[stream] += 1
        t = int(frame.stamp_ns)
        if t in q:
            self.stats.overwritten[stream] += 1
        q[t] = frame
        while len(q) > self.queue_size:
            del q[min(q)]
            self.stats.dropped[stream] += 1
        if t not in q:  # the arrival itself was the oldest and got evicted
            return None
        other_name = STREAMS[1 - STREAMS.index(stream)]
        other = self.queues[other_name]
        best = None
        for s in other:  # insertion order, like the dict iteration in message_filters; stable sort below
            d = abs(s - t)
            if d <= self.slop_ns and (best is None or d < best[1]):
                best = (s, d)
        if best is None or best[1] >= self.slop_ns:
            return None
        mate = other.pop(best[0])
        mine = q.pop(t)
        self.stats.pairs += 1
        vis, th = (mine, mate) if stream == "visible" else (mate, mine)
        return FramePair(vis, th)

    def flush(self) -> dict[str, int]:
        """Count (and clear) frames still waiting; they are unpaired at the end of a replay."""
        left = {s: len(q) for s, q in self.queues.items()}
        for s, n in left.items():
            self.stats.dropped[s] += n
            self.queues[s].clear()
        return left
