#!/usr/bin/env bash
# The tests on a real ROS 2 Jazzy graph (test/ros/real/), called by scripts/test.sh: builds (or
# reuses) the environment with scripts/ros2_jazzy_env.sh, then runs pytest inside a network
# namespace that has only loopback, so that no DDS traffic leaves this machine.
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
t0=$SECONDS
envfile=$(MS_PERCEPTION_SHARED=$SHARED bash scripts/ros2_jazzy_env.sh)
echo "ROS 2 Jazzy environment ready in $((SECONDS - t0)) s ($envfile)"
export MS_PERCEPTION_ROS_GRAPH=1 MS_PERCEPTION_SHARED=$SHARED
exec unshare -n bash -c 'ip link set lo up && source "$1" && shift && cd "$1" && shift && exec python -m pytest "$@"' \
  _ "$envfile" "$PWD" -q -p no:cacheprovider test/ros/real "$@"
