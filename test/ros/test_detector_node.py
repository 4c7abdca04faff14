"""ms_perception/ros/detector_node.py itself, run on the rclpy double (rclpy_double.py): lifecycle,
parameters, subscriptions through the synchronizer, publishing, service, diagnostics, drain."""
import importlib
import sys
import types

import pytest

from ms_perception.core.frames import Frame
from ms_perception.replay.bag import image_msg
from ms_perception.ros import messages as M
from ms_perception.ros.definitions import typestore
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import rclpy_double  # noqa: E402

S = 10**9


@pytest.fixture
def node(monkeypatch, tmp_path):
    ts = typestore()
    rclpy_double.install(monkeypatch, ts)
    monkeypatch.setattr(M, "RclpyAdapter", lambda: M.TypestoreAdapter(ts))   # rosbags messages, see docstring
    monkeypatch.delitem(sys.modules, "ms_perception.ros.detector_node", raising=False)
    dn = importlib.import_module("ms_perception.ros.detector_node")
    n = dn.DetectorNode()
    n.params.update({"assume_same_fov": True, "capture_dir": str(tmp_path / "cap"), "score_threshold": 0.05})
    n.ts = ts
    yield n
    n.logic.cleanup()


def frames(ts, k=3):
    gen = SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4), seed=4)
    out = []
    for i, sp in enumerate(gen.pairs(k)):
        t = (i + 1) * S // 10
        out.append((image_msg(ts, Frame(sp.visible, t, "rgb8", "visible_optical")),
                    image_msg(ts, Frame(sp.thermal_raw, t + 3_000_000, "mono16", "thermal_optical"))))
    return out


def pub(node, topic):
    return next(p for p in node.publishers if p.topic == topic)


def test_lifecycle_pairs_publish_and_drain(node):
    assert node.trigger_configure().name == "SUCCESS" and node.state == "inactive"
    assert {p.topic for p in node.publishers} >= {"detections", "label_info", "inconsistency", "overlay",
                                                   "/diagnostics"}
    assert pub(node, "label_info").qos.durability.name == "TRANSIENT_LOCAL"
    assert node.trigger_activate().name == "SUCCESS"
    assert pub(node, "label_info").sent, "LabelInfo is latched at activation"
    vis_sub, th_sub = node.subs
    assert vis_sub.qos.reliability.name == "BEST_EFFORT"     # sensor-data default
    pub(node, "overlay").subscribers = 1
    for vis, th in frames(node.ts):
        node.clock.ns = stamp_ns = vis.header.stamp.sec * S + vis.header.stamp.nanosec
        th_sub.deliver(th)       # thermal first, then visible: the synchronizer pairs them
        vis_sub.deliver(vis)
    dets = pub(node, "detections").sent
    assert len(dets) == 3 and len(pub(node, "inconsistency").sent) == 3 and len(pub(node, "overlay").sent) == 3
    for d in dets:   # what a ROS 2 subscriber decodes
        node.ts.deserialize_cdr(node.ts.serialize_cdr(d, d.__msgtype__), d.__msgtype__)
    # capture service, diagnostics timer
    (svc,) = node.services
    resp = svc.cb(types.SimpleNamespace(mode=2, force_count=1), types.SimpleNamespace())
    assert resp.success and resp.previous_mode == 0
    node.timers[0].cb()
    diag = pub(node, "/diagnostics").sent[-1]
    assert {v.key: v.value for v in diag.status[0].values}["pairs"] == "3"
    assert stamp_ns > 0
    # deactivate stops publishing; cleanup drains and releases
    assert node.trigger_deactivate().name == "SUCCESS" and node.subscriptions == [] and node.timers == []
    assert node.trigger_cleanup().name == "SUCCESS" and node.publishers == [] and node.logic.pipeline is None


def test_parameter_callback_rejects_with_reason_and_applies_live(node):
    node.trigger_configure()
    P = rclpy_double.Parameter
    res = node.set_parameters([P("score_threshold", 3.0)])
    assert not res.successful and "score_threshold" in res.reason
    res = node.set_parameters([P("score_threshold", 0.7)])
    assert res.successful and node.logic.pipeline.cfg.score_threshold == 0.7


def test_configure_failure_is_reported_not_raised(node, tmp_path):
    node.params["model_path"] = str(tmp_path / "missing.onnx")
    assert node.trigger_configure().name == "FAILURE" and node.state == "unconfigured"
    assert any("model_path" in m or "missing.onnx" in m for lvl, m in node.logger.lines if lvl == "error")


def test_main_autostarts_and_cleans_up(monkeypatch, node):
    dn = sys.modules["ms_perception.ros.detector_node"]
    monkeypatch.setattr(dn, "DetectorNode", lambda: node)
    assert dn.main([]) == 0
    assert node.state == "active" and node.logic.pipeline is None   # cleaned up after spin returned
