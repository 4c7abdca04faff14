"""Scale of `captures merge` and `captures select`: time and peak memory on a simulated fleet pool.

    python bench/fleet_scale.py --records 100000 --robots 100 --out /tmp/fleet_scale

Writes ROBOTS capture folders of valid records (record.json with predictions as the node writes
them, a 32x24 visible PNG and a 16x12 16-bit thermal PNG of noise, so no two frames are
near-duplicates), then runs merge and each selection strategy in their own processes and
prints wall time, peak resident memory (ru_maxrss of that process) and the pool's size.
A realistic rate: 100 robots x 8 h x one capture per ~30 s = ~100,000 records a shift.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ms_perception.core import jsonio

CHILD = r"""
import json, resource, sys, time
from ms_perception.fleet.pool import Pool, select_records
what, pool_dir = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if what == "merge":
    with Pool(pool_dir, create=True) as pool:
        rep = pool.merge(sys.argv[3:], log=lambda *_: None)
        out = {"added": rep.added, "duplicates": rep.duplicates, "invalid": rep.invalid, "records": len(pool)}
else:
    with Pool(pool_dir) as pool:
        keys, n = select_records(pool, 1000, what, seed=0)
        out = {"selected": len(keys), "candidates": n, "robots": len({k.split('/')[0] for k in keys})}
out["wall_s"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from ms_perception.core import jsonio
print(jsonio.dumps(out))
"""


def write_fleet(root: Path, records: int, robots: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    per = records // robots
    dirs = []
    for r in range(robots):
        rid = f"robot{r:03d}"
        d = root / rid
        d.mkdir(parents=True, exist_ok=True)
        session = f"{r:08x}"
        lines = []
        t0 = 1_700_000_000_000_000_000 + r * 1_000_000
        for i in range(per):
            stamp = t0 + i * 28_800_000_000_000 // per          # spread over 8 hours
            name = f"{stamp:020d}_{session}{i + 1:06d}"
            rec = d / name
            rec.mkdir(exist_ok=True)
            vis = rng.integers(0, 256, (24, 32, 3), np.uint8)
            th = rng.integers(7000, 8000, (12, 16), np.uint16)
            cv2.imwrite(str(rec / "visible.png"), vis)
            cv2.imwrite(str(rec / "thermal.png"), th)
            meta = {"capture_format": 1, "id": name, "robot_id": rid, "stamp_ns": stamp,
                    "score": float(rng.gamma(2.0, 0.01)), "thermal_stamp_ns": stamp + 4_000_000,
                    "thermal_encoding": "mono16", "model_hash": "5cda2d226e4c30a2", "visible_hw": [24, 32],
                    "thermal_hw": [12, 16],
                    "predictions": {"detections": [{"box": [1.0, 2.0, 10.0, 20.0], "score": 0.8, "label": 0,
                                                    "class": "person"}], "entropy": float(rng.random())},
                    "extra": {"model": "default", "task": "detection", "class_names": ["person", "bicycle", "car"]},
                    "files": ["thermal.png", "visible.png"]}
            (rec / "record.json").write_text(jsonio.dumps(meta))
            lines.append(jsonio.dumps({"id": name, "stamp_ns": stamp, "score": meta["score"], "bytes": 1000}))
        (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        dirs.append(d)
    return dirs


def child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--robots", type=int, default=100)
    ap.add_argument("--out", default="/tmp/fleet_scale")
    a = ap.parse_args()
    out = Path(a.out)
    caps, pool = out / "captures", out / "pool"
    t0 = time.perf_counter()
    dirs = sorted(caps.iterdir()) if caps.exists() and len(list(caps.iterdir())) == a.robots else \
        write_fleet(caps, a.records, a.robots)
    print(f"fleet: {a.robots} robots x {a.records // a.robots} records in {caps} ({time.perf_counter() - t0:.0f} s)")
    m = child(["merge", str(pool), *map(str, dirs)])
    db = pool / "pool.sqlite"
    print(f"merge : {m['added']} added ({m['duplicates']} near-duplicates, {m['invalid']} invalid) in "
          f"{m['wall_s']:.1f} s = {m['added'] / m['wall_s']:.0f} records/s, peak RSS {m['peak_rss_mb']:.0f} MB; "
          f"index {db.stat().st_size / 1e6:.1f} MB")
    m2 = child(["merge", str(pool), *map(str, dirs)])
    print(f"merge again: {m2['added']} added in {m2['wall_s']:.1f} s, peak RSS {m2['peak_rss_mb']:.0f} MB")
    for strategy in ("inconsistency", "entropy", "random", "diverse"):
        s = child([strategy, str(pool)])
        print(f"select {strategy:13s}: {s['selected']} of {s['candidates']} in {s['wall_s']:.2f} s "
              f"({s['robots']} robots), peak RSS {s['peak_rss_mb']:.0f} MB")
    print(f"this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"cpu count {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
