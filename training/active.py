"""Active learning by cross-modality inconsistency (ICIP 2021; thesis §5.1; METHODS §7).

The three-branch model (visible, thermal, fused heads; GAFF fusion) is trained on b random
labeled pairs; each cycle scores every unlabeled pair, labels the top b, fine-tunes from the
previous cycle's weights, and evaluates, until the budget B. Strategies:

- ``inconsistency``: I = H(p̄) − ½(H(p_v) + H(p_t)) per anchor/class (per pixel for segmentation),
  scale-balanced image score — computed by THE RUNTIME's implementation
  (``ms_perception.core.inconsistency``, numpy), the score the robot publishes.
- ``entropy``: the fused branch's mean binary (categorical) entropy, scale-balanced the same way.
- ``random``: uniform choice (the paper's baseline curve).

Each strategy keeps ``OUT/<strategy>/state.json`` (labeled indices, curve) after every cycle,
so an interrupted run continues from its last finished cycle (``train active`` again). The
curve of every strategy goes to ``OUT/curve.png`` and ``OUT/curves.json``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ms_perception.core import jsonio
from ms_perception_training.config import ConfigError, from_dict, load_yaml
from ms_perception_training.fit import EvalConfig, FitConfig
from ms_perception_training.models.config import load_model_config
from ms_perception_training.models.multispectral import anchors_per_level, class_probabilities
from ms_perception_training.data.sources import SynthDataConfig, make_pool
from ms_perception_training.data.loader import make_batch

from ms_perception.core.atomic import atomic_write
from ms_perception.core.inconsistency import (
    detection_entropy,
    detection_inconsistency,
    segmentation_entropy,
    segmentation_inconsistency,
)
from ms_perception.core import selection

STRATEGIES = ("inconsistency", "random", "entropy")   # the pool here is one sequence: no robots to spread over


@dataclass
class ActiveConfig:
    model: str = ""                    # a three-branch model config (relative to this file)
    data: SynthDataConfig = field(default_factory=lambda: SynthDataConfig(pairs=400))   # the unlabeled pool
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(pairs=100))
    initial: int = 200                 # b random pairs labeled first (paper: detection 200, segmentation 50)
    step: int = 200                    # b pairs labeled per cycle
    budget: int = 1200                 # B (detection 1200, segmentation 350)
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    iterations: int = 300              # training iterations of the first cycle
    finetune_iterations: int = 150     # per later cycle, from the previous weights
    fit: dict = field(default_factory=dict)   # FitConfig overrides (lr, batch_size, warmup_iterations, ...)
    seed: int = 0

    def __post_init__(self):
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ConfigError(f"active.strategies: {bad} unknown; valid: {list(STRATEGIES)}")
        if not 0 < self.initial <= self.budget:
            raise ConfigError(f"active.initial ({self.initial}) must be in (0, budget={self.budget}]")
        if self.step <= 0:
            raise ConfigError("active.step must be positive")
        if self.budget > self.data.pairs:
            raise ConfigError(f"active.budget {self.budget} exceeds the pool of {self.data.pairs} pairs (data.pairs)")


def load_active_config(path) -> ActiveConfig:
    p = Path(path)
    cfg = from_dict(ActiveConfig, load_yaml(p), "active")
    if not cfg.model:
        raise ConfigError(f"{p}: 'model' must name a three-branch model config")
    cfg.model = str(p.parent / cfg.model) if not Path(cfg.model).is_absolute() else cfg.model
    return cfg


@torch.no_grad()
def score_pool(model, mcfg, pool, indices, strategy: str, batch_size: int = 16) -> np.ndarray:
    """Informativeness of each pool item (higher = label first)."""
    was_training = model.training
    model.eval()
    scores = []
    for s in range(0, len(indices), batch_size):
        idx = indices[s:s + batch_size]
        b = make_batch(pool, idx, mcfg, augment=False)
        out = model(*model.inputs(b.visible, b.thermal))
        if mcfg.task == "segmentation":
            pv = torch.softmax(out.branches["visible"].mask_logits, 1).numpy()
            pt = torch.softmax(out.branches["thermal"].mask_logits, 1).numpy()
            pf = torch.softmax(out.branches["fused"].mask_logits, 1).numpy()
            for i in range(len(idx)):
                if strategy == "inconsistency":
                    scores.append(segmentation_inconsistency(pv[i], pt[i]).score)
                else:
                    scores.append(segmentation_entropy(pf[i]))
            continue
        K, act = mcfg.num_classes, model.score_activation      # SSD: softmax over K + 1, background dropped
        counts = anchors_per_level(out.branches["fused"].cls_logits, K, act)
        probs = {n: class_probabilities(out.branches[n].cls_logits, K, act).numpy()
                 for n in ("visible", "thermal", "fused")}
        for i in range(len(idx)):
            if strategy == "inconsistency":
                scores.append(detection_inconsistency(probs["visible"][i], probs["thermal"][i], counts).score)
            else:
                scores.append(detection_entropy(probs["fused"][i], counts))
    model.train(was_training)
    return np.asarray(scores, np.float64)


def select(strategy: str, scores: np.ndarray | None, unlabeled: list[int], k: int, rng) -> list[int]:
    """The runtime's selection (``ms_perception.core.selection``, also behind ``captures select``)."""
    picked = selection.select(strategy, k, scores=np.zeros(len(unlabeled)) if scores is None else scores, rng=rng)
    return sorted(int(unlabeled[j]) for j in picked)


