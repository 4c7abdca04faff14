"""Pairing semantics = message_filters.ApproximateTimeSynchronizer (two inputs)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ms_perception.core.frames import Frame
from ms_perception.core.pairing import ApproximateTimePairer

MS = 1_000_000


def f(t_ms, tag=""):
    return Frame(np.zeros((1, 1), np.uint8), int(t_ms * MS), "mono8", tag)


def test_pairs_nearest_within_slop_and_removes_both():
    p = ApproximateTimePairer(slop_s=0.02, queue_size=5)
    assert p.add("thermal", f(100)) is None
    assert p.add("thermal", f(110)) is None
    pair = p.add("visible", f(107))
    assert pair.visible.stamp_ns == 107 * MS and pair.thermal.stamp_ns == 110 * MS  # nearest
    assert pair.skew_ns == 3 * MS
    assert list(p.queues["thermal"]) == [100 * MS] and p.queues["visible"] == {}


def test_slop_is_strict():
    p = ApproximateTimePairer(slop_s=0.02)
    p.add("thermal", f(100))
    assert p.add("visible", f(120)) is None  # |Δ| == slop: not paired (max - min < slop)
    assert p.add("visible", f(119.999)) is not None


def test_queue_overflow_drops_oldest_and_counts():
    p = ApproximateTimePairer(slop_s=0.001, queue_size=2)
    for t in (0, 10, 20):
        p.add("visible", f(t))
    assert sorted(p.queues["visible"]) == [10 * MS, 20 * MS]
    assert p.stats.dropped["visible"] == 1
    assert p.flush() == {"visible": 2, "thermal": 0} and p.stats.unpaired == 3


def test_duplicate_stamp_overwrites():
    p = ApproximateTimePairer()
    p.add("visible", f(5, "a"))
    p.add("visible", f(5, "b"))
    assert p.stats.overwritten["visible"] == 1
    assert p.add("thermal", f(5)).visible.frame_id == "b"


def test_bad_arguments():
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimePairer(slop_s=0)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimePairer(queue_size=0)
    with pytest.raises(ValueError, match="unknown stream"):
        ApproximateTimePairer().add("depth", f(0))


def reference_sync(events, slop_ns, queue_size):
    """An independent transcription of message_filters' ApproximateTimeSynchronizer.add (2 inputs)."""
    queues = [{}, {}]
    out = []
    for idx, t in events:
        q = queues[idx]
        q[t] = t
        while len(q) > queue_size:
            del q[min(q)]
        other = queues[1 - idx]
        cands = sorted([(s, abs(s - t)) for s in other if abs(s - t) <= slop_ns], key=lambda x: x[1])
        for s, _ in cands:
            vv = [t, s]
            if max(vv) - min(vv) < slop_ns and s in other and t in q:
                out.append((t, s) if idx == 0 else (s, t))
                del q[t]
                del other[s]
                break
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 400)), max_size=60),
       st.integers(1, 60), st.integers(1, 6))
def test_fuzz_against_reference(events, slop_ms, queue_size):
    events = [(i, t * MS) for i, t in events]
    p = ApproximateTimePairer(slop_s=slop_ms / 1000, queue_size=queue_size)
    got = []
    for i, t in events:
        pair = p.add(("visible", "thermal")[i], Frame(np.zeros((1, 1), np.uint8), t, "mono8"))
        if pair is not None:
            got.append((pair.visible.stamp_ns, pair.thermal.stamp_ns))
    assert got == reference_sync(events, slop_ms * MS, queue_size)
    # every pair respects the slop; counts add up
    assert all(abs(a - b) < slop_ms * MS for a, b in got)
    p.flush()
    assert p.stats.pairs == len(got)
    # every received frame is paired, dropped (evicted or left over) or overwritten by a duplicate stamp
    assert sum(p.stats.received.values()) == 2 * len(got) + p.stats.unpaired + sum(p.stats.overwritten.values())
