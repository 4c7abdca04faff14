#!/usr/bin/env bash
# The whole test suite: the main suite in its own virtual environment (runtime + training, torch on
# CPU), then the tests on a real ROS 2 Jazzy graph (scripts/test_ros_graph.sh: its own environment,
# cached outside the repository, and a loopback-only network namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MS_PERCEPTION_TEST_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# torch first, pinned: 2.13.0 is the local CPU build; anything else pulls gigabytes of CUDA.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,train]"
status=0
"$VENV/bin/python" -m pytest -q -n "${PYTEST_WORKERS:-2}" test "$@" || status=$?
# the graph tests export their torch models with the suite's environment
MS_PERCEPTION_TORCH_PYTHON=$PWD/$VENV/bin/python bash scripts/test_ros_graph.sh || status=$?
# the Label Studio round trip on a real server (its own environment, cached outside the repository)
bash scripts/test_label_studio.sh || status=$?
exit $status
