"""Capture policy and the atomic, quota-bounded, never-blocking writer."""
import errno
import json
import os

import cv2
import numpy as np
import pytest

from ms_perception.core import capture as cap
from ms_perception.core.capture import CapturePolicy, CapturePolicyConfig, CaptureRecord, CaptureWriter, sanitize_id

S = 1_000_000_000


def scene(seed):
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_policy_threshold_interval_and_duplicates():
    p = CapturePolicy(CapturePolicyConfig(threshold=0.5, min_interval_s=2.0, duplicate_threshold=4.0))
    assert p.decide(0, 0.4, scene(0)) == (False, "below_threshold")
    assert p.decide(1 * S, 0.6, scene(0)) == (True, "captured")
    assert p.decide(2 * S, 0.9, scene(1)) == (False, "min_interval")      # 1 s after the capture
    assert p.decide(4 * S, 0.9, scene(0)) == (False, "near_duplicate")    # same scene again
    assert p.decide(6 * S, 0.9, scene(2)) == (True, "captured")
    assert p.reasons == {"below_threshold": 1, "captured": 2, "min_interval": 1, "near_duplicate": 1}


def test_thumbnail_is_the_mean_of_each_cell_with_area_weights():
    # 48x64 -> 24x32: each cell is a 2x2 block, its mean by hand
    img = np.arange(48 * 64, dtype=np.float32).reshape(48, 64) % 251
    want = img.reshape(24, 2, 32, 2).mean(axis=(1, 3))
    assert np.allclose(cap.gray_thumbnail(img.astype(np.uint8)), want, atol=1e-4)
    # 512 rows -> 24 cells of 21 1/3 rows: cell 0 holds rows 0..20 whole and a third of row 21;
    # with a row's value = its index, its mean is (0+...+20 + 21/3) / (21 1/3) = 217 / 21.333 = 10.171875
    rows = np.repeat(np.arange(512, dtype=np.float32)[:, None], 640, 1) % 256
    t = cap.gray_thumbnail(rows.astype(np.uint8))
    assert t.shape == (24, 32) and t.dtype == np.float32
    assert abs(float(t[0, 0]) - 10.171875) < 1e-3 and np.ptp(t[0]) < 1e-4
    # the two passes are OpenCV's one-pass area resize (which took 1 ms at 512 rows), and an RGB
    # frame goes through the gray conversion first
    rgb = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (512, 640, 3), dtype=np.uint8), (0, 0), 3)
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    one_pass = cv2.resize(g, (32, 24), interpolation=cv2.INTER_AREA)
    assert np.abs(cap.gray_thumbnail(rgb) - one_pass).max() < 1e-3
    # a frame smaller than the thumbnail is enlarged as before
    small = np.full((10, 12), 7, np.uint8)
    assert np.allclose(cap.gray_thumbnail(small), 7.0)


def test_policy_top_fraction_and_smoothing():
    p = CapturePolicy(CapturePolicyConfig(mode="top_fraction", top_fraction=0.1, window=20, min_interval_s=0,
                                          duplicate_threshold=0))
    hits = [p.decide(i * S, float(s))[0] for i, s in enumerate([0.1] * 15 + [0.9] + [0.1] * 4)]
    assert hits.index(True) == 15 and sum(hits) == 1
    q = CapturePolicy(CapturePolicyConfig(threshold=0.5, smoothing=0.5, min_interval_s=0))
    assert q.decide(0, 0.0)[0] is False
    assert q.decide(1, 0.8)[0] is False   # smoothed 0.4
    assert q.decide(2, 0.8)[0] is True    # smoothed 0.6
    with pytest.raises(ValueError, match="mode"):
        CapturePolicyConfig(mode="always")


def record(stamp, score, thermal=None):
    t = thermal if thermal is not None else np.full((12, 16), 30000 + stamp % 7, np.uint16)
    return CaptureRecord(stamp, score, scene(stamp), t, "mono16", stamp + 5, {"detections": []}, {"k": 1})


