"""Training throughput and data-loader starvation, side by side in one run.

Writes the synthetic generator's pairs once in the KAIST layout (JPEG visible, 16-bit thermal
PNGs, the path a KAIST user's data takes), then trains the same model for the same iterations
from that folder with 0 and N DataLoader workers, interleaved and repeated, and prints images/s
and the share of the time the loop waited for data.

    python bench/train_throughput.py [--model config/models/tiny/gaff_three_branch_r18_retinanet.yaml]
        [--pairs 64] [--iterations 30] [--batch 8] [--workers 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "config/models/tiny/gaff_three_branch_r18_retinanet.yaml"))
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    from ms_perception_training.data.sources import DataConfig
    from ms_perception_training.experiment import FitConfig
    from ms_perception_training.fit import fit
    from ms_perception_training.models.config import load_model_config

    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
    from ms_perception.synth.writers import write_dataset
    mcfg = load_model_config(args.model)
    rows = {0: [], args.workers: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kaist"
        gen = SyntheticGenerator(SynthConfig(width=640, height=512, thermal_factor=4, misregistration_px=0.0), 1)
        write_dataset("kaist", gen.pairs(args.pairs), root, thermal_factor=4, test_every=0)
        for r in range(args.repeats):
            for w in (0, args.workers):
                cfg = FitConfig(model=args.model, iterations=args.iterations, batch_size=args.batch,
                                warmup_iterations=5, checkpoint_every=10 ** 6, tensorboard=False, device="cpu",
                                data=DataConfig(type="kaist", root=str(root), split="train", thermal_dir="lwir16",
                                                workers=w))
                s = fit(cfg, mcfg, Path(tmp) / f"run{r}{w}", log=lambda *a: None)
                rows[w].append(s)
                print(f"repeat {r} workers {w}: {s['images_per_second']:.1f} images/s, waited "
                      f"{100 * s['data_wait_fraction']:.1f} % of {s['data_wait_seconds'] + s['compute_seconds']:.1f} s")
    print(f"\n{mcfg.name} at {mcfg.input.width}x{mcfg.input.height}, batch {args.batch}, {args.iterations} iterations, "
          f"KAIST-layout folder of {args.pairs} pairs (640x512 JPEG + 160x128 16-bit PNG), torch threads "
          f"{torch.get_num_threads()}")
    for w, ss in rows.items():
        ips = [s["images_per_second"] for s in ss]
        wait = [100 * s["data_wait_fraction"] for s in ss]
        print(f"  workers {w}: images/s {min(ips):.1f}-{max(ips):.1f}; waiting for data {min(wait):.1f}-{max(wait):.1f} %")
    a = [s["images_per_second"] for s in rows[args.workers]]
    b = [s["images_per_second"] for s in rows[0]]
    print(f"  ratio workers {args.workers} / workers 0 (images/s, per repeat): "
          + ", ".join(f"{x / y:.2f}" for x, y in zip(a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
