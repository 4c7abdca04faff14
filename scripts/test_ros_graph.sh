#!/usr/bin/env bash
# The tests on a real ROS 2 Jazzy graph (test/ros/real/), called by scripts/test.sh: runs pytest
# through scripts/ros_graph_run.sh (the cached Jazzy environment, a loopback-only network namespace).
# Under CI=true anything missing fails; elsewhere a missing ../shared or namespace skips, with one line.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MS_PERCEPTION_SHARED:-$PWD/../shared}
skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then echo "FAILED real ROS 2 graph tests: $1" >&2; exit 1; fi
  echo "SKIPPED real ROS 2 graph tests: $1"; exit 0
}
[ -d "$SHARED/vendor/ros2-jazzy" ] || skip_or_fail "$SHARED/vendor/ros2-jazzy not found (the ROS 2 Jazzy sources come from ../shared; set MS_PERCEPTION_SHARED)"
unshare -n true 2>/dev/null || skip_or_fail "cannot create a network namespace (unshare -n needs root or user namespaces)"
export MS_PERCEPTION_ROS_GRAPH=1 MS_PERCEPTION_SHARED=$SHARED
exec bash scripts/ros_graph_run.sh python -m pytest -q -p no:cacheprovider test/ros/real "$@"
