"""Replay against broken and unusual bags, written with rosbags itself (rosbag2 mcap and a real
ROS 1 bag): malformed frames are skipped and counted, damage is reported with the partial
results, the request is refused up front when it cannot work, and the capture writer stops on
every exit path."""
import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from ms_perception.build import build_pipeline
from ms_perception.cli import main
from ms_perception.core.frames import Frame
from ms_perception.replay.bag import IMAGE, BagError, ReadReport, _typestore, image_msg, read_frames
from ms_perception.replay.run import RunningStats, replay_bag

V, T = "/camera/visible/image_raw", "/camera/thermal/image_raw"
STEP = 100_000_000   # 10 Hz


def _frames(i, vis_hw=(128, 160)):
    h, w = vis_hw
    rng = np.random.default_rng(i)
    vis = Frame(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), i * STEP, "rgb8", "v")
    th = Frame(np.full((h, w), 30000 + 10 * i, np.uint16), i * STEP + 1_000_000, "mono16", "t")
    return vis, th


def _write(path, n, bad=None, extra_topic=False, vis_hw=(128, 160)):
    """A rosbag2 (mcap) of n pairs; ``bad`` maps a visible frame index to a function that spoils its message."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    ts = _typestore()
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        cv = w.add_connection(V, IMAGE, typestore=ts)
        ct = w.add_connection(T, IMAGE, typestore=ts)
        if extra_topic:
            cs = w.add_connection("/rosout_text", "std_msgs/msg/String", typestore=ts)
            w.write(cs, 1, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="hello"), "std_msgs/msg/String"))
        for i in range(1, n + 1):
            vis, th = _frames(i, vis_hw)
            mv = image_msg(ts, vis)
            if bad and i in bad:
                bad[i](mv)
            w.write(cv, i * STEP + 3_000_000, ts.serialize_cdr(mv, IMAGE))
            w.write(ct, i * STEP + 4_000_000, ts.serialize_cdr(image_msg(ts, th), IMAGE))
    return path


def _short(m):
    m.data = m.data[: len(m.data) // 2]


def _narrow_step(m):
    m.step = m.width   # rgb8 rows need 3 * width bytes


def _zero_height(m):
    m.height = 0


def _capture_threads() -> set:
    return {t for t in threading.enumerate() if t.name == "ms_perception-capture" and t.is_alive()}


def _no_capture_thread(before: set) -> bool:
    """No capture writer thread is alive that was not alive ``before`` (a test that ran earlier in
    the same worker process may still hold its own writer)."""
    return not (_capture_threads() - before)


def test_malformed_frames_are_skipped_counted_and_named(tmp_path, capsys):
    bag = _write(tmp_path / "bag", 8, bad={2: _short, 4: _narrow_step, 6: _zero_height})
    rep = ReadReport()
    got = [(s, f.stamp_ns) for s, f in read_frames(bag, V, T, rep)]
    assert sum(s == "visible" for s, _ in got) == 5 and sum(s == "thermal" for s, _ in got) == 8
    m = rep.malformed[V]
    assert m["count"] == 3 and [e["stamp_ns"] for e in m["examples"]] == [2 * STEP, 4 * STEP, 6 * STEP]
    assert "truncated or has a bad step" in m["examples"][0]["reason"] and "empty (160x0" in m["examples"][2]["reason"]
    # through the CLI with capture on: the replay goes on, reports the skips, and leaves no temporary folder
    out, cap, before = tmp_path / "report.json", tmp_path / "cap", _capture_threads()
    rc = main(["replay", str(bag), "--assume-same-fov", "--capture-dir", str(cap), "--capture-threshold", "0",
               "--capture-min-interval", "0", "--out", str(out)])
    io = capsys.readouterr()
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["pairs"] == 5 and report["read"]["malformed_frames"][V]["count"] == 3
    assert f"{V}: skipped 3 malformed image(s); first at stamp {2 * STEP}" in io.err
    assert not list(cap.rglob(".tmp-*")) and _no_capture_thread(before)
    assert "capture: decided" in io.out and "written" in io.out


def _damaged_bag(tmp_path, edit):
    """Big frames, so that the recording has many chunks; ``edit`` spoils the 13th visible message's record."""
    bag = _write(tmp_path / "bag", 20, vis_hw=(256, 320))
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    pos = data.find(struct.pack("<Q", 13 * STEP + 3_000_000))   # the message record's log_time field
    assert pos > 0
    mcap.write_bytes(edit(data, pos))
    return bag


