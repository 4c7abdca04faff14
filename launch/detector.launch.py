"""ros2 launch ms_perception detector.launch.py [config_file:=robot.yaml] [model:=...] [namespace:=rig1] ...

Starts the ms_perception detector lifecycle node. Parameters come, lowest precedence first, from
the node's defaults, then the parameter YAML (``config_file``, default: the installed
config/detector.yaml), then the launch arguments given explicitly on the command line: an argument
left out does not override the file, so a robot's YAML can choose its model, backend and topics.
autostart:=true configures and activates the node at once (activation only if configure succeeded);
autostart:=false leaves it unconfigured for a lifecycle manager.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription

# (argument, node parameter or None, default, description). '' = not given: the YAML's value stands.
ARGUMENTS = [
    ("namespace", None, "", "namespace of the node and its topics"),
    ("config_file", None, "", "parameter YAML ('' = the installed config/detector.yaml)"),
    ("model", "model_path", "", "ONNX model or TensorRT engine with a card (overrides model_path; in the "
                                "default YAML '' = the embedded default model)"),
    ("backend", "backend", "", "onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt or tensorrt (overrides the YAML)"),
    ("visible_topic", "visible_topic", "", "visible sensor_msgs/Image topic (overrides the YAML)"),
    ("thermal_topic", "thermal_topic", "", "thermal sensor_msgs/Image topic (overrides the YAML)"),
    ("capture_dir", "capture_dir", "", "capture folder (overrides the YAML)"),
    ("use_sim_time", "use_sim_time", "", "true: use /clock (bag replay with `ros2 bag play --clock`)"),
    ("autostart", "autostart", "", "configure and activate at start-up (node default: true)"),
    ("log_level", None, "info", "debug, info, warn, error"),
]
BOOLEANS = {"use_sim_time", "autostart"}


def _node(context):
    given = {name: LaunchConfiguration(name).perform(context) for name, *_ in ARGUMENTS}
    config = given["config_file"] or os.path.join(get_package_share_directory("ms_perception"), "config",
                                                  "detector.yaml")
    overrides = {}
    for name, param, _default, _doc in ARGUMENTS:
        value = given[name]
        if param is None or value == "":
            continue
        if param in BOOLEANS:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"launch argument {name}:={value} must be true or false")
            overrides[param] = value.lower() == "true"
        else:
            overrides[param] = value
    return [LifecycleNode(package="ms_perception", executable="detector_node", name="ms_perception_detector",
                          namespace=given["namespace"], output="screen",
                          parameters=[config, overrides] if overrides else [config],
                          arguments=["--ros-args", "--log-level", given["log_level"]])]


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, _param, default, doc in ARGUMENTS]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
