"""A small stand-in for rclpy, message_filters and the ROS message packages, enough to run
ms_perception/ros/detector_node.py here (no ROS 2 can be installed). Message classes are the
rosbags typestore's (the real ROS 2 definitions); the synchronizer double pairs with the core's
ApproximateTimePairer, which implements message_filters' ApproximateTimeSynchronizer."""
from __future__ import annotations

import enum
import types

from ms_perception.core.frames import Frame
from ms_perception.core.pairing import ApproximateTimePairer
from ms_perception.ros.messages import stamp_ns


class TransitionCallbackReturn(enum.Enum):
    SUCCESS = 1
    FAILURE = 2
    ERROR = 3


class ParameterUninitializedException(Exception):
    pass


class Parameter:
    class Type(enum.Enum):
        STRING_ARRAY = 9

    def __init__(self, name, value):
        self.name, self.value = name, value


class Publisher:
    def __init__(self, msg_type, topic, qos):
        self.msg_type, self.topic, self.qos = msg_type, topic, qos
        self.sent, self.subscribers, self.active = [], 0, False

    def publish(self, msg):
        if self.active:           # lifecycle publishers drop messages while inactive
            self.sent.append(msg)

    def get_subscription_count(self):
        return self.subscribers


class Clock:
    def __init__(self):
        self.ns = 0

    def now(self):
        return types.SimpleNamespace(nanoseconds=self.ns)


class Logger:
    def __init__(self):
        self.lines = []

    def _log(self, level, msg, **_):
        self.lines.append((level, msg))

    def info(self, msg, **kw):
        self._log("info", msg)

    def warning(self, msg, **kw):
        self._log("warning", msg)

    def error(self, msg, **kw):
        self._log("error", msg)


class LifecycleNode:
    def __init__(self, name, **kwargs):
        self.name, self.params, self.param_callbacks = name, {}, []
        self.publishers, self.timers, self.services, self.subscriptions = [], [], [], []
        self.clock, self.logger = Clock(), Logger()
        self.state = "unconfigured"

    # parameters
    def declare_parameter(self, name, value, descriptor=None):
        if name in self.params:
            raise RuntimeError(f"parameter {name} declared twice")
        self.params[name] = None if isinstance(value, Parameter.Type) else value

    def get_parameter(self, name):
        if self.params.get(name) is None and name in self.params:
            raise ParameterUninitializedException(name)
        return Parameter(name, self.params[name])

    def add_on_set_parameters_callback(self, cb):
        self.param_callbacks.append(cb)

    def set_parameters(self, params):
        for cb in self.param_callbacks:
            res = cb(params)
            if not res.successful:
                return res
        for p in params:
            self.params[p.name] = p.value
        return res

    # entities
    def create_lifecycle_publisher(self, msg_type, topic, qos):
        pub = Publisher(msg_type, topic, qos)
        self.publishers.append(pub)
        return pub

    def destroy_lifecycle_publisher(self, pub):
        self.publishers.remove(pub)

    def create_timer(self, period, cb):
        t = types.SimpleNamespace(period=period, cb=cb)
        self.timers.append(t)
        return t

    def destroy_timer(self, t):
        self.timers.remove(t)

    def create_service(self, srv_type, name, cb):
        s = types.SimpleNamespace(srv_type=srv_type, name=name, cb=cb)
        self.services.append(s)
        return s

    def destroy_service(self, s):
        self.services.remove(s)

    def destroy_subscription(self, s):
        self.subscriptions.remove(s)

    def get_clock(self):
        return self.clock

    def get_logger(self):
        return self.logger

    # lifecycle
    def on_activate(self, state):
        for p in self.publishers:
            p.active = True
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        for p in self.publishers:
            p.active = False
        return TransitionCallbackReturn.SUCCESS

    def _transition(self, fn, ok_state):
        res = fn(None)
        if res == TransitionCallbackReturn.SUCCESS:
            self.state = ok_state
        return res

    def trigger_configure(self):
        return self._transition(self.on_configure, "inactive")

    def trigger_activate(self):
        return self._transition(self.on_activate, "active")

    def trigger_deactivate(self):
        return self._transition(self.on_deactivate, "inactive")

    def trigger_cleanup(self):
        return self._transition(self.on_cleanup, "unconfigured")

    def destroy_node(self):
        pass


