"""The detector as an rclpy lifecycle node: a thin shell around :class:`DetectorLogic`.

configure: declare-time parameters are validated and the engine(s) and capture writer load;
activate: subscriptions (message_filters ApproximateTimeSynchronizer, same semantics as
``ms_perception.core.pairing``), publishers, diagnostics timer and the capture service go live;
deactivate/cleanup undo that, cleanup drains the capture queue. ``autostart:=true`` (default)
configures and activates at start-up.

Written against the rclpy API of ROS 2 Humble/Jazzy; it cannot run on the project's machines
(no ROS 2 there). Everything it does is in ``logic.py`` and tested; the launch_testing test in
``test/ros/test_launch_integration.py`` is the check to run on a ROS 2 machine.
"""
from __future__ import annotations

import array
import sys

import message_filters
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ms_perception.core.frames import Frame
from ms_perception.ros import messages as M
from ms_perception.ros.logic import ConfigureError, DetectorLogic
from ms_perception.ros.params import DEFAULTS, PARAMS, check_all
from ms_perception_msgs.msg import Inconsistency
from ms_perception_msgs.srv import SetCaptureMode


def _converter(logger):
    """cv_bridge passthrough (16-bit thermal stays 16-bit); the project's own converter if
    cv_bridge cannot load (e.g. a NumPy ABI mismatch)."""
    try:
        from cv_bridge import CvBridge
        bridge = CvBridge()

        def to_frame(msg) -> Frame:
            data = bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
            return Frame(data, M.stamp_ns(msg.header), msg.encoding, msg.header.frame_id)
        return to_frame
    except ImportError as exc:
        logger.warning(f"cv_bridge unavailable ({exc}); converting images with ms_perception's own converter")
        from ms_perception.replay.bag import frame_from_msg
        return frame_from_msg


class DetectorNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("ms_perception_detector", **kwargs)
        for p in PARAMS:
            desc = ParameterDescriptor(description=p.description + ("" if p.live else " (read at configure)"))
            if isinstance(p.default, list) and not p.default:
                self.declare_parameter(p.name, Parameter.Type.STRING_ARRAY, desc)
            else:
                self.declare_parameter(p.name, p.default, desc)
        self.declare_parameter("autostart", True, ParameterDescriptor(description="configure and activate at start"))
        self.logic = DetectorLogic(self._values(), M.RclpyAdapter(), _converter(self.get_logger()))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pubs: dict = {}
        self.subs: list = []
        self.sync = None
        self.timer = None
        self.service = None

    def _values(self) -> dict:
        out = {}
        for name in DEFAULTS:
            try:
                v = self.get_parameter(name).value
            except ParameterUninitializedException:
                v = None
            if isinstance(v, (array.array, tuple)):
                v = list(v)
            out[name] = DEFAULTS[name] if v is None else v
        return out

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds   # ROS time: follows /clock with use_sim_time

    def _on_set_parameters(self, params) -> SetParametersResult:
        known = [p for p in params if p.name in DEFAULTS]
        proposed = {**self.logic.params, **{p.name: (list(p.value) if isinstance(p.value, (array.array, tuple))
                                                      else p.value) for p in known}}
        problems = check_all(proposed)
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        for p in known:
            reason = self.logic.set_param(p.name, proposed[p.name])
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        self.logic.params = {**self.logic.params, **self._values()}
        try:
            self.logic.configure()
        except ConfigureError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.logic.params
        card = self.logic.pipeline.card
        self.get_logger().info(f"model {card.name} ({card.task}, classes {self.logic.class_names}) on "
                               f"{self.logic.pipeline.engine.name}")
        out_qos = QoSProfile(depth=10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {"detections": self.create_lifecycle_publisher(Detection2DArray, p["detections_topic"], out_qos),
                     "label_info": self.create_lifecycle_publisher(LabelInfo, p["label_info_topic"], latched),
                     "overlay": self.create_lifecycle_publisher(Image, p["overlay_topic"], out_qos),
                     "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", out_qos)}
        if card.task == "segmentation":
            self.pubs["mask"] = self.create_lifecycle_publisher(Image, p["mask_topic"], out_qos)
            self.pubs["colored_mask"] = self.create_lifecycle_publisher(Image, p["colored_mask_topic"], out_qos)
        if len(self.logic.pipeline.mono) == 2:
            self.pubs["inconsistency"] = self.create_lifecycle_publisher(Inconsistency, p["inconsistency_topic"],
                                                                         out_qos)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        p = self.logic.params
        qos = QoSProfile(depth=int(p["qos_depth"]), history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.BEST_EFFORT if p["qos_reliability"] == "best_effort"
                         else ReliabilityPolicy.RELIABLE)
        vis = message_filters.Subscriber(self, Image, p["visible_topic"], qos_profile=qos)
        th = message_filters.Subscriber(self, Image, p["thermal_topic"], qos_profile=qos)
        vis.registerCallback(self._on_visible)
        th.registerCallback(self._on_thermal)
        self.sync = message_filters.ApproximateTimeSynchronizer([vis, th], int(p["sync_queue_size"]),
                                                                float(p["sync_slop_s"]))
        self.sync.registerCallback(self._on_pair)
        self.subs = [vis, th]
        self.timer = self.create_timer(float(p["diagnostics_period_s"]), self._on_timer)
        self.service = self.create_service(SetCaptureMode, "set_capture_mode", self._on_set_capture_mode)
        self.logic.activate(self._now_ns())
        result = super().on_activate(state)   # activates the lifecycle publishers
        self.pubs["label_info"].publish(self.logic.label_info(M.header_at(self.logic.ad, self._now_ns())))
        return result

    def _teardown_activity(self):
        for s in self.subs:
            self.destroy_subscription(s.sub)
        self.subs, self.sync = [], None
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        if self.service is not None:
            self.destroy_service(self.service)
            self.service = None

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._teardown_activity()
        self.logic.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        stats = self.logic.cleanup()
        if stats:
            self.get_logger().info(f"capture drained: {stats}")
        for pub in self.pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self.pubs = {}
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._teardown_activity()
        self.logic.cleanup()
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- callbacks
    def _publish(self, out, header):
        if out is None:
            return
        if out.error:
            self.get_logger().error(out.error, throttle_duration_sec=5.0)
            return
        for name, msg in out.messages.items():
            if name in self.pubs:
                self.pubs[name].publish(msg)
        pub = self.pubs.get("overlay")
        if self.logic.params["publish_overlay"] and pub is not None and pub.get_subscription_count() > 0:
            img = self.logic.overlay(out, header)
            if img is not None:
                pub.publish(img)

    def _on_pair(self, vis_msg, th_msg):
        self._publish(self.logic.on_pair(vis_msg, th_msg, self._now_ns()), vis_msg.header)

    def _on_visible(self, msg):
        self._publish(self.logic.on_visible(msg, self._now_ns()), msg.header)

    def _on_thermal(self, msg):
        self.logic.on_thermal(msg, self._now_ns())

    def _on_timer(self):
        diag, warning = self.logic.diagnostics(self._now_ns())
        if warning:
            self.get_logger().warning(warning)
        self.pubs["diagnostics"].publish(diag)

    def _on_set_capture_mode(self, request, response):
        response.success, response.message, response.previous_mode = self.logic.set_capture_mode(
            int(request.mode), int(request.force_count))
        return response


def main(args=None) -> int:
    rclpy.init(args=args)
    node = DetectorNode()
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            node.trigger_activate()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.logic.cleanup()   # drains the capture queue even on Ctrl-C
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