def test_damage_inside_an_mcap_reports_the_partial_results_and_where(tmp_path, capsys):
    # the record's length field (just before channel id and sequence) made huge: the reader stops there
    bag = _damaged_bag(tmp_path, lambda d, p: d[:p - 14] + struct.pack("<Q", 2**40) + d[p - 6:])
    out = tmp_path / "r.json"
    rc = main(["replay", str(bag), "--assume-same-fov", "--out", str(out)])
    io = capsys.readouterr()
    assert rc == 1
    report = json.loads(out.read_text())
    assert report["complete"] is False and 0 < report["pairs"] < 20
    assert f"the recording is damaged after {report['read']['messages'][V] + report['read']['messages'][T]}" \
        in report["read"]["damage"]
    assert "log time" in report["read"]["damage"] and "mcap recover" in report["read"]["damage"]
    assert "could not be read to the end" in io.err
    assert json.loads(io.out.strip().splitlines()[-1])["pairs"] == report["pairs"]


def test_a_message_lost_silently_is_warned_with_its_count(tmp_path, capsys):
    # channel id 0xffff: the reader skips the record without an error (what lost 1 of 322 frames)
    bag = _damaged_bag(tmp_path, lambda d, p: d[:p - 6] + b"\xff\xff" + d[p - 4:])
    rc = main(["replay", str(bag), "--assume-same-fov"])
    io = capsys.readouterr()
    assert rc == 1
    assert f"{V}: 1 of 20 message(s) listed in the bag's index were never read" in io.err
    last = json.loads(io.out.strip().splitlines()[-1])
    assert last["pairs"] == 19 and last["read"]["unread_messages"] == {V: 1}


def test_request_errors_are_named_before_replaying(tmp_path, capsys):
    bag = _write(tmp_path / "bag", 2, extra_topic=True)
    with pytest.raises(BagError, match=r"no visible topic '/cam' in the bag \(set --visible-topic\); the bag's topics: "
                                       r"/camera/thermal/image_raw \[sensor_msgs/msg/Image\], .*/rosout_text "
                                       r"\[std_msgs/msg/String\]"):
        list(read_frames(bag, "/cam", T))
    with pytest.raises(BagError, match="the visible and thermal topics are the same"):
        list(read_frames(bag, V, V))
    assert main(["replay", str(bag), "--thermal-topic", V]) == 2
    assert "the visible and thermal topics are the same ('/camera/visible/image_raw')" in capsys.readouterr().err
    # a real ROS 1 bag (rosbags writes the format ROS 1 records): refused with the conversion command,
    # and the command works (the converted folder replays)
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.typesys import Stores, get_typestore
    ts1 = get_typestore(Stores.ROS1_NOETIC)
    ros1 = tmp_path / "old.bag"
    with Writer1(ros1) as w:
        conns = {V: w.add_connection(V, IMAGE, typestore=ts1), T: w.add_connection(T, IMAGE, typestore=ts1)}
        Header, Time = ts1.types["std_msgs/msg/Header"], ts1.types["builtin_interfaces/msg/Time"]
        for i in range(1, 4):
            for topic, f, dt in zip((V, T), _frames(i), (3_000_000, 4_000_000)):
                a = np.ascontiguousarray(f.data)
                msg = ts1.types[IMAGE](header=Header(seq=i, stamp=Time(sec=f.stamp_ns // 10**9,
                                                                       nanosec=f.stamp_ns % 10**9), frame_id="x"),
                                       height=a.shape[0], width=a.shape[1], encoding=f.encoding, is_bigendian=0,
                                       step=a.strides[0], data=np.frombuffer(a.tobytes(), np.uint8))
                w.write(conns[topic], i * STEP + dt, ts1.serialize_ros1(msg, IMAGE))
    assert main(["replay", str(ros1)]) == 2
    err = capsys.readouterr().err
    assert f"this is a ROS 1 bag; convert it to rosbag2 first: `rosbags-convert --src {ros1}" in err
    import re
    import subprocess
    import sys
    cmd = re.search(r"`(rosbags-convert [^`]+)`", err).group(1).split()
    conv = subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], capture_output=True, text=True)
    assert conv.returncode == 0, conv.stderr
    assert main(["replay", str(ros1.with_suffix("")), "--assume-same-fov", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == 3


def test_the_capture_writer_stops_on_every_exit_path(tmp_path):
    bag, before = _write(tmp_path / "bag", 4), _capture_threads()
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": True, "capture_dir": str(tmp_path / "cap"),
                           "capture_threshold": 0.0, "capture_min_interval_s": 0.0})

    def interrupt(pair, res):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay_bag(bag, pipe, V, T, on_result=interrupt)
    assert not pipe.writer._thread.is_alive() and _no_capture_thread(before)
    pipe.writer.close()   # a second close does nothing (it used to block on a full queue)


