"""Replay reads the bag on a thread ahead of the pipeline (replay.bag.prefetch, issue 16)."""
from __future__ import annotations

import threading

import pytest

from ms_perception.replay.bag import prefetch


def test_prefetch_keeps_the_order_and_raises_where_the_reader_failed():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def broken():
        yield 1
        yield 2
        raise ValueError("damaged at 3")

    got = []
    with pytest.raises(ValueError, match="damaged at 3"):
        for x in prefetch(broken(), depth=1):
            got.append(x)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_closes_the_reader():
    closed = threading.Event()
    produced = []

    def reader():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()           # read_frames closes the bag here

    it = prefetch(reader(), depth=4)
    for x in it:
        if x == 5:
            break
    it.close()
    assert closed.is_set()                         # closed before close() returned
    assert len(produced) <= 5 + 1 + 4 + 1          # bounded read-ahead: the depth, not the whole bag
    assert not any(t.name == "bag-reader" and t.is_alive() for t in threading.enumerate())


def test_replay_with_and_without_the_reader_thread_gives_the_same_report(tmp_path):
    from ms_perception.build import build_pipeline, resolve
    from ms_perception.demo import THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
    from ms_perception.replay.run import replay_bag
    bag, cal, _ = make_demo_bag(tmp_path / "bag", pairs=12, seed=3)
    runs = []
    for threaded in (True, False):
        summ, kept = replay_bag(bag, build_pipeline(resolve({"calibration_file": str(cal), "capture_enabled": False})), VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.02,
                                keep=True, reader_thread=threaded)
        runs.append((summ, kept))
    (a, ka), (b, kb) = runs
    assert a.pairs == b.pairs == 12 and a.complete and b.complete
    assert a.detections == b.detections and a.pairing == b.pairing
    assert [s for s, _ in ka] == [s for s, _ in kb]
    assert [r.inconsistency.score for _, r in ka] == [r.inconsistency.score for _, r in kb]
    assert a.pairs_per_s > 0 and a.pairs_per_s == pytest.approx(a.pairs / a.wall_s, rel=0.01)


def test_replay_at_a_camera_rate_is_paced_and_gives_the_same_results(tmp_path, capsys):
    """``camera_fps`` hands the pipeline one pair per camera period (the robot's arrival rate, for
    latency and capture measured as a node sees them); the results are those of the free run."""
    from ms_perception.build import build_pipeline, resolve
    from ms_perception.cli import main
    from ms_perception.demo import THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
    from ms_perception.replay.run import replay_bag
    bag, cal, _ = make_demo_bag(tmp_path / "bag", pairs=12, seed=3)
    runs = []
    for fps in (None, 20.0):
        runs.append(replay_bag(bag, build_pipeline(resolve({"calibration_file": str(cal), "capture_enabled": False})), VISIBLE_TOPIC,
                               THERMAL_TOPIC, slop_s=0.02, keep=True, camera_fps=fps))
    (free, kf), (paced, kp) = runs
    assert paced.pairs == free.pairs == 12
    assert paced.wall_s >= 11 / 20.0 and paced.pairs_per_s <= 20.0 * 12 / 11
    assert [r.inconsistency.score for _, r in kp] == [r.inconsistency.score for _, r in kf]
    with pytest.raises(ValueError, match="camera_fps"):
        replay_bag(bag, build_pipeline(resolve({"calibration_file": str(cal), "capture_enabled": False})), VISIBLE_TOPIC, THERMAL_TOPIC,
                   camera_fps=0.0)
    assert main(["replay", str(bag), "--calibration", str(cal), "--camera-fps", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--camera-fps -5" in err[0] and "> 0" in err[0]
