#!/usr/bin/env bash
# Run a command on a real ROS 2 Jazzy graph: builds (or reuses) the environment with
# scripts/ros2_jazzy_env.sh, then runs the command from the repository root, with that environment
# sourced, inside a network namespace that has only loopback (no DDS traffic leaves this machine).
#   bash scripts/ros_graph_run.sh python bench/ros_load.py --seconds 20
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MS_PERCEPTION_SHARED:-$PWD/../shared}
t0=$SECONDS
envfile=$(MS_PERCEPTION_SHARED=$SHARED bash scripts/ros2_jazzy_env.sh)
echo "ROS 2 Jazzy environment ready in $((SECONDS - t0)) s ($envfile)" >&2
export MS_PERCEPTION_SHARED=$SHARED
exec unshare -n bash -c 'ip link set lo up && source "$1" && shift && cd "$1" && shift && exec "$@"' \
  _ "$envfile" "$PWD" "$@"
