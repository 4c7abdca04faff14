"""launch_testing integration test: starts detector.launch.py, plays synthetic images, and checks a
Detection2DArray and an Inconsistency message arrive. Needs a ROS 2 install (Humble/Jazzy) with
ms_perception and ms_perception_msgs built; skipped elsewhere. Run on a robot with
`colcon test --packages-select ms_perception` or `launch_test test/ros/test_launch_integration.py`."""
import time

import pytest

launch_testing = pytest.importorskip("launch_testing", reason="needs a ROS 2 install (launch_testing)")
rclpy = pytest.importorskip("rclpy")

import launch_ros.actions  # noqa: E402
import numpy as np  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

import launch  # noqa: E402
from ms_perception_msgs.msg import Inconsistency  # noqa: E402


@pytest.mark.launch_test
def generate_test_description():
    node = launch_ros.actions.Node(package="ms_perception", executable="detector_node", name="ms_perception_detector",
                                   parameters=[{"assume_same_fov": True, "qos_reliability": "reliable",
                                                "capture_enabled": False}])
    return launch.LaunchDescription([node, launch_testing.actions.ReadyToTest()]), {"detector": node}


class TestDetectorPublishes:
    def test_detections_and_inconsistency_arrive(self):
        rclpy.init()
        n = rclpy.create_node("ms_perception_probe")
        got = {"det": [], "inc": []}
        n.create_subscription(Detection2DArray, "detections", lambda m: got["det"].append(m), 10)
        n.create_subscription(Inconsistency, "inconsistency", lambda m: got["inc"].append(m), 10)
        pv = n.create_publisher(Image, "/camera/visible/image_raw", 10)
        pt = n.create_publisher(Image, "/camera/thermal/image_raw", 10)
        deadline = time.time() + 30
        while time.time() < deadline and not (got["det"] and got["inc"]):
            stamp = n.get_clock().now().to_msg()
            v = Image(height=256, width=320, encoding="rgb8", step=960,
                      data=np.zeros(256 * 960, np.uint8).tobytes())
            t = Image(height=256, width=320, encoding="mono16", step=640,
                      data=np.full(256 * 320, 29315, "<u2").tobytes())
            v.header.stamp = t.header.stamp = stamp
            pv.publish(v)
            pt.publish(t)
            rclpy.spin_once(n, timeout_sec=0.1)
        n.destroy_node()
        rclpy.shutdown()
        assert got["det"] and got["inc"]
        assert got["det"][0].header.stamp == got["inc"][0].header.stamp
