#!/usr/bin/env bash
# The Label Studio round trip on a real server (test/label_studio/): Label Studio gets its own
# environment (it pins its own Django, numpy, ...), cached outside the repository; the test itself
# runs in the main suite's environment and drives the server through test/label_studio/ls_driver.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MS_PERCEPTION_TEST_VENV:-.venv}
LS_VENV=${MS_PERCEPTION_LABEL_STUDIO_VENV:-$HOME/.cache/ms_perception/label-studio-1.23.2}
PY=${PYTHON:-python3}
if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  "$PY" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install -q --disable-pip-version-check "label-studio==1.23.2" "label-studio-sdk==2.1.2"
fi
MS_PERCEPTION_LABEL_STUDIO_PYTHON=$LS_VENV/bin/python "$VENV/bin/python" -m pytest -q -p no:cacheprovider -s \
  test/label_studio "$@"
