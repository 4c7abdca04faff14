"""Message definitions for a rosbags typestore: ROS 2 Humble's standard messages (bundled with
rosbags) plus vision_msgs 4.x (Humble/Jazzy; not bundled, field layout below) and this project's
ms_perception_msgs (read from its .msg files). Used to build and CDR-serialize exactly what the
node publishes, without a ROS install."""
from __future__ import annotations

from pathlib import Path

# vision_msgs 4.x field layout (docs.ros.org/en/jazzy/p/vision_msgs); comments omitted
VISION_MSGS = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\n"
                                                "geometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
    "vision_msgs/msg/LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}


def msgs_package_dir() -> Path:
    """ms_perception_msgs/ of a source checkout."""
    d = Path(__file__).resolve().parents[2] / "ms_perception_msgs"
    if not (d / "msg").is_dir():
        raise FileNotFoundError(f"{d}/msg not found: the ms_perception_msgs definitions ship with the source tree")
    return d


def interface_definitions() -> dict[str, str]:
    """type name -> definition text of every ms_perception_msgs message and service part."""
    d = msgs_package_dir()
    out = {f"ms_perception_msgs/msg/{p.stem}": p.read_text() for p in sorted((d / "msg").glob("*.msg"))}
    for p in sorted((d / "srv").glob("*.srv")):
        request, response = p.read_text().split("\n---\n")
        # rosbags names service parts as messages
        out[f"ms_perception_msgs/msg/{p.stem}_Request"] = request
        out[f"ms_perception_msgs/msg/{p.stem}_Response"] = response
    return out


def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    ts = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    for name, text in {**VISION_MSGS, **interface_definitions()}.items():
        types.update(get_types_from_msg(text, name))
    ts.register(types)
    return ts
