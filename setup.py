"""ms_perception: ROS 2 ament_python package (repository root) + offline training subpackage.

``ms_perception`` is the torch-free runtime; ``training/`` is installed as the separate
import package ``ms_perception_training`` (torch, only with the ``[train]`` extra).
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "ms_perception"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["ms_perception", "ms_perception.*"])
    + ["ms_perception_training"] + ["ms_perception_training." + p for p in find_packages("training")],
    package_dir={"ms_perception_training": "training"},
    package_data={"ms_perception_training.export": ["*.txt"], "ms_perception": ["models/*.onnx", "models/*.json"]},
    include_package_data=False,
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/config/models", glob("config/models/*.yaml")),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy>=1.24", "opencv-python-headless>=4.8", "pycocotools>=2.0.7", "matplotlib>=3.7",
                      "onnxruntime>=1.17", "rosbags>=0.10", "pyyaml>=6"],
    extras_require={
        # torch is NOT listed: install torch==2.13.0 first (a local CPU build here), see README
        "train": ["pyyaml>=6", "onnx>=1.15", "tensorboard>=2.14"],
        "test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "pyyaml>=6", "onnx>=1.15", "catkin_pkg>=1.0",
                 "colcon-common-extensions>=0.3", "vermin>=1.6",
                 "datumaro>=1.10"],
    },
    zip_safe=True,
    maintainer="ms_perception developers",
    maintainer_email="ms-perception@users.noreply.github.com",
    description="Multispectral (visible + thermal) detection and segmentation for ROS 2",
    license="Apache-2.0",
    entry_points={"console_scripts": ["ms-perception = ms_perception.cli:main",
                                      "detector_node = ms_perception.ros.detector_node:main"]},
)
