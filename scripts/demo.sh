#!/usr/bin/env bash
# The main job: set up a torch-free runtime environment, then run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MS_PERCEPTION_DEMO_VENV:-.venv-demo}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
exec "$VENV/bin/python" -m ms_perception.cli demo --out "${1:-demo_out}"
