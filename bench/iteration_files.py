"""Which files of ``training/`` one training iteration runs (issue 14's "a newcomer reaches
everything one iteration runs by opening at most N files").

Profiles Python calls made inside one iteration only (sampling + augmentation of each item,
batching, forward, losses, backward), not set-up, checkpoints or logging, and prints the files.
Usage: python bench/iteration_files.py [--config config/experiments/gaff_teacher_smoke.yaml]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import ms_perception_training.data.loader as loader
import ms_perception_training.fit as fitmod
from ms_perception_training.experiment import load_experiment


def traced_files(config: str) -> list[str]:
    cfg, mcfg, tcfg = load_experiment(config)
    cfg = dataclasses.replace(cfg, iterations=3, data=dataclasses.replace(cfg.data, workers=0, pairs=8),
                              eval=dataclasses.replace(cfg.eval, pairs=0))
    root = str(Path(fitmod.__file__).parent)
    files: set[str] = set()
    active = [False]

    def profile(frame, event, arg):
        if event == "call" and active[0] and frame.f_code.co_filename.startswith(root):
            files.add(os.path.relpath(frame.f_code.co_filename, root))

    def traced(fn, backward=False):
        def run(*a, **k):
            active[0] = True
            try:
                res = fn(*a, **k)
                if backward:
                    sum(res.values()).backward(retain_graph=True)
                return res
            finally:
                active[0] = False
        return run

    loader.train_sample = traced(loader.train_sample)
    fitmod.to_batch = traced(fitmod.to_batch)
    fitmod.compute_losses = traced(fitmod.compute_losses, backward=True)
    sys.setprofile(profile)
    try:
        with tempfile.TemporaryDirectory() as d:
            fitmod.fit(cfg, mcfg, Path(d), log=lambda *a: None, teacher_cfg=tcfg)
    finally:
        sys.setprofile(None)
    return sorted(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/experiments/gaff_teacher_smoke.yaml")
    files = traced_files(ap.parse_args().config)
    print(f"{len(files)} files of training/ run in one iteration:")
    for f in files:
        print("  " + f)


if __name__ == "__main__":
    main()