def test_running_stats_percentiles_match_numpy_within_half_a_bin():
    rng = np.random.default_rng(0)
    lat = rng.lognormal(3, 0.6, 20_000)
    s = RunningStats(1e-3, 1e6, 4000, log=True)
    for v in lat:
        s.add(v)
    for q in (50, 95, 99):
        assert s.percentile(q) == pytest.approx(np.percentile(lat, q), rel=5e-3)
    assert s.n == 20_000 and s.min == lat.min() and s.max == lat.max() and s.mean == pytest.approx(lat.mean())
    inc = RunningStats(0.0, 1.0, 10000)
    vals = rng.beta(2, 8, 5000)
    for v in vals:
        inc.add(v)
    assert inc.percentile(50) == pytest.approx(np.median(vals), abs=1e-4)
    assert inc.coarse(10) == np.histogram(vals, bins=10, range=(0, 1))[0].tolist()
    assert s.counts.nbytes == 4000 * 8   # the memory is the histogram, whatever the number of values


def test_replay_keeps_no_results_unless_asked(tmp_path):
    bag = _write(tmp_path / "bag", 3)
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": False})
    summary, kept = replay_bag(bag, pipe, V, T)
    assert summary.pairs == 3 and kept == []
    _, kept = replay_bag(bag, pipe, V, T, keep=lambda stamp: stamp == 2 * STEP)
    assert [s for s, _ in kept] == [2 * STEP]


def test_strict_json_everywhere():
    from ms_perception.core.jsonio import dumps
    assert json.loads(dumps({"a": float("nan"), "b": [np.float32(np.inf), np.int64(3)], "c": np.arange(2)})) == \
        {"a": None, "b": [None, 3], "c": [0, 1]}
    # the fast path (the encoder converting numpy values as met) writes what the cleaned path writes
    from ms_perception.core.jsonio import clean
    doc = {"s": np.float32(0.25), "n": np.int32(-4), "b": np.bool_(True), "a": np.array([[1.5, 2.0]]), 7: (1, "x")}
    assert dumps(doc) == json.dumps(clean(doc), allow_nan=False) == \
        '{"s": 0.25, "n": -4, "b": true, "a": [[1.5, 2.0]], "7": [1, "x"]}'
    assert dumps({"deep": [{"x": np.array([1.0, np.nan])}]}) == '{"deep": [{"x": [1.0, null]}]}'
    # every JSON the project writes goes through it (json.dumps writes NaN, which strict readers reject)
    root = Path(__file__).resolve().parents[2]
    direct = [f"{p.relative_to(root)}:{n}" for d in ("ms_perception", "training", "bench") for p in (root / d).rglob("*.py")
              for n, line in enumerate(p.read_text().splitlines(), 1)
              if "json.dump" in line and p.name != "jsonio.py" and "render_yaml" not in line and "p.default" not in line]
    assert direct == []


def test_node_replay_and_demo_share_one_configuration(tmp_path):
    """Replay used to build its own pipeline (capture quota 1024 MB against the node's 2048, thresholds
    hard-coded); now its options are node parameters and the node's YAML can be replayed as it is."""
    from ms_perception.build import resolve
    from ms_perception.cli import build_parser, replay_params
    from ms_perception.ros.params import DEFAULTS, pipeline_config
    root = Path(__file__).resolve().parents[2]
    plain = resolve(replay_params(build_parser().parse_args(["replay", "bag", "--capture-dir", str(tmp_path)])))
    assert plain["capture_quota_mb"] == DEFAULTS["capture_quota_mb"] == 2048.0
    assert plain["capture_threshold"] == DEFAULTS["capture_threshold"] and plain["sync_slop_s"] == DEFAULTS["sync_slop_s"]
    assert pipeline_config(plain) == pipeline_config(DEFAULTS)
    yaml_file = tmp_path / "node.yaml"
    yaml_file.write_text((root / "config" / "detector.yaml").read_text().replace("score_threshold: 0.3",
                                                                                  "score_threshold: 0.45"))
    p = resolve(replay_params(build_parser().parse_args(["replay", "bag", "--params-file", str(yaml_file),
                                                         "--param", "max_detections=7"])))
    assert p["score_threshold"] == 0.45 and p["max_detections"] == 7 and p["capture_enabled"] is False
    p = resolve(replay_params(build_parser().parse_args(["replay", "bag", "--params-file", str(yaml_file),
                                                         "--score-threshold", "0.6"])))
    assert p["score_threshold"] == 0.6   # a named option overrides the file
    with pytest.raises(ValueError, match="max_detections must be in"):
        resolve(replay_params(build_parser().parse_args(["replay", "bag", "--param", "max_detections=0"])))
