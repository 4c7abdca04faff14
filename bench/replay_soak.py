"""Soak benchmark: replay a long bag and watch resident memory.

Writes a rosbag2 (mcap) of ``--pairs`` small visible/thermal pairs (160x128 rgb8, 80x64 mono16;
default 10,000: about 17 minutes of a 10 Hz rig; frames cycle through a few synthetic scenes,
stamps advance; the model letterboxes them to its input), then replays it
through the embedded default model with the node's configuration, sampling this process's
resident memory (VmRSS) as it goes. Two arms run side by side in one process:

- ``bounded``: what ``ms-perception replay`` does (running statistics, no results kept);
- ``keep_all``: every pair's result kept, as replay did before (memory grows with the bag).

Run:  .venv/bin/python bench/replay_soak.py [--pairs 10000]
Result: bench/results/replay_soak.json and a line in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from ms_perception.build import build_pipeline
from ms_perception.core import jsonio
from ms_perception.core.frames import Frame
from ms_perception.replay.bag import write_bag
from ms_perception.replay.run import replay_bag
from ms_perception.synth.generator import SynthConfig, SyntheticGenerator

REPO = Path(__file__).resolve().parents[1]
V, T = "/camera/visible/image_raw", "/camera/thermal/image_raw"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def records(n: int, scenes: int = 8):
    cfg = SynthConfig(width=160, height=128, thermal_factor=4, misregistration_px=0.0, sequence_length=scenes)
    base = list(SyntheticGenerator(cfg, seed=5).pairs(scenes))
    for i in range(n):
        sp = base[i % scenes]
        t = (i + 1) * 100_000_000
        yield V, Frame(sp.visible, t, "rgb8", "v"), t + 2_000_000
        yield T, Frame(sp.thermal_raw, t + 1_000_000, "mono16", "t"), t + 3_000_000


def arm(bag: Path, keep: bool, samples_every: int) -> dict:
    gc.collect()
    pipe = build_pipeline({"assume_same_fov": True, "capture_enabled": False})
    trace = []
    count = {"n": 0}

    def on_result(pair, res):
        count["n"] += 1
        if count["n"] % samples_every == 0:
            trace.append((count["n"], round(rss_mb(), 1)))

    t0 = time.perf_counter()
    summary, kept = replay_bag(bag, pipe, V, T, on_result=on_result, keep=keep)
    wall = time.perf_counter() - t0
    first = next(r for n, r in trace if n >= 1000) if trace else float("nan")   # after warm-up
    out = {"pairs": summary.pairs, "kept_results": len(kept), "rss_start_mb": trace[0][1] if trace else None,
           "rss_at_1000_mb": first, "rss_end_mb": trace[-1][1] if trace else None,
           "growth_after_1000_mb": round(trace[-1][1] - first, 1) if trace else None,
           "wall_s": round(wall, 1), "pairs_per_s": round(summary.pairs / wall, 1), "trace": trace}
    del kept
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=500, help="sample RSS every N pairs")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "replay_soak.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bag = write_bag(Path(tmp) / "soak", records(a.pairs))
        size = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        print(f"wrote {a.pairs} pairs ({size:.0f} MB) in {time.perf_counter() - t0:.0f} s; RSS {rss_mb():.0f} MB")
        report = {"pairs": a.pairs, "bag_mb": round(size, 1), "model": "embedded default"}
        for name, keep in (("bounded", False), ("keep_all", True)):
            r = arm(bag, keep, a.every)
            report[name] = r
            print(f"{name:>9}: {r['pairs']} pairs at {r['pairs_per_s']} pairs/s; RSS {r['rss_start_mb']} MB at pair "
                  f"{a.every}, {r['rss_at_1000_mb']} MB at 1000, {r['rss_end_mb']} MB at the end "
                  f"(+{r['growth_after_1000_mb']} MB after pair 1000)")
        b, k = report["bounded"]["growth_after_1000_mb"], report["keep_all"]["growth_after_1000_mb"]
        print(f"growth after pair 1000, side by side: bounded {b} MB, keep-all {k} MB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(jsonio.dumps(report, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
