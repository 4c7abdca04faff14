"""The detector node's behaviour (ms_perception/ros/logic.py) on real ROS 2 message definitions:
inputs are sensor_msgs/Image dataclasses from the rosbags typestore, every output is serialized
to CDR with the ROS 2 definitions (vision_msgs 4.x registered) and decoded back."""
import json

import cv2
import numpy as np
import pytest

from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.pipeline import Pipeline, PipelineConfig
from ms_perception.demo import DEFAULT_MODEL
from ms_perception.engines import create_engine
from ms_perception.replay.bag import frame_from_msg, image_msg
from ms_perception.ros.definitions import typestore
from ms_perception.ros.logic import ConfigureError, DetectorLogic
from ms_perception.ros.messages import TypestoreAdapter
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

S = 10**9


@pytest.fixture(scope="module")
def ts():
    return typestore()


@pytest.fixture(scope="module")
def pairs():
    gen = SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4, misregistration_px=0.0), seed=11)
    return list(gen.pairs(4))


def msgs(ts, sp, t_ns=None):
    tv = sp.stamp_visible_ns if t_ns is None else t_ns
    tt = sp.stamp_thermal_ns if t_ns is None else t_ns + 2_000_000
    return (image_msg(ts, Frame(sp.visible, tv, "rgb8", "visible_optical")),
            image_msg(ts, Frame(sp.thermal_raw, tt, "mono16", "thermal_optical")))


def roundtrip(ts, msg):
    t = msg.__msgtype__
    return ts.deserialize_cdr(ts.serialize_cdr(msg, t), t)


def make_logic(ts, tmp_path, **params):
    p = {"assume_same_fov": True, "capture_dir": str(tmp_path / "capture"), "robot_id": "rig/../7",
         "score_threshold": 0.05, **params}
    logic = DetectorLogic(p, TypestoreAdapter(ts), frame_from_msg)
    logic.configure()
    logic.activate(0)
    return logic


def test_pair_outputs_are_valid_ros_messages_matching_the_pipeline(ts, pairs, tmp_path):
    logic = make_logic(ts, tmp_path)
    vis, th = msgs(ts, pairs[0])
    out = logic.on_pair(vis, th, now_ns=1 * S)
    assert out.error == "" and set(out.messages) == {"detections", "inconsistency"}
    det = roundtrip(ts, out.messages["detections"])
    assert det.header.stamp.sec == vis.header.stamp.sec and det.header.stamp.nanosec == vis.header.stamp.nanosec
    assert det.header.frame_id == "visible_optical"
    # the same pair straight through the core pipeline gives the same boxes
    ref = Pipeline(create_engine("onnxruntime", DEFAULT_MODEL),
                   PipelineConfig(score_threshold=0.05, assume_same_fov=True)).process(
        FramePair(frame_from_msg(vis), frame_from_msg(th)))
    assert len(det.detections) == len(ref.detections) > 0
    for d, box, score, label in zip(det.detections, ref.detections.boxes, ref.detections.scores,
                                    ref.detections.labels):
        x0, y0, x1, y1 = box
        assert d.bbox.center.position.x == pytest.approx((x0 + x1) / 2, abs=1e-3)
        assert d.bbox.center.position.y == pytest.approx((y0 + y1) / 2, abs=1e-3)
        assert d.bbox.size_x == pytest.approx(x1 - x0, abs=1e-3) and d.bbox.center.theta == 0.0
        assert d.results[0].hypothesis.class_id == ["person", "bicycle", "car"][label]
        assert d.results[0].hypothesis.score == pytest.approx(float(score), abs=1e-6)
        assert d.results[0].pose.pose.orientation.w == 1.0
    inc = roundtrip(ts, out.messages["inconsistency"])
    assert inc.score == pytest.approx(ref.inconsistency.score, rel=1e-5)
    assert len(inc.per_level) == len(ref.inconsistency.per_level) and inc.class_names == ["person", "bicycle", "car"]
    assert inc.model_name == "default_gaff_three_branch" and len(inc.model_hash) == 16
    assert inc.pair_skew == pytest.approx((th.header.stamp.nanosec - vis.header.stamp.nanosec) / 1e9
                                          + (th.header.stamp.sec - vis.header.stamp.sec))
    # overlay only on request; it is an rgb8 image of the visible size
    ov = roundtrip(ts, logic.overlay(out, vis.header))
    assert (ov.encoding, ov.height, ov.width, ov.step) == ("rgb8", 512, 640, 1920) and ov.data.size == 512 * 1920
    li = roundtrip(ts, logic.label_info(vis.header))
    assert [(c.class_id, c.class_name) for c in li.class_map] == [(0, "person"), (1, "bicycle"), (2, "car")]
    assert li.threshold == pytest.approx(0.05)
    logic.params["class_id_format"] = "index"
    d2 = roundtrip(ts, logic.on_pair(vis, th, now_ns=2 * S).messages["detections"])
    assert d2.detections[0].results[0].hypothesis.class_id in {"0", "1", "2"}
    logic.cleanup()


