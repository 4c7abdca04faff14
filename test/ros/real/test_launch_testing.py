"""launch_testing on the real graph: the way `colcon test` / `launch_test` checks the node on a robot.
The test classes are unittest.TestCase subclasses (launch_testing collects nothing else: the old
version of this file ran green while executing no test)."""
import time
import unittest

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
from launch_ros.actions import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

import launch
from ms_perception_msgs.msg import Inconsistency


@pytest.mark.launch_test
def generate_test_description():
    node = Node(package="ms_perception", executable="detector_node", name="ms_perception_detector",
                parameters=[{"assume_same_fov": True, "capture_enabled": False}])
    return launch.LaunchDescription([node, launch_testing.actions.ReadyToTest()]), {"detector": node}


def pair(stamp):
    v = Image(height=256, width=320, encoding="rgb8", step=960)
    v.data = bytes(256 * 960)
    t = Image(height=128, width=160, encoding="mono16", step=320)
    t.data = (29315).to_bytes(2, "little") * (128 * 160)
    v.header.stamp = t.header.stamp = stamp
    return v, t


class TestDetectorPublishes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        rclpy.shutdown()

    def test_detections_and_inconsistency_arrive_with_the_pair_stamp(self):
        n = rclpy.create_node("ms_perception_probe")
        got = {"det": [], "inc": []}
        n.create_subscription(Detection2DArray, "detections", got["det"].append, 10)
        n.create_subscription(Inconsistency, "inconsistency", got["inc"].append, 10)
        pv = n.create_publisher(Image, "/camera/visible/image_raw", qos_profile_sensor_data)
        pt = n.create_publisher(Image, "/camera/thermal/image_raw", qos_profile_sensor_data)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and not (got["det"] and got["inc"]):
                v, t = pair(n.get_clock().now().to_msg())
                pt.publish(t)
                pv.publish(v)
                end = time.time() + 0.5
                while time.time() < end and not (got["det"] and got["inc"]):
                    rclpy.spin_once(n, timeout_sec=0.05)
        finally:
            n.destroy_node()
        self.assertTrue(got["det"] and got["inc"], "no Detection2DArray/Inconsistency within 60 s")
        self.assertIn(got["inc"][0].header.stamp, [d.header.stamp for d in got["det"]])


@launch_testing.post_shutdown_test()
class TestDetectorShutdown(unittest.TestCase):
    def test_exit_code_is_zero(self, proc_info, detector):
        # launch ends the node with SIGINT: it must drain and exit 0, not with ExternalShutdownException
        launch_testing.asserts.assertExitCodes(proc_info, process=detector)
