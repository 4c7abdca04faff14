"""What MAF learned: the modality weights μ (visible, thermal) of a trained CFL + MAF model on the
evidence benchmark's test split, by day and at night (Liu et al. 2021, §III-D: MAF should lean on
thermal at night; if μ stays near 0.5 / 0.5 it is the decision-level average it is compared with).

    python bench/maf_weights.py --root /tmp/ev/data --tag cpu --seeds 0 1 2 --work /tmp/ev/work

Reads each seed's ``cfl_maf`` checkpoint from ``bench/evidence.py run``'s work folder; prints one
JSON line per seed: the mean and the 5th / 95th percentiles of the thermal weight by condition
(the data's own conditions: the generator's day, dusk, fog and night).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_experiments  # noqa: E402
from train_experiments import arm_configs  # noqa: E402

from ms_perception.core import jsonio  # noqa: E402


def thermal_weights(root: Path, work: Path, seed: int, arm: str = "cfl_maf", batch: int = 8) -> dict | None:
    import torch
    from ms_perception_training.checkpoints import load_weights
    from ms_perception_training.data.loader import make_batch
    from ms_perception_training.data.sources import DataConfig, open_one
    from ms_perception_training.models.build import build_model
    ckpt = work / f"{arm}_s{seed}" / "last.pt"
    if not ckpt.exists():
        print(f"{arm} seed {seed}: no {ckpt}; train it with bench/evidence.py run (same --work and --tag)",
              file=sys.stderr)
        return None
    _, mcfg, _, _ = arm_configs(arm, work)
    model = build_model(mcfg).eval()
    load_weights(model, str(ckpt))
    pool = open_one(mcfg, DataConfig(type="kaist", root=str(root), split="test", thermal_dir="lwir16", workers=0),
                    split="test")
    mu, cond = [], []
    with torch.no_grad():
        for s in range(0, len(pool), batch):
            idx = list(range(s, min(s + batch, len(pool))))
            b = make_batch(pool, idx, mcfg, augment=False)
            out = model(*model.inputs(b.visible, b.thermal))
            if "maf_weights" not in out.aux:
                print(f"{arm}: the model has no MAF (fusion.cfl.maf is off)", file=sys.stderr)
                return None
            mu.append(out.aux["maf_weights"][:, 1].float().numpy())
            cond += [pool[i].condition for i in idx]
    mu, cond = np.concatenate(mu), np.asarray(cond)
    res = {"seed": seed, "pairs": int(mu.size)}
    for c in sorted(set(cond.tolist())):                     # the generator's day, dusk, fog, night
        m = mu[cond == c]
        if m.size:
            res[c] = {"thermal_weight_mean": round(float(m.mean()), 3), "p5": round(float(np.percentile(m, 5)), 3),
                      "p95": round(float(np.percentile(m, 95)), 3), "pairs": int(m.size)}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="/tmp/ms_perception_evidence")
    ap.add_argument("--input", default="256x192", help="the evidence run's model input WxH")
    args = ap.parse_args()
    w, h = (int(x) for x in args.input.lower().split("x"))
    train_experiments.SCALE["input"] = {"width": w, "height": h}
    done = 0
    for seed in args.seeds:
        r = thermal_weights(Path(args.root), Path(args.work) / args.tag, seed)
        if r is not None:
            print(jsonio.dumps(r), flush=True)
            done += 1
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