def test_capture_service_force_pause_and_drain_on_cleanup(ts, pairs, tmp_path):
    logic = make_logic(ts, tmp_path, capture_threshold=1.0)   # the policy alone would never capture
    ok, message, prev = logic.set_capture_mode(2, 2)
    assert ok and prev == 0 and "2" in message
    results = [logic.on_pair(*msgs(ts, sp), now_ns=(i + 1) * S) for i, sp in enumerate(pairs[:3])]
    reasons = [roundtrip(ts, r.messages["inconsistency"]).capture_reason for r in results]
    captured = [roundtrip(ts, r.messages["inconsistency"]).captured for r in results]
    assert reasons == ["forced", "forced", "below_threshold"] and captured == [True, True, False]
    assert logic.set_capture_mode(1, 0)[0]
    r = logic.on_pair(*msgs(ts, pairs[3]), now_ns=5 * S)
    assert roundtrip(ts, r.messages["inconsistency"]).capture_reason == "paused"
    assert logic.set_capture_mode(7, 0)[0] is False
    stats = logic.cleanup()   # drains the writer queue
    assert stats["written"] == 2
    root = tmp_path / "capture"
    (robot,) = [p for p in root.iterdir() if p.is_dir()]
    assert robot.name == "rig_.._7"    # robot id "rig/../7" sanitized to one path component inside the root
    records = [json.loads(line) for line in (robot / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2
    rec = json.loads((robot / records[0]["id"] / "record.json").read_text())
    assert rec["predictions"]["capture_reason"] == "forced" and rec["thermal_encoding"] == "mono16"
    th = cv2.imread(str(robot / records[0]["id"] / "thermal.png"), cv2.IMREAD_UNCHANGED)
    assert th.dtype == np.uint16 and th.shape == pairs[0].thermal_raw.shape   # 16-bit, native size, lossless
    np.testing.assert_array_equal(th, pairs[0].thermal_raw)


def test_thermal_loss_publish_nothing_then_recover(ts, pairs, tmp_path):
    logic = make_logic(ts, tmp_path, thermal_timeout_s=1.0, capture_enabled=False)
    vis, th = msgs(ts, pairs[0])
    logic.on_thermal(th, now_ns=1 * S)
    assert logic.on_visible(vis, now_ns=int(1.5 * S)) is None and not logic.thermal_lost
    assert logic.on_visible(vis, now_ns=3 * S) is None and logic.thermal_lost
    diag = roundtrip(ts, logic.diagnostics(3 * S)[0])
    assert diag.status[0].level == 2 and "thermal stream lost" in diag.status[0].message
    logic.on_thermal(th, now_ns=int(3.1 * S))
    assert not logic.thermal_lost
    diag = roundtrip(ts, logic.diagnostics(int(3.2 * S))[0])
    assert diag.status[0].level != 2


def test_no_pairs_warning_names_the_silent_topic(ts, pairs, tmp_path):
    logic = make_logic(ts, tmp_path, no_pairs_warning_s=2.0, capture_enabled=False, thermal_timeout_s=100.0)
    vis, _ = msgs(ts, pairs[0])
    logic.on_visible(vis, now_ns=1 * S)
    _, warning = logic.diagnostics(1 * S)
    assert warning == ""
    diag, warning = logic.diagnostics(3 * S)
    assert "/camera/thermal/image_raw" in warning and "QoS" in warning
    d = roundtrip(ts, diag)
    assert d.status[0].level == 1
    kv = {v.key: v.value for v in d.status[0].values}
    assert kv["visible_received"] == "1" and kv["thermal_received"] == "0" and kv["pairs"] == "0"
    assert logic.diagnostics(4 * S)[1] == ""    # warned once


def test_bad_input_is_reported_and_counted_not_raised(ts, pairs, tmp_path):
    logic = make_logic(ts, tmp_path, capture_enabled=False)
    vis, th = msgs(ts, pairs[0])
    vis.encoding = "yuv422"
    out = logic.on_pair(vis, th, now_ns=1 * S)
    assert out.messages == {} and "yuv422" in out.error
    assert logic.counters.errors == 1
    kv = {v.key: v.value for v in roundtrip(ts, logic.diagnostics(1 * S)[0]).status[0].values}
    assert kv["errors"] == "1" and "yuv422" in kv["last_error"]


def test_live_parameters_and_rejections(ts, pairs, tmp_path):
    logic = make_logic(ts, tmp_path, capture_enabled=False)
    assert logic.set_param("score_threshold", 0.9) is None and logic.pipeline.cfg.score_threshold == 0.9
    assert "in [0, 1]" in logic.set_param("score_threshold", 2.0)
    assert logic.pipeline.cfg.score_threshold == 0.9          # a rejected value changes nothing
    assert "greater than" in logic.set_param("thermal_raw_min", 500.0)   # max 0 (from the degC window) < min
    out = logic.on_pair(*msgs(ts, pairs[0]), now_ns=1 * S)
    assert all(d.results[0].hypothesis.score >= 0.9 for d in out.messages["detections"].detections)


def test_configure_errors_name_the_fix(ts, tmp_path):
    def configure(**p):
        DetectorLogic({"assume_same_fov": True, "capture_enabled": False, **p}, TypestoreAdapter(ts),
                      frame_from_msg).configure()
    with pytest.raises(ConfigureError, match="class_names has 2 names"):
        configure(class_names=["a", "b"])
    with pytest.raises(ConfigureError, match="file not found"):
        configure(model_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(ConfigureError, match="visible-only model"):
        configure(fallback_model_path=str(DEFAULT_MODEL), thermal_loss_action="fallback_model")
    with pytest.raises(ConfigureError, match="needs fallback_model_path"):
        configure(thermal_loss_action="fallback_model")


def test_rclpy_adapter_uses_the_python_types_rclpy_messages_accept():
    import array

    from ms_perception.ros.messages import RclpyAdapter
    ad = RclpyAdapter()
    a = ad.array(np.arange(3, dtype=np.uint8), "uint8")
    assert isinstance(a, array.array) and a.typecode == "B" and list(a) == [0, 1, 2]
    f = ad.array([0.5, 0.25], "float32")
    assert f.typecode == "f" and list(f) == [0.5, 0.25]
    assert ad.array(np.zeros(36), "float64") == [0.0] * 36      # float64[36] covariance: a list
    assert ad.byte(2) == b"\x02"                                  # DiagnosticStatus.level is a byte


def test_diagnostics_report_latency_percentiles_of_the_last_1000(ts, tmp_path):
    """numpy's linear percentile over the last 1000 samples: for 1..1000 ms, p50 = 500.5 and
    p99 = 1 + 0.99 * 999 = 990.01; older samples fall out of the window."""
    logic = make_logic(ts, tmp_path, capture_enabled=False)
    logic.callback_ms.extend([5000.0] * 10)            # pushed out by the next 1000
    logic.callback_ms.extend(float(v) for v in range(1, 1001))
    logic.latency_ms.extend([2.0, 4.0])
    kv = {v.key: v.value for v in roundtrip(ts, logic.diagnostics(1 * S)[0]).status[0].values}
    assert kv["callback_p50_ms"] == "500.5" and kv["callback_p99_ms"] == "990.01"
    assert kv["latency_p50_ms"] == "3.0" and kv["latency_p99_ms"] == "3.98"


def test_saturated_thermal_is_logged_once_reported_and_fixed_live(ts, pairs, tmp_path):
    """A 0.04 K/count camera read at the default 0.01 K/count: every pixel clipped to 0, with no sign before."""
    logged = []

    class Log:
        def info(self, m): pass
        def warning(self, m): logged.append(m)
        def error(self, m): pass
    p = {"assume_same_fov": True, "capture_enabled": False, "score_threshold": 0.05}
    logic = DetectorLogic(p, TypestoreAdapter(ts), frame_from_msg, logger=Log())
    logic.configure()
    logic.activate(0)
    sp = pairs[0]
    vis, _ = msgs(ts, sp)
    th = image_msg(ts, Frame((sp.thermal_raw // 4).astype(np.uint16), sp.stamp_thermal_ns, "mono16", "thermal_optical"))
    for k in range(6):
        logic.on_thermal(th, now_ns=(k + 1) * S)
        assert logic.on_pair(vis, th, now_ns=(k + 1) * S).error == ""
    assert len(logged) == 1 and "thermal input saturated" in logged[0]
    st = roundtrip(ts, logic.diagnostics(7 * S)[0]).status[0]
    kv = {v.key: v.value for v in st.values}
    assert st.level == 1 and "thermal_kelvin_per_count" in st.message
    assert kv["thermal_saturated_frames"] == "6" and kv["thermal_warning"] == st.message
    assert logic.set_param("thermal_kelvin_per_count", 0.04) is None
    logic.on_thermal(th, now_ns=8 * S)
    logic.on_pair(vis, th, now_ns=8 * S)
    st = roundtrip(ts, logic.diagnostics(8 * S)[0]).status[0]
    assert st.level == 0 and len(logged) == 1
    assert logic.set_param("thermal_kelvin_per_count", 0.0) is not None   # refused with the reason


def test_unusable_model_outputs_are_counted_dropped_and_an_error_after_a_run(ts, pairs, tmp_path):
    """NaN in a branch output used to escape on_pair (or, in a branch only, to publish a NaN score).
    The real engine's outputs are spoiled on chosen calls: no graph produces NaN on demand."""
    logic = make_logic(ts, tmp_path, capture_enabled=False)
    inner = logic.pipeline.engine
    spoil = {"on": True}

    class Spoiling:
        card, name, warnings = inner.card, "spoiling", []

        def infer(self, feeds):
            out = inner.infer(feeds)
            if spoil["on"]:
                out["scores_visible"][0, 3, 0] = np.inf
                if "output_stats" in out:   # as the graph would compute them from that output
                    from ms_perception.core.postprocess import output_stats, stats_names
                    out["output_stats"] = output_stats(out, stats_names(o.name for o in inner.card.outputs))
            return out

        def close(self):
            pass
    logic.pipeline.engine = Spoiling()
    vis, th = msgs(ts, pairs[0])
    for k in range(3):
        logic.on_thermal(th, now_ns=(k + 1) * S)
        out = logic.on_pair(vis, th, now_ns=(k + 1) * S)
        assert out.messages == {} and "'scores_visible' holds 1 NaN/inf" in out.error
        st = roundtrip(ts, logic.diagnostics((k + 1) * S)[0]).status[0]
        assert st.level == (2 if k == 2 else 0)   # ERROR once a run of 3 frames is unusable
    kv = {v.key: v.value for v in st.values}
    assert kv["invalid_model_outputs"] == "3" and "the last 3 frames had non-finite" in st.message
    spoil["on"] = False
    logic.on_thermal(th, now_ns=4 * S)
    out = logic.on_pair(vis, th, now_ns=4 * S)
    assert out.error == "" and np.isfinite(roundtrip(ts, out.messages["inconsistency"]).score)
    assert roundtrip(ts, logic.diagnostics(4 * S)[0]).status[0].level == 0