def _metric(r: dict) -> tuple[str, float | None]:
    if "miss_rate" in r:
        return "miss_rate_all", r["miss_rate"].get("all")
    if "miou" in r:
        return "miou", r["miou"]
    return "map", r.get("map")


def run_active(cfg: ActiveConfig, out: Path, log=print, fit_fn=None) -> dict:
    from ms_perception_training.fit import fit
    from ms_perception_training.models.build import build_model
    fit_fn = fit_fn or fit
    mcfg = load_model_config(cfg.model)
    if not mcfg.fusion.three_branch:
        raise ConfigError(f"active learning needs a three-branch model (fusion.three_branch: true); {mcfg.name} "
                          "has no visible/thermal branches to compare")
    out.mkdir(parents=True, exist_ok=True)
    pool = make_pool(mcfg, cfg.data)
    val = make_pool(mcfg, replace(cfg.data, pairs=cfg.eval.pairs, seed=cfg.eval.seed))
    base = from_dict(FitConfig, {**cfg.fit, "model": "-"}, "active.fit")
    base = replace(base, eval=EvalConfig(pairs=cfg.eval.pairs, seed=cfg.eval.seed), seed=cfg.seed)
    curves = {}
    for strategy in cfg.strategies:
        sdir = out / strategy
        sdir.mkdir(exist_ok=True)
        state_path = sdir / "state.json"
        rng = np.random.default_rng([cfg.seed, 7])
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("done"):
                log(f"[{strategy}] already finished ({len(state['labeled'])} labeled pairs)")
                curves[strategy] = state["curve"]
                continue
            log(f"[{strategy}] resuming after cycle {state['cycle']} ({len(state['labeled'])} labeled)")
        else:   # the same initial random set for every strategy (the curves start together)
            first = sorted(int(i) for i in rng.choice(len(pool), size=cfg.initial, replace=False))
            state = {"cycle": -1, "initial": first, "labeled": first, "curve": [], "pending": first}
        rng = np.random.default_rng([cfg.seed, 11, state["cycle"] + 1])
        while True:
            cycle = state["cycle"] + 1
            labeled = state["pending"]
            cdir = sdir / f"cycle_{cycle}"
            fcfg = replace(base, iterations=cfg.iterations if cycle == 0 else cfg.finetune_iterations,
                           init_checkpoint="" if cycle == 0 else str(sdir / f"cycle_{cycle - 1}" / "last.pt"),
                           batch_size=min(base.batch_size, len(labeled)))
            resume = (cdir / "last.pt").exists()
            shared = out / "cycle_0.json"    # cycle 0 is the same run for every strategy: trained once
            if cycle == 0 and not resume and shared.exists() and \
                    json.loads(shared.read_text())["initial"] == state["initial"]:
                first_run = json.loads(shared.read_text())
                shutil.copytree(out / first_run["dir"], cdir, dirs_exist_ok=True)
                summ = first_run["summary"]
                log(f"[{strategy}] cycle 0: the same initial pairs and run as {first_run['dir']} (copied)")
            else:
                summ = fit_fn(fcfg, mcfg, cdir, log=lambda *a: None, resume=resume,
                              pool=[pool[i] for i in labeled], val_pool=val)
                if cycle == 0:
                    atomic_write(shared, jsonio.dumps({"initial": state["initial"], "dir": f"{strategy}/cycle_0",
                                                       "summary": {"eval": summ.get("eval"),
                                                                   "last_loss": summ["last_loss"]}}))
            name, value = _metric(summ.get("eval", {}))
            state["curve"].append({"cycle": cycle, "labeled": len(labeled), name: value,
                                   "eval": summ.get("eval"), "train_last_loss": summ["last_loss"]})
            state["labeled"], state["cycle"] = labeled, cycle
            log(f"[{strategy}] cycle {cycle}: {len(labeled)} labeled pairs -> {name} {value}")
            if len(labeled) >= cfg.budget:
                state["pending"], state["done"] = labeled, True
                atomic_write(state_path, jsonio.dumps(state, indent=1))
                break
            unlabeled = [i for i in range(len(pool)) if i not in set(labeled)]
            k = min(cfg.step, cfg.budget - len(labeled))
            if strategy == "random":
                new = select("random", None, unlabeled, k, rng)
            else:
                from ms_perception_training.fit import load_weights
                model = build_model(mcfg)
                load_weights(model, cdir / "last.pt")
                new = select(strategy, score_pool(model, mcfg, pool, unlabeled, strategy), unlabeled, k, rng)
            state["pending"] = sorted(labeled + new)
            atomic_write(state_path, jsonio.dumps(state, indent=1))
        curves[strategy] = state["curve"]
    atomic_write(out / "curves.json", jsonio.dumps(curves, indent=1))
    plot = plot_curves(curves, out / "curve.png", mcfg.name)
    return {"curves": {s: [(c["labeled"], _metric(c["eval"] or {})[1]) for c in v] for s, v in curves.items()},
            "plot": plot}


def plot_curves(curves: dict, path: Path, title: str) -> str:
    from ms_perception.metrics.plots import _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    name = None
    for strategy, pts in curves.items():
        xs = [p["labeled"] for p in pts]
        name = next((k for k in ("miss_rate_all", "miou", "map") if k in pts[0]), "metric")
        ys = [p[name] if p[name] is not None else np.nan for p in pts]
        ax.plot(xs, ys, marker="o", label=strategy)
    ax.set_xlabel("labeled pairs")
    ax.set_ylabel({"miss_rate_all": "miss rate (%) ↓", "miou": "mIoU (%) ↑", "map": "mAP (%) ↑"}.get(name, name))
    ax.set_title(f"active learning: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
