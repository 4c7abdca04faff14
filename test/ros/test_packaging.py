"""Package metadata, interface definitions and the colcon install tree (no ROS runtime here)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from catkin_pkg.package import parse_package

from ms_perception.ros.definitions import interface_definitions, typestore

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder,build_type", [(".", "ament_python"), ("ms_perception_msgs", "ament_cmake")])
def test_package_xml_validates_with_catkin_pkg(folder, build_type):
    pkg = parse_package(REPO / folder / "package.xml")
    pkg.validate()     # raises InvalidPackage on any format-3 violation
    assert pkg.package_format == 3
    assert [e.content for e in pkg.exports if e.tagname == "build_type"] == [build_type]


def test_dependency_keys():
    runtime = {d.name for d in parse_package(REPO / "package.xml").exec_depends}
    assert {"rclpy", "sensor_msgs", "vision_msgs", "message_filters", "diagnostic_msgs", "geometry_msgs",
            "builtin_interfaces", "lifecycle_msgs", "ms_perception_msgs", "python3-numpy", "python3-opencv",
            "launch", "launch_ros"} <= runtime
    # LabelInfo arrived in vision_msgs 4.1.0; cv_bridge is not used (its NumPy-1 builds break beside NumPy 2)
    vision = next(d for d in parse_package(REPO / "package.xml").exec_depends if d.name == "vision_msgs")
    assert vision.version_gte == "4.1.0" and "cv_bridge" not in runtime
    msgs = parse_package(REPO / "ms_perception_msgs" / "package.xml")
    assert "rosidl_interface_packages" in [g.name for g in msgs.member_of_groups]
    assert {d.name for d in msgs.buildtool_depends} == {"ament_cmake", "rosidl_default_generators"}
    assert "rosidl_default_runtime" in {d.name for d in msgs.exec_depends}
    cmake = (REPO / "ms_perception_msgs" / "CMakeLists.txt").read_text()
    for name in interface_definitions():
        stem = name.split("/")[-1].removesuffix("_Request").removesuffix("_Response")
        assert f"/{stem}." in cmake, f"{stem} is not listed in rosidl_generate_interfaces"


def test_interfaces_parse_and_round_trip_through_cdr():
    ts = typestore()
    Inc = ts.types["ms_perception_msgs/msg/Inconsistency"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    msg = Inc(header=Header(stamp=Time(sec=12, nanosec=345), frame_id="visible_optical"), score=0.25,
              per_level=np.array([0.1, 0.2, 0.45], np.float32), per_class=np.array([0.3, 0.2], np.float32),
              class_names=["person", "car"], model_name="m", model_hash="abcd", captured=True,
              capture_reason="threshold", pair_skew=-0.004)
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, Inc.__msgtype__), Inc.__msgtype__)
    assert back.header.frame_id == "visible_optical" and back.header.stamp.nanosec == 345
    np.testing.assert_array_equal(back.per_level, msg.per_level)
    assert back.class_names == ["person", "car"] and back.captured and back.pair_skew == -0.004
    Req = ts.types["ms_perception_msgs/msg/SetCaptureMode_Request"]
    assert (Req.AUTO, Req.PAUSED, Req.FORCE) == (0, 1, 2)
    r = ts.deserialize_cdr(ts.serialize_cdr(Req(mode=2, force_count=5), Req.__msgtype__), Req.__msgtype__)
    assert (r.mode, r.force_count) == (2, 5)


@pytest.mark.skipif(shutil.which("colcon") is None and not (Path(sys.executable).parent / "colcon").exists(),
                    reason="colcon is not installed (pip install colcon-common-extensions)")
def test_colcon_builds_the_install_tree(tmp_path):
    src = tmp_path / "src" / "ms_perception"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    colcon = shutil.which("colcon") or str(Path(sys.executable).parent / "colcon")
    # colcon does not look inside a package folder: both packages are found only when named
    listed = subprocess.run([colcon, "list", "--names-only", "--base-paths", "src/ms_perception",
                             "src/ms_perception/ms_perception_msgs"], cwd=tmp_path, capture_output=True, text=True)
    assert sorted(listed.stdout.split()) == ["ms_perception", "ms_perception_msgs"], listed.stderr
    # ament_cmake/rosidl cannot build here (no ROS): build the ament_python package
    proc = subprocess.run([colcon, "build", "--base-paths", "src/ms_perception", "--packages-select", "ms_perception"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    inst = tmp_path / "install" / "ms_perception"
    share = inst / "share" / "ms_perception"
    assert (share / "launch" / "detector.launch.py").is_file()
    assert (share / "config" / "detector.yaml").is_file() and (share / "package.xml").is_file()
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / "ms_perception").is_file()
    for exe in ("detector_node", "ms-perception"):
        assert (inst / "lib" / "ms_perception" / exe).is_file(), exe
    assert list(inst.glob("lib/python3*/site-packages/ms_perception/models/default_gaff_three_branch.onnx"))
