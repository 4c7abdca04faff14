"""Load benchmark of the detector node on a real ROS 2 Jazzy graph (issue 18, item 10).

Publishes visible rgb8 + thermal mono16 pairs at 640x512 (the demo's synthetic scenes, stamped as they
are sent) at a fixed rate to the installed detector node (default model, autostart, capture on into a
temporary folder, as on a robot) and reports, per publisher QoS:

- pairs published, images received by the node per topic, pairs processed, pairs dropped (published -
  processed) and detections received back;
- callback latency p50/p99 (the whole pair callback in the node: conversion, pipeline, publish, from
  the node's /diagnostics, over its last 1000 pairs) and pipeline latency p50/p99;
- end-to-end latency p50/p99 (stamp at publish -> Detection2DArray received here; same clock);
- the node's resident memory (VmRSS) once active, after the first second of load, and at the end.

Not a test: it measures. Run it on the real graph with

    bash scripts/ros_graph_run.sh python bench/ros_load.py --seconds 20 --rate 30

(the environment is built and cached by scripts/ros2_jazzy_env.sh; the graph runs in a loopback-only
network namespace). Results go to bench/results/ros_load.json and are summarized in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse

from ms_perception.core import jsonio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test" / "ros" / "real"))
from graph import Probe, Process, bag_pairs, diagnostics_values, node_executable, stamp_ns  # noqa: E402


ARMS = {"be/be": ("best_effort", "best_effort"), "rel/be": ("reliable", "best_effort"),
        "rel/rel": ("reliable", "reliable")}   # publisher / node subscription


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def num(v) -> float | None:
    return float(v) if v not in ("", None) else None


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def run_arm(qos: str, sub_qos: str, pairs, calibration: Path, seconds: float, rate: float, domain: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [node_executable(), "--ros-args", "-p", "autostart:=true", "-p", f"qos_reliability:={sub_qos}",
           "-p", f"capture_dir:={work / 'capture'}", "-p", "diagnostics_period_s:=0.5",
           "-p", f"calibration_file:={calibration}"]
    node = Process(cmd, work / "node.log", domain)
    probe = Probe(domain, best_effort=(qos == "best_effort"))
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection2DArray
    try:
        probe.wait_state("active", timeout=60)
        arrivals: list[tuple[int, float]] = []   # (stamp_ns, received wall ns)
        probe.node.create_subscription(Detection2DArray, "/detections",
                                       lambda m: arrivals.append((stamp_ns(m.header), time.time_ns())), 50)
        probe.subscribe("diag", DiagnosticArray, "/diagnostics")
        probe.spin(1.0)   # discovery of the detections subscription
        rss = {"active": rss_mb(node.proc.pid)}
        period = 1.0 / rate
        n_total = int(round(seconds * rate))
        sent: dict[int, float] = {}
        t_start = time.perf_counter()
        for i in range(n_total):
            due = t_start + i * period
            while (now := time.perf_counter()) < due:
                probe.ex.spin_once(timeout_sec=min(0.005, due - now))
            vis, th = pairs[i % len(pairs)]
            st = time.time_ns()
            for msg in (vis, th):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(st, 10**9)
            probe.publish_pair(vis, th)
            sent[st] = time.perf_counter()
            if i == int(rate):
                rss["after_1s"] = rss_mb(node.proc.pid)
        publish_s = time.perf_counter() - t_start
        probe.spin(3.0)   # let the node finish its queue and publish fresh diagnostics
        rss["end"] = rss_mb(node.proc.pid)
        level, message, values = diagnostics_values(probe.got["diag"][-1])
        e2e = [(recv - s) / 1e6 for s, recv in arrivals if s in sent]
        processed = int(values["pairs"])
        result = {
            "publisher_qos": qos, "node_subscription_qos": sub_qos, "rate_hz": rate, "seconds": seconds,
            "published_pairs": n_total, "publish_rate_achieved_hz": round(n_total / publish_s, 2),
            "node_visible_received": int(values["visible_received"]),
            "node_thermal_received": int(values["thermal_received"]),
            "processed_pairs": processed, "dropped_pairs": n_total - processed,
            "dropped_fraction": round((n_total - processed) / n_total, 4),
            "node_errors": int(values["errors"]), "detections_received": len(e2e),
            "callback_p50_ms": num(values["callback_p50_ms"]), "callback_p99_ms": num(values["callback_p99_ms"]),
            "pipeline_p50_ms": num(values["latency_p50_ms"]), "pipeline_p99_ms": num(values["latency_p99_ms"]),
            "end_to_end_p50_ms": pct(e2e, 50), "end_to_end_p99_ms": pct(e2e, 99),
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "diagnostics": f"level {level}: {message}",
        }
    finally:
        probe.close()
        code = node.stop()
        node.kill()
    result["node_exit_code"] = code
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                    help="publisher/node-subscription reliability; best_effort is the node's default subscription")
    ap.add_argument("--scenes", type=int, default=30, help="distinct 640x512 pairs, sent in a loop")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ros_load.json")
    a = ap.parse_args()
    from ms_perception.demo import make_demo_bag
    with tempfile.TemporaryDirectory() as tmp:
        bag, cal, _ = make_demo_bag(Path(tmp) / "bag", pairs=a.scenes, seed=5)
        pairs = bag_pairs(bag)
        assert pairs and pairs[0][0].width == 640 and pairs[0][0].height == 512, "expected 640x512 pairs"
        results = [run_arm(*ARMS[arm], pairs, cal, a.seconds, a.rate, 40 + k, Path(tmp) / arm)
                   for k, arm in enumerate(a.arms)]
    report = {"host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus", "image": "640x512 rgb8 + mono16",
              "model": "embedded default", "arms": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(jsonio.dumps(report, indent=1) + "\n")
    keys = ["published_pairs", "publish_rate_achieved_hz", "node_visible_received", "node_thermal_received",
            "processed_pairs", "dropped_pairs", "node_errors", "detections_received", "callback_p50_ms",
            "callback_p99_ms", "pipeline_p50_ms", "pipeline_p99_ms", "end_to_end_p50_ms", "end_to_end_p99_ms",
            "rss_mb", "node_exit_code"]
    print(f"{'publisher / subscription':28s}" +
          "".join(f"{r['publisher_qos'] + ' / ' + r['node_subscription_qos']:>34s}" for r in results))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{str(r[k]):>34s}" for r in results))
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
