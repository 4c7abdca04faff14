"""ros2 launch ms_perception detector.launch.py [model:=...] [backend:=tensorrt] [namespace:=rig1] ...

Starts the ms_perception detector lifecycle node with config/detector.yaml (or config_file:=...);
the arguments below override the file. autostart:=true configures and activates it at once;
autostart:=false leaves it unconfigured for a lifecycle manager.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

ARGUMENTS = [
    ("namespace", "", "namespace of the node and its topics"),
    ("model", "", "ONNX model or TensorRT engine with a card ('' = the embedded default model)"),
    ("backend", "onnxruntime", "onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt or tensorrt"),
    ("config_file", "", "parameter YAML ('' = the installed config/detector.yaml)"),
    ("visible_topic", "/camera/visible/image_raw", "visible sensor_msgs/Image topic"),
    ("thermal_topic", "/camera/thermal/image_raw", "thermal sensor_msgs/Image topic"),
    ("use_sim_time", "false", "use /clock (bag replay with `ros2 bag play --clock`)"),
    ("log_level", "info", "debug, info, warn, error"),
    ("autostart", "true", "configure and activate the lifecycle node at start-up"),
]


def generate_launch_description():
    share = get_package_share_directory("ms_perception")
    default_config = os.path.join(share, "config", "detector.yaml")
    args = [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, doc in ARGUMENTS]
    cfg = LaunchConfiguration("config_file")
    has_cfg = PythonExpression(["'", cfg, "' != ''"])
    overrides = {
        "model_path": LaunchConfiguration("model"),
        "backend": LaunchConfiguration("backend"),
        "visible_topic": LaunchConfiguration("visible_topic"),
        "thermal_topic": LaunchConfiguration("thermal_topic"),
        "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
    }
    node_kwargs = dict(package="ms_perception", executable="detector_node", name="ms_perception_detector",
                       namespace=LaunchConfiguration("namespace"), output="screen",
                       arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")])
    return LaunchDescription(args + [
        LifecycleNode(parameters=[cfg, overrides], condition=IfCondition(has_cfg), **node_kwargs),
        LifecycleNode(parameters=[default_config, overrides], condition=UnlessCondition(has_cfg), **node_kwargs),
    ])
