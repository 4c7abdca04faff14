"""Speed targets of issue [data], measured in one run (print, never assert).

    python bench/data_speed.py [--shared ../shared]

- synthetic generator: pairs/s at 320x256 on one core (target >= 50);
- KAIST scoring of the 2,252-image GAFF reference (target < 5 s).
"""
import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402

cv2.setNumThreads(1)

from ms_perception.synth.generator import SynthConfig, SyntheticGenerator  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--pairs", type=int, default=300)
    a = ap.parse_args()
    for factor in (1, 16):
        gen = SyntheticGenerator(SynthConfig(width=320, height=256, thermal_factor=factor), seed=0)
        t = time.perf_counter()
        n = sum(1 for _ in gen.pairs(a.pairs))
        dt = time.perf_counter() - t
        print(f"generator 320x256 thermal_factor={factor:>2}: {n / dt:7.1f} pairs/s (target >= 50, ratio {n / dt / 50:.2f}x)")
    fx = Path(a.shared) / "fixtures" / "kaist-eval"
    if (fx / "gaff_detections.txt").exists():
        from ms_perception.formats.kaist import load_detections, load_kaist_json
        from ms_perception.metrics.kaist import evaluate_kaist
        t = time.perf_counter()
        g = load_kaist_json(fx / "kaist_test_improved_annotations.json")
        d = load_detections(fx / "gaff_detections.txt")
        r = evaluate_kaist(g, d)
        dt = time.perf_counter() - t
        print(f"KAIST scoring, 2,252 images incl. loading: {dt:.2f} s (target < 5 s, {5 / dt:.1f}x margin); "
              f"MR all/day/night = {100 * r['all'].miss_rate:.2f}/{100 * r['day'].miss_rate:.2f}/{100 * r['night'].miss_rate:.2f}")
    else:
        print(f"KAIST fixture not found under {fx}; skipped")


if __name__ == "__main__":
    main()
