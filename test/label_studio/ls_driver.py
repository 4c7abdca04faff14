"""Drives a real Label Studio server as a labeling team would (run in Label Studio's own environment:
label-studio + label-studio-sdk, nothing of ms_perception).

    python ls_driver.py EXPORT_DIR WORK_DIR RESULT_JSON

Starts `label-studio start` on 127.0.0.1 with a fresh data folder and local-files serving rooted at
EXPORT_DIR's parent; creates a project with the export's labeling_config.xml; connects the export as
local storage (so the annotator's browser can load the visible and thermal images); imports
tasks.json with its predictions through the SDK; then, as the annotator: in every task keeps the
model's boxes but the first, adds one car box, and on one task draws a person on the thermal image
only; skips (cancels) one task; deletes one task. Exports the project as Label Studio JSON.
RESULT_JSON gets what the server answered (image fetches, counts, what was submitted) and the
export file's path.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from label_studio_sdk import LabelStudio

TOKEN = "0123456789abcdef0123456789abcdef01234567"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc, timeout: float = 240.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"label-studio did not answer {url} in {timeout} s")


def main() -> int:
    export_dir, work, result_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(work / "ls-data"),
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(export_dir.parent), LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
               SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false")
    ls_bin = Path(sys.executable).parent / "label-studio"
    t0 = time.time()
    log = open(work / "label-studio.log", "w")
    proc = subprocess.Popen([str(ls_bin), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--username", "annotator@example.com", "--password", "annotator-pass",
                             "--user-token", TOKEN], env=env, stdout=log, stderr=subprocess.STDOUT)
    out = {}
    try:
        wait(f"{base}/health", proc)
        out["startup_s"] = round(time.time() - t0, 1)
        t1 = time.time()
        ls = LabelStudio(base_url=base, api_key=TOKEN)
        project = ls.projects.create(title="ms_perception fleet round", label_config=(export_dir / "labeling_config.xml").read_text())
        storage = ls.import_storage.local.create(project=project.id, path=str(export_dir), use_blob_urls=False,
                                                 title="export")
        tasks = json.loads((export_dir / "tasks.json").read_text())
        ls.projects.import_tasks(project.id, request=tasks)
        listed = list(ls.tasks.list(project=project.id, fields="all"))
        out["tasks_imported"] = len(listed)
        out["predictions_imported"] = sum(len(t.predictions or []) for t in listed)
        # the annotator's browser loads both images
        fetched = []
        for key in ("visible", "thermal"):
            req = urllib.request.Request(base + listed[0].data[key], headers={"Authorization": f"Token {TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
            rel = urllib.request.unquote(listed[0].data[key]).split("?d=", 1)[1]
            fetched.append({"key": key, "status": r.status, "same_bytes": body == (export_dir.parent / rel).read_bytes()})
        out["image_fetches"] = fetched
        submitted = {}
        for i, t in enumerate(listed):
            frame = t.data["frame"]
            if i == 1:
                ls.annotations.create(id=t.id, result=[], was_cancelled=True)
                submitted[frame] = "cancelled"
                continue
            if i == 2:
                ls.tasks.delete(id=t.id)
                submitted[frame] = "deleted"
                continue
            pred = t.predictions[0].result if t.predictions else []
            w, h = pred[0]["original_width"] if pred else 320, pred[0]["original_height"] if pred else 256
            result = [{k: r[k] for k in ("from_name", "to_name", "type", "original_width", "original_height", "value")}
                      for r in pred[1:]]
            result.append({"from_name": "label", "to_name": "visible", "type": "rectanglelabels",
                           "original_width": w, "original_height": h,
                           "value": {"x": 10.0, "y": 20.0, "width": 5.0, "height": 8.0, "rotation": 0,
                                     "rectanglelabels": ["car"]}})
            if i == 0:
                result.append({"from_name": "label_thermal", "to_name": "thermal", "type": "rectanglelabels",
                               "original_width": w, "original_height": h,
                               "value": {"x": 80.0, "y": 70.0, "width": 4.0, "height": 12.0, "rotation": 0,
                                         "rectanglelabels": ["person"]}})
            ls.annotations.create(id=t.id, result=result, was_cancelled=False)
            submitted[frame] = [[r["from_name"], r["value"]["rectanglelabels"][0],
                                 *(r["value"][k] for k in ("x", "y", "width", "height")), r["original_width"],
                                 r["original_height"]] for r in result]
        out["submitted"] = submitted
        data = b"".join(ls.projects.exports.download_sync(project.id, export_type="JSON", download_all_tasks=True))
        export_file = work / "label_studio_export.json"
        export_file.write_bytes(data)
        out["export_file"] = str(export_file)
        out["api_s"] = round(time.time() - t1, 1)
        out["storage_id"] = storage.id
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    result_path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