class Subscriber:
    """message_filters.Subscriber: a subscription whose messages feed registered callbacks."""

    def __init__(self, node, msg_type, topic, qos_profile=None):
        self.node, self.msg_type, self.topic, self.qos = node, msg_type, topic, qos_profile
        self.callbacks = []
        self.sub = types.SimpleNamespace(topic=topic)
        node.subscriptions.append(self.sub)

    def registerCallback(self, cb):  # noqa: N802 (message_filters' name)
        self.callbacks.append(cb)

    def deliver(self, msg):
        for cb in self.callbacks:
            cb(msg)


class ApproximateTimeSynchronizer:
    def __init__(self, subscribers, queue_size, slop):
        self.pairer = ApproximateTimePairer(slop, queue_size)
        self.callbacks = []
        self.msgs = {}
        for stream, sub in zip(("visible", "thermal"), subscribers):
            sub.registerCallback(lambda m, s=stream: self._add(s, m))

    def registerCallback(self, cb):  # noqa: N802
        self.callbacks.append(cb)

    def _add(self, stream, msg):
        t = stamp_ns(msg.header)
        self.msgs[(stream, t)] = msg
        pair = self.pairer.add(stream, Frame(None, t, msg.encoding))
        if pair is not None:
            v, th = self.msgs.pop(("visible", pair.visible.stamp_ns)), self.msgs.pop(("thermal", pair.thermal.stamp_ns))
            for cb in self.callbacks:
                cb(v, th)


def install(monkeypatch, ts):
    """Put the doubles into sys.modules; returns the module map."""
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(__import__("sys").modules, name, m)
        return m

    class SetParametersResult:
        def __init__(self, successful=True, reason=""):
            self.successful, self.reason = successful, reason

    class ParameterDescriptor:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class QoSProfile:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    policy = enum.Enum("Policy", "BEST_EFFORT RELIABLE KEEP_LAST TRANSIENT_LOCAL VOLATILE")
    mod("rclpy", init=lambda args=None: None, ok=lambda: True, shutdown=lambda: None, spin=lambda node: None)
    mod("rclpy.lifecycle", Node=LifecycleNode, State=object, TransitionCallbackReturn=TransitionCallbackReturn)
    mod("rclpy.exceptions", ParameterUninitializedException=ParameterUninitializedException)
    mod("rclpy.parameter", Parameter=Parameter)
    mod("rclpy.qos", QoSProfile=QoSProfile, ReliabilityPolicy=policy, HistoryPolicy=policy, DurabilityPolicy=policy)
    mod("rcl_interfaces")
    mod("rcl_interfaces.msg", ParameterDescriptor=ParameterDescriptor, SetParametersResult=SetParametersResult)
    mod("message_filters", Subscriber=Subscriber, ApproximateTimeSynchronizer=ApproximateTimeSynchronizer)
    for pkg, names in {"sensor_msgs": ["Image"], "vision_msgs": ["Detection2DArray", "LabelInfo"],
                       "diagnostic_msgs": ["DiagnosticArray"], "ms_perception_msgs": ["Inconsistency"]}.items():
        mod(pkg)
        mod(f"{pkg}.msg", **{n: ts.types[f"{pkg}/msg/{n}"] for n in names})
    mod("ms_perception_msgs.srv", SetCaptureMode=types.SimpleNamespace(name="ms_perception_msgs/srv/SetCaptureMode"))
    monkeypatch.setitem(__import__("sys").modules, "cv_bridge", None)   # not installed: the fallback converter runs
