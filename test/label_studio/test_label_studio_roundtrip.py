"""The Label Studio round trip on a real server: `captures export --format label-studio` -> a real
`label-studio` 1.23 (its own environment; test/label_studio/ls_driver.py drives it through
label-studio-sdk as an annotator would) -> its JSON export -> `captures import` -> the dataset.

Run with one command: ``bash scripts/test_label_studio.sh`` (builds Label Studio's environment once,
cached outside the repository, about 2-3 minutes; the server starts in 40-75 s). ``scripts/test.sh``
runs it after the main suite. Without MS_PERCEPTION_LABEL_STUDIO_PYTHON it is skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from fleet_helpers import capture_robot  # noqa: E402
from ms_perception.cli import main  # noqa: E402
from ms_perception.fleet.pool import Pool  # noqa: E402

LS_PYTHON = os.environ.get("MS_PERCEPTION_LABEL_STUDIO_PYTHON")


@pytest.mark.skipif(not LS_PYTHON, reason="needs Label Studio's environment: bash scripts/test_label_studio.sh")
def test_label_studio_round_trip(tmp_path):
    caps = tmp_path / "caps"
    robots = [capture_robot(caps, rid, seed=20 + i, pairs=3, night=0.5)[0] for i, rid in enumerate(("r1", "r2"))]
    pool = tmp_path / "pool"
    assert main(["captures", "merge", *map(str, robots), "--out", str(pool)]) == 0
    assert main(["captures", "select", str(pool), "--budget", "5", "--strategy", "diverse",
                 "--out", str(tmp_path / "sel.json")]) == 0
    exp = tmp_path / "exp"
    assert main(["captures", "export", str(tmp_path / "sel.json"), "--format", "label-studio", "--out", str(exp),
                 "--pre-annotate"]) == 0
    tasks = json.loads((exp / "tasks.json").read_text())
    res_file = tmp_path / "ls_result.json"
    r = subprocess.run([LS_PYTHON, str(Path(__file__).with_name("ls_driver.py")), str(exp), str(tmp_path / "ls"),
                        str(res_file)], capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:] + \
        ((tmp_path / "ls" / "label-studio.log").read_text()[-3000:] if (tmp_path / "ls" / "label-studio.log").exists() else "")
    res = json.loads(res_file.read_text())
    print(f"label-studio: started in {res['startup_s']} s, API round {res['api_s']} s")
    assert res["tasks_imported"] == len(tasks) == 5
    assert res["predictions_imported"] == 5                    # every task came with the model's boxes
    assert [(f["status"], f["same_bytes"]) for f in res["image_fetches"]] == [(200, True), (200, True)]
    ds = tmp_path / "dataset"
    rc = main(["captures", "import", res["export_file"], "--format", "label-studio", "--into", str(ds),
               "--export", str(exp)])
    assert rc == 1                                             # landed; the skipped and the deleted task named
    doc = json.loads((ds / "annotations.json").read_text())
    submitted = res["submitted"]
    labeled = {f: v for f, v in submitted.items() if isinstance(v, list)}
    assert {Path(im["file_name"]).stem for im in doc["images"]} == set(labeled)
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    for im in doc["images"]:
        got = sorted((cats[a["category_id"]], *np.round(a["bbox"], 3)) for a in doc["annotations"]
                     if a["image_id"] == im["id"])
        want = sorted((lab, *np.round([x * w / 100, y * h / 100, bw * w / 100, bh * h / 100], 3))
                      for src, lab, x, y, bw, bh, w, h in labeled[Path(im["file_name"]).stem])
        assert got == want                    # the thermal-only person (no visible box over it) is kept too
    with Pool(pool) as p:
        counts = p.counts()
        assert counts["labeled"] == len(labeled) and counts["new"] == 6 - len(labeled)