def test_top_fraction_is_the_sorted_window_rule_on_streams_with_ties():
    """The decision counts the recent scores >= s instead of sorting the window: the same decisions
    as 'strictly above the (k+1)-th largest' on random streams full of ties."""
    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(20):
        cfg = CapturePolicyConfig(mode="top_fraction", top_fraction=float(rng.choice([0.05, 0.1, 0.25, 1.0])),
                                  window=int(rng.choice([5, 20, 50])), min_interval_s=0.0, duplicate_threshold=0.0)
        p = CapturePolicy(cfg)
        recent = []
        for i, s in enumerate(rng.integers(0, 6, 120) / 5.0):
            recent = (recent + [s])[-cfg.window:]
            k = max(1, int(np.ceil(cfg.top_fraction * len(recent))))
            desc = sorted(recent, reverse=True)
            want = len(recent) >= min(cfg.window, 10) and len(desc) > k and s > desc[k]
            assert p.decide(i, float(s))[0] == want, (trial, i)
            hits += want
    assert 50 < hits < 1500      # both outcomes are exercised


def test_writer_writes_atomic_records_with_lossless_thermal(tmp_path):
    w = CaptureWriter(tmp_path, robot_id="../robot 7/..", model_hash="abc")
    thermal = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300
    assert w.submit(record(10, 0.5, thermal))
    w.close()
    assert sanitize_id("../robot 7/..") == "_robot_7_.." and w.dir.parent == tmp_path
    (rec_dir,) = [p for p in w.dir.iterdir() if p.is_dir()]
    meta = json.loads((rec_dir / "record.json").read_text())
    assert meta["robot_id"] == w.robot_id and meta["model_hash"] == "abc" and meta["thermal_stamp_ns"] == 15
    back = cv2.imread(str(rec_dir / "thermal.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, thermal)
    vis = cv2.cvtColor(cv2.imread(str(rec_dir / "visible.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(vis, scene(10))
    lines = (w.dir / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [rec_dir.name]
    assert w.stats.written == 1 and w.stats.bytes_used == sum(f.stat().st_size for f in rec_dir.iterdir())


def test_quota_evicts_lowest_score_oldest_first_and_skips_worse_records(tmp_path):
    probe = CaptureWriter(tmp_path / "probe")
    size = sum(len(b) for b in probe._encode(record(1, 0.1), "x").values())
    probe.close()
    w = CaptureWriter(tmp_path / "q", quota_bytes=int(size * 3.5))
    for stamp, score in [(1, 0.3), (2, 0.9), (3, 0.3), (4, 0.5)]:
        w.submit(record(stamp, score))
    w.submit(record(5, 0.1))  # would need to evict better records: skipped
    w.close()
    kept = sorted(json.loads(x)["stamp_ns"] for x in (w.dir / "manifest.jsonl").read_text().splitlines())
    assert kept == [2, 3, 4]  # stamp 1 (score .3, oldest) evicted first
    assert w.stats.evicted == 1 and w.stats.quota_skipped == 1
    assert sorted(p.name for p in w.dir.iterdir() if p.is_dir()) == sorted(
        json.loads(x)["id"] for x in (w.dir / "manifest.jsonl").read_text().splitlines())
    assert sum(f.stat().st_size for d in w.dir.iterdir() if d.is_dir() for f in d.iterdir()) <= w.quota


def test_the_quota_evicts_by_the_score_the_policy_ranked_by(tmp_path):
    """A record captured by another score than the image inconsistency (capture_score) carries that
    score as its rank; the quota evicts by the rank, across a restart and from record.json alone."""
    probe = CaptureWriter(tmp_path / "probe")
    size = sum(len(b) for b in probe._encode(record(1, 0.1), "x").values())
    probe.close()

    def ranked(stamp, score, rank):
        r = record(stamp, score)
        r.rank = rank
        return r
    w = CaptureWriter(tmp_path / "q", quota_bytes=int(size * 2.5))
    # stamp 1: high inconsistency, low rank; stamp 2: the other way round
    w.submit(ranked(1, 0.9, 0.1))
    w.submit(ranked(2, 0.1, 0.9))
    w.close()
    entries = [json.loads(x) for x in (w.dir / "manifest.jsonl").read_text().splitlines()]
    assert [(e["score"], e["rank"]) for e in entries] == [(0.9, 0.1), (0.1, 0.9)]
    # a restart: the new record (rank 0.5) evicts the lowest rank (stamp 1), not the lowest score
    (w.dir / "manifest.jsonl").unlink()       # and the entries come back from each record.json
    w2 = CaptureWriter(tmp_path / "q", quota_bytes=int(size * 2.5))
    assert w2.stats.recovered == 2
    w2.submit(ranked(3, 0.05, 0.5))
    w2.submit(ranked(4, 0.95, 0.2))            # would evict rank 0.5 or 0.9: skipped
    w2.close()
    kept = sorted(json.loads(x)["stamp_ns"] for x in (w2.dir / "manifest.jsonl").read_text().splitlines())
    assert kept == [2, 3] and w2.stats.evicted == 1 and w2.stats.quota_skipped == 1
    # a record without a rank ranks by its score, as before
    assert record(1, 0.4).rank_score == 0.4 and ranked(1, 0.4, 0.7).rank_score == 0.7


def test_full_disk_leaves_no_partial_record_and_keeps_going(tmp_path, monkeypatch):
    w = CaptureWriter(tmp_path)
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # second file of the first record: the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(cap.os, "fsync", failing_fsync)
    w.submit(record(1, 0.5))
    w.submit(record(2, 0.6))
    w.close()
    dirs = [p.name for p in w.dir.iterdir() if p.is_dir()]
    assert len(dirs) == 1 and not any(d.startswith(".tmp") for d in dirs)
    assert w.stats.write_errors == 1 and "No space left" in w.stats.last_error and w.stats.written == 1
    assert w.stats.failed_by_errno == {"ENOSPC": 1}
    assert "decided 2, written 1, dropped (queue full) 0, failed 1 (ENOSPC 1), quota-skipped 0" in w.summary_line()
    assert [json.loads(x)["stamp_ns"] for x in (w.dir / "manifest.jsonl").read_text().splitlines()] == [2]


def test_submit_never_blocks_and_counts_drops(tmp_path, monkeypatch):
    import threading
    gate = threading.Event()
    w = CaptureWriter(tmp_path, queue_size=2)
    real = w._write
    monkeypatch.setattr(w, "_write", lambda rec: (gate.wait(5), real(rec)))
    results = [w.submit(record(i, 0.5)) for i in range(6)]  # writer stuck on the first one
    assert results.count(False) >= 3 and w.stats.dropped_queue_full == results.count(False)
    gate.set()
    w.close()
    assert w.stats.written == 6 - w.stats.dropped_queue_full


def test_restart_reads_manifest_and_cleans_temp(tmp_path):
    w = CaptureWriter(tmp_path, robot_id="r")
    w.submit(record(1, 0.5))
    w.close()
    (w.dir / ".tmp-junk").mkdir()
    w2 = CaptureWriter(tmp_path, robot_id="r")
    w2.close()
    assert len(w2.entries) == 1 and not (w.dir / ".tmp-junk").exists() and w2.stats.bytes_used > 0


def test_record_ids_are_unique_across_restarts_into_the_same_folder(tmp_path):
    """Before: ids restarted at 1 every run, so the same stamps replayed again collided ("Directory not
    empty") and those records were lost."""
    for run in range(2):
        w = CaptureWriter(tmp_path, robot_id="r")
        for stamp in (1, 2, 3):
            assert w.submit(record(stamp, 0.5))
        w.close()
        assert w.stats.write_errors == 0 and w.stats.written == 3, w.stats.last_error
    ids = [json.loads(line)["id"] for line in (w.dir / cap.MANIFEST).read_text().splitlines()]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert sorted(p.name for p in w.dir.iterdir() if p.is_dir()) == sorted(ids)


def test_start_reconciles_records_the_manifest_lacks_after_a_kill(tmp_path):
    """State after a kill -9 between a record's rename and the manifest rewrite: the record is complete on
    disk, the manifest lacks it, and the manifest's temporary file is left behind."""
    w = CaptureWriter(tmp_path, robot_id="r")
    for stamp in (1, 2, 3):
        w.submit(record(stamp, 0.1 * stamp))
    w.close()
    manifest = w.dir / cap.MANIFEST
    lines = manifest.read_text().splitlines()
    lost = json.loads(lines[1])
    manifest.write_text("\n".join([lines[0], lines[2]]) + "\n")
    (w.dir / (cap.MANIFEST + ".tmp")).write_text(lines[0][:20])       # torn temporary
    broken = w.dir / "00000000000000000009_deadbeef000001"               # a folder that is not a record
    broken.mkdir()
    (broken / "record.json").write_text("{")
    w2 = CaptureWriter(tmp_path, robot_id="r")
    w2.close()
    assert w2.stats.recovered == 1 and w2.stats.unreadable_records == 1
    assert [e["id"] for e in w2.entries] == [json.loads(x)["id"] for x in lines]
    again = {e["id"]: e for e in w2.entries}[lost["id"]]
    assert again["bytes"] == lost["bytes"] and again["score"] == pytest.approx(lost["score"])
    assert not (w.dir / (cap.MANIFEST + ".tmp")).exists()
    assert len(manifest.read_text().splitlines()) == 3                   # written back
    assert w2.stats.bytes_used == sum(json.loads(x)["bytes"] for x in lines)


def test_bad_manifest_lines_are_skipped_counted_and_named(tmp_path):
    w = CaptureWriter(tmp_path, robot_id="r")
    w.submit(record(1, 0.5))
    w.close()
    manifest = w.dir / cap.MANIFEST
    good = manifest.read_text()
    manifest.write_text("{}\nnull\n" + good + "[1, 2]\n{\"id\": 5}\n")
    w2 = CaptureWriter(tmp_path, robot_id="r")   # before: a traceback on `{}` / `null`
    w2.close()
    assert w2.stats.manifest_bad_lines == 4 and "line 1, 2, 4, 5" in w2.stats.last_error
    assert len(w2.entries) == 1 and w2.stats.recovered == 0
    assert manifest.read_text() == good                                   # rewritten without the bad lines


@pytest.mark.parametrize("kw", [{"quota_bytes": -1}, {"quota_bytes": 0}, {"queue_size": 0}])
def test_invalid_capture_settings_are_refused(tmp_path, kw):
    with pytest.raises(ValueError, match="must be"):
        CaptureWriter(tmp_path, robot_id="r", **kw)


def test_replay_cli_reports_every_capture_outcome_and_refuses_an_unwritable_folder(tmp_path, capsys):
    from ms_perception.cli import main
    from test_replay_faults import _write
    bag = _write(tmp_path / "bag", 3, vis_hw=(600, 800))   # noise images: a record is over 1 MB
    (tmp_path / "file").write_text("x")
    rc = main(["replay", str(bag), "--assume-same-fov", "--capture-dir", str(tmp_path / "file" / "cap")])
    io = capsys.readouterr()
    assert rc == 2 and "--capture-dir" in io.err and "choose a writable folder" in io.err and io.out == ""
    rc = main(["replay", str(bag), "--assume-same-fov", "--capture-dir", str(tmp_path / "cap"), "--capture-threshold",
               "0", "--capture-min-interval", "0", "--capture-quota-mb", "1",
               "--param", "capture_duplicate_threshold=0"])   # noise thumbnails all look alike
    io = capsys.readouterr()
    assert rc == 0
    assert "capture: decided 3, written 0, dropped (queue full) 0, failed 0, quota-skipped 3" in io.out
    c = json.loads(io.out.strip().splitlines()[-1])["capture"]
    assert (c["submitted"], c["written"], c["quota_skipped"], c["write_errors"]) == (3, 0, 3, 0)


@pytest.mark.skipif(not hasattr(os, "getpriority") or not os.path.exists("/proc/self/task"), reason="Linux thread nice")
def test_the_writer_thread_runs_at_a_lower_priority_than_the_pipeline(tmp_path):
    """Encoding PNGs must not take a core from the engine: the writer thread lowers its own priority
    (SCHED_IDLE, else nice; bench: capture on/off p99 per-pair time), the calling thread keeps its own."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    w = CaptureWriter(tmp_path, robot_id="r", model_hash="abc")
    try:
        assert w.submit(record(10, 0.5, np.zeros((12, 16), np.uint16)))
        import time
        for _ in range(500):          # the thread sets its priority before it writes its first record
            if w.stats.written:
                break
            time.sleep(0.01)
        tid = w._thread.native_id
        assert w.background_priority in ("idle", "nice")
        if w.background_priority == "idle":   # Linux: runs only where a core is otherwise idle
            assert os.sched_getscheduler(tid) == os.SCHED_IDLE
        else:
            assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, before + cap.WRITER_NICE)
        assert os.getpriority(os.PRIO_PROCESS, 0) == before
        if hasattr(os, "sched_getscheduler"):
            assert os.sched_getscheduler(0) != os.SCHED_IDLE      # the pipeline's thread keeps its own
    finally:
        w.close()
    assert w.stats.written == 1


def test_a_starved_writer_at_close_counts_what_it_did_not_write(tmp_path):
    """A busy machine starves the idle-priority writer (seen: 3 of 12 records neither written nor
    counted when replay's close() gave up). close() waits ``timeout``, then takes the rest off the
    queue and counts it with the record still being written: the counts add up to what was decided."""
    import threading
    gate = threading.Event()
    w = CaptureWriter(tmp_path, robot_id="r", model_hash="abc")
    real = w._write

    def slow(rec):
        gate.wait(10)
        real(rec)
    w._write = slow
    for i in range(3):
        assert w.submit(record(10 + i, 0.5, np.zeros((12, 16), np.uint16)))
    w.close(timeout=0.3)
    s = w.stats
    assert (s.written, s.in_flight_at_close, s.dropped_at_close, s.dropped_queue_full) == (0, 1, 2, 0)
    assert s.written + s.in_flight_at_close + s.dropped_at_close + s.dropped_queue_full + s.write_errors == s.submitted
    assert "not written at shutdown 3" in w.summary_line()
    gate.set()                      # the record in flight completes, then the thread stops
    w._thread.join(5)
    assert not w._thread.is_alive() and w.stats.written == 1


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling policies")
def test_close_gives_the_writer_back_the_normal_priority_where_allowed(tmp_path):
    import threading
    ready, stop, tid = threading.Event(), threading.Event(), []

    def idle():
        tid.append(threading.get_native_id())
        cap.set_background_priority()
        ready.set()
        stop.wait(5)
    t = threading.Thread(target=idle)
    t.start()
    ready.wait(5)
    try:
        if os.sched_getscheduler(tid[0]) == os.SCHED_IDLE and cap.restore_priority(tid[0]):
            assert os.sched_getscheduler(tid[0]) == os.SCHED_OTHER
        else:   # unprivileged without RLIMIT_NICE: refused by the OS, reported, nothing raised
            assert cap.restore_priority(tid[0]) is False or os.sched_getscheduler(tid[0]) != os.SCHED_IDLE
    finally:
        stop.set()
        t.join()


def test_pipeline_records_are_assembled_on_the_writer_thread_and_hold_the_frame_s_values(tmp_path):
    """A captured frame costs the pipeline's thread only the decision: the record's predictions
    (the fused branch's per-anchor entropy, the lists) are made by the writer thread, and they are
    the values of that frame."""
    import threading
    from ms_perception.build import build_pipeline, default_model
    from ms_perception.core.frames import Frame, FramePair
    from ms_perception.core.inconsistency import detection_entropy
    pipe = build_pipeline({"model_path": str(default_model()), "assume_same_fov": True, "capture_enabled": True,
                           "capture_dir": str(tmp_path), "robot_id": "r", "capture_threshold": 0.0,
                           "capture_min_interval_s": 0.0})
    made_on, submitted = [], []
    real_submit = pipe.writer.submit

    def submit(rec):
        submitted.append(callable(rec.predictions))
        inner = rec.predictions
        rec.predictions = lambda: (made_on.append(threading.current_thread().name), inner())[1]
        return real_submit(rec)
    pipe.writer.submit = submit
    rng = np.random.default_rng(0)
    pair = FramePair(Frame(rng.integers(0, 256, (128, 160, 3), dtype=np.uint8), 5 * S, "rgb8", "v"),
                     Frame(rng.integers(0, 65535, (64, 80), dtype=np.uint16), 5 * S, "mono16", "t"))
    res = pipe.process(pair)
    assert res.captured
    feeds, _, _ = pipe.preprocess(pair)
    scores = pipe.engine.infer(feeds)["scores"][0]
    pipe.writer.close()
    assert submitted == [True] and made_on == ["ms_perception-capture"]
    (rec_dir,) = [p for p in tmp_path.joinpath("r").iterdir() if p.is_dir()]
    preds = json.loads((rec_dir / "record.json").read_text())["predictions"]
    assert preds["entropy"] == pytest.approx(detection_entropy(scores, pipe.level_counts), rel=1e-6)
    assert preds["detections"] == json.loads(json.dumps(res.detections.to_list(pipe.card.class_names)))
    assert preds["inconsistency"]["score"] == pytest.approx(res.inconsistency.score)
