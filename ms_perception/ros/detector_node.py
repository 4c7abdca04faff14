"""The detector as an rclpy lifecycle node: a thin shell around :class:`DetectorLogic`.

configure: parameters are validated and the engine(s) and capture writer load; activate:
subscriptions (message_filters ApproximateTimeSynchronizer, same semantics as
``ms_perception.core.pairing``), publishers and the capture service go live; deactivate/cleanup
undo that, cleanup drains the capture queue. ``/diagnostics`` is published in every state, so a
failed configure is visible with its fix. ``autostart:=true`` (default) configures and, if that
succeeds, activates at start-up.

Tested on a real ROS 2 Jazzy graph (``test/ros/real/``); Humble differences are in the README.
Images are converted by ms_perception's own converter (``frame_from_msg``), not cv_bridge: it
validates step, size and encoding, and it cannot break on a NumPy ABI mismatch the way a
cv_bridge built against NumPy 1 does beside NumPy 2 (it imports fine and fails at first use).
"""
from __future__ import annotations

import signal
import sys
import time
import traceback

import message_filters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
try:
    from rclpy.executors import ExternalShutdownException
except ImportError:   # older rclpy: shutdown by a signal surfaces as KeyboardInterrupt only
    class ExternalShutdownException(Exception):
        pass
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ms_perception.core.card import lineage_summary
from ms_perception.ros import messages as M
from ms_perception.ros.logic import ConfigureError, DetectorLogic
from ms_perception.ros.params import DEFAULTS, PARAMS, check_all, coerce
from ms_perception.replay.bag import frame_from_msg
from ms_perception_msgs.msg import Inconsistency
from ms_perception_msgs.srv import SetCaptureMode


class DetectorNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("ms_perception_detector", **kwargs)
        self._guard_change_state_service()
        for p in PARAMS:
            # Float parameters take dynamic typing: a YAML `score_threshold: 1` is an INTEGER to rclpy,
            # whose strict typing would refuse it at declaration (the node exits). Values of any type are
            # validated by params.check_value instead, with the reason, at configure and on every set.
            desc = ParameterDescriptor(description=p.description + ("" if p.live else " (read at configure)"),
                                       dynamic_typing=isinstance(p.default, float))
            if isinstance(p.default, list) and not p.default:
                self.declare_parameter(p.name, Parameter.Type.STRING_ARRAY, desc)
            else:
                self.declare_parameter(p.name, p.default, desc)
        self.declare_parameter("autostart", True, ParameterDescriptor(description="configure and activate at start"))
        self.logic = DetectorLogic(self._values(), M.RclpyAdapter(), frame_from_msg, logger=self.get_logger())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pubs: dict = {}
        self.subs: list = []
        self.sync = None
        self.service = None
        # diagnostics in every lifecycle state: a failed configure is reported with its fix
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timer = self.create_timer(float(self.logic.params["diagnostics_period_s"]), self._on_timer)

    def _guard_change_state_service(self):
        """rclpy (Jazzy 7.1, read the same in Humble) lets the RCLError of a transition that is not allowed
        from the current state ("Transition is not registered", e.g. activate while unconfigured) escape
        its change_state service callback, which ends the executor and the process. Answer such a request
        with success=false and a log line naming the allowed transitions instead."""
        srv = getattr(self, "_service_change_state", None)
        if srv is None:
            return
        original = srv.callback

        def change_state(request, response):
            try:
                return original(request, response)
            except Exception as exc:   # noqa: BLE001 - rclpy's RCLError
                state = self._state_machine.current_state[1]
                allowed = sorted({t[1] for t in self._state_machine.available_transitions})
                self.get_logger().error(f"transition {request.transition.id} {request.transition.label!r} is not "
                                        f"allowed from state {state!r} (allowed: {allowed}): {exc}")
                response.success = False
                return response
        srv.callback = change_state

    def _values(self) -> dict:
        out = {}
        for name in DEFAULTS:
            try:
                v = self.get_parameter(name).value
            except ParameterUninitializedException:
                v = None
            out[name] = DEFAULTS[name] if v is None else coerce(name, v)
        return out

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds   # ROS time: follows /clock with use_sim_time

    def _on_set_parameters(self, params) -> SetParametersResult:
        known = [p for p in params if p.name in DEFAULTS]
        proposed = {**self.logic.params, **{p.name: coerce(p.name, p.value) for p in known}}
        problems = check_all(proposed)
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        for p in known:
            reason = self.logic.set_param(p.name, proposed[p.name])
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _guarded(self, transition: str, body, state: State) -> TransitionCallbackReturn:
        """rclpy turns an exception in a transition callback into ERROR without logging it: log it here
        with its traceback, release what was half-built and stay in the previous primary state."""
        try:
            return body(state)
        except Exception as exc:   # noqa: BLE001 - any failure must be logged, not swallowed by rclpy
            self.get_logger().error(f"{transition} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            self.logic.configure_error = f"{transition} failed: {type(exc).__name__}: {exc}"
            return TransitionCallbackReturn.FAILURE

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        return self._guarded("configure", self._configure, state)

    def _configure(self, state: State) -> TransitionCallbackReturn:
        self.logic.params = {**self.logic.params, **self._values()}
        try:
            self.logic.configure()
        except ConfigureError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.logic.params
        card = self.logic.pipeline.card
        self.get_logger().info(f"model {card.name} {card.graph_sha256[:16]} ({card.task}, classes "
                               f"{self.logic.class_names}) on {self.logic.pipeline.engine.name}; "
                               f"{lineage_summary(card)}")
        out_qos = QoSProfile(depth=10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {"detections": self.create_lifecycle_publisher(Detection2DArray, p["detections_topic"], out_qos),
                     "label_info": self.create_lifecycle_publisher(LabelInfo, p["label_info_topic"], latched),
                     "overlay": self.create_lifecycle_publisher(Image, p["overlay_topic"], out_qos)}
        if card.task == "segmentation":
            self.pubs["mask"] = self.create_lifecycle_publisher(Image, p["mask_topic"], out_qos)
            self.pubs["colored_mask"] = self.create_lifecycle_publisher(Image, p["colored_mask_topic"], out_qos)
        if len(self.logic.pipeline.mono) == 2:
            self.pubs["inconsistency"] = self.create_lifecycle_publisher(Inconsistency, p["inconsistency_topic"],
                                                                         out_qos)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        return self._guarded("activate", self._activate, state)

    def _activate(self, state: State) -> TransitionCallbackReturn:
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
        self.service = self.create_service(SetCaptureMode, "~/set_capture_mode", self._on_set_capture_mode)
        self.logic.activate(self._now_ns())
        result = super().on_activate(state)   # activates the lifecycle publishers
        self.pubs["label_info"].publish(self.logic.label_info(M.header_at(self.logic.ad, self._now_ns())))
        return result

    def _teardown_activity(self):
        for s in self.subs:
            self.destroy_subscription(s.sub)
        self.subs, self.sync = [], None
        if self.service is not None:
            self.destroy_service(self.service)
            self.service = None

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        def body(st):
            self._teardown_activity()
            self.logic.deactivate()
            return super(DetectorNode, self).on_deactivate(st)
        return self._guarded("deactivate", body, state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        def body(st):
            stats = self.logic.cleanup()
            if stats:
                self.get_logger().info(f"capture drained: {stats}")
            for pub in self.pubs.values():
                self.destroy_lifecycle_publisher(pub)
            self.pubs = {}
            return TransitionCallbackReturn.SUCCESS
        return self._guarded("cleanup", body, state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        def body(st):
            self._teardown_activity()
            stats = self.logic.cleanup()
            if stats:
                self.get_logger().info(f"capture drained: {stats}")
            return TransitionCallbackReturn.SUCCESS
        return self._guarded("shutdown", body, state)

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
                self.logic.counters.overlays += 1

    # Nothing may escape a subscription callback (it would end the executor and the node): the logic
    # counts and reports bad input; anything else is counted here too.
    def _on_pair(self, vis_msg, th_msg):
        t0 = time.perf_counter()
        try:
            self._publish(self.logic.on_pair(vis_msg, th_msg, self._now_ns()), vis_msg.header)
        except Exception as exc:   # noqa: BLE001
            self._callback_error("pair", exc)
        self.logic.callback_ms.append((time.perf_counter() - t0) * 1e3)

    def _on_visible(self, msg):
        try:
            self._publish(self.logic.on_visible(msg, self._now_ns()), msg.header)
        except Exception as exc:   # noqa: BLE001
            self._callback_error("visible image", exc)

    def _on_thermal(self, msg):
        try:
            self.logic.on_thermal(msg, self._now_ns())
        except Exception as exc:   # noqa: BLE001
            self._callback_error("thermal image", exc)

    def _callback_error(self, what: str, exc: Exception):
        if not self.context.ok():
            return   # a signal shut the context down while this callback ran: its publish fails, that is all
        self.logic.count_error(f"{what}: {type(exc).__name__}: {exc}")
        self.get_logger().error(f"{what} callback failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                                throttle_duration_sec=5.0)

    def _on_timer(self):
        try:
            diag, warning = self.logic.diagnostics(self._now_ns())
            if warning:
                self.get_logger().warning(warning)
            self.diag_pub.publish(diag)
        except Exception as exc:   # noqa: BLE001
            self._callback_error("diagnostics", exc)

    def _on_set_capture_mode(self, request, response):
        response.success, response.message, response.previous_mode = self.logic.set_capture_mode(
            int(request.mode), int(request.force_count))
        return response


class _StopRequest:
    """The SIGINT/SIGTERM handler: it records the signal and wakes the executor, nothing more.

    Raising from a signal handler (KeyboardInterrupt) lands at whatever bytecode the main thread runs,
    and inside rclpy that can be the middle of ``take_message``'s conversion of a message, which then
    fails with a bare pybind11 RuntimeError while the context is still fine (seen on a real Jazzy graph:
    exit 1 with a traceback, one run in about thirty). rclpy's own handlers shut the context down from
    another thread, which races the executor the same way. So both signals are handled here: the spin
    loop checks the flag between callbacks, and the capture queue is drained after the loop ends."""

    def __init__(self):
        self.signum = None
        self.wake = None   # a guard condition on the node, triggered so a waiting executor returns at once

    def __call__(self, signum, frame):
        self.signum = signum
        if self.wake is not None:
            self.wake.trigger()


def main(args=None) -> int:
    """Entry point. SIGINT and SIGTERM end the node with exit code 0 after draining the capture queue:
    a terminal's Ctrl-C, SIGTERM from a service manager, and SIGINT to a process started in the background
    by launch (where Python itself ignores SIGINT). The handlers replace rclpy's, whose C-level handlers
    Python's ``signal.getsignal`` cannot see (it reports SIG_DFL for SIGTERM after ``rclpy.init`` on
    Jazzy)."""
    node = None
    stop = _StopRequest()
    try:
        rclpy.init(args=args)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        node = DetectorNode()
        stop.wake = node.create_guard_condition(lambda: None)
        if node.get_parameter("autostart").value:
            # activate only what configured: activating an unconfigured node is not a registered transition
            # decided on the node's own state, not trigger_configure()'s return value: the first
            # rclpy lifecycle (the Humble line, read in its sources) returns None from trigger_*()
            node.trigger_configure()
            if node.logic.pipeline is not None and not node.logic.configure_error:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured (fix the "
                                        "parameter, then `ros2 lifecycle set <node> configure`)")
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        while stop.signum is None and node.context.ok():
            executor.spin_once(timeout_sec=0.25)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass   # a signal before the handlers were in place, or another owner shut the context down
    except Exception:   # noqa: BLE001
        # the context was shut down (not by this process's handlers) while the executor was taking a
        # message (rclpy raises a bare RuntimeError there): a normal shutdown; while it is fine, a bug
        if node is None or node.context.ok():
            raise
    finally:
        # a second signal while draining must not interrupt the drain with a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            stats = node.logic.cleanup()   # drains the capture queue
            if stats:
                print(f"ms_perception_detector: capture drained: {stats}", file=sys.stderr)
            node.destroy_node()
        try:
            if rclpy.ok():
                rclpy.shutdown()
        except Exception:   # noqa: BLE001 - a signal handler shut it down between the check and the call
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
