"""Checkpoints: written atomically, read with ``weights_only=True`` (never unpickles code), and
everything exact resume needs (weights, optimizer, AMP scaler, distiller modules, iteration, RNG)."""
from __future__ import annotations

from pathlib import Path

import torch


def save_checkpoint(path: Path, model, opt, scaler, distiller, it: int, history: list, cfg, lineage: str = ""):
    """Everything exact resume needs: weights, optimizer (momentum), AMP scaler, the distiller's
    student-side modules, iteration, the torch RNG state; and the run's lineage (JSON text,
    ``lineage.py``), which ``train export`` copies into the model card. Written atomically."""
    tmp = path.with_suffix(".pt.tmp")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
             "torch_rng": torch.get_rng_state(), "history": torch.tensor(history, dtype=torch.float64),
             "seed": cfg.seed, "total_iterations": cfg.iterations}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if lineage:
        state["lineage"] = lineage
    if distiller is not None:
        state["distill"] = distiller.state_dict()
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model, opt, scaler, distiller, cfg) -> tuple[int, list]:
    if not path.exists():
        raise RuntimeError(f"--resume: no checkpoint at {path}; start without --resume")
    ck = _read(path)
    if "optimizer" not in ck:
        raise RuntimeError(f"{path} holds weights only (no optimizer/RNG state); it cannot be resumed exactly")
    if int(ck["total_iterations"]) != cfg.iterations or int(ck["seed"]) != cfg.seed:
        raise RuntimeError(f"{path} was written by a run of {int(ck['total_iterations'])} iterations with seed "
                           f"{int(ck['seed'])}; this config has {cfg.iterations} and {cfg.seed} (the schedule would "
                           "differ): use the same config to resume")
    _load_state(model, ck["model"], path)
    if distiller is not None:
        if "distill" not in ck:
            raise RuntimeError(f"{path} has no distillation modules; it was not written by this distillation config")
        _load_state(distiller, ck["distill"], path)
    opt.load_state_dict(ck["optimizer"])
    if scaler is not None and "scaler" in ck:
        scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["torch_rng"])
    return int(ck["iteration"]), ck["history"].tolist()


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)   # never unpickles code
    except Exception as exc:  # pickle/zip errors come in many types
        raise RuntimeError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None


def _load_state(module, state: dict, path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        detail = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                  f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                  (f"{len(shape)} with other shapes (e.g. {shape[0]}: checkpoint {tuple(state[shape[0]].shape)}, "
                   f"config {tuple(own[shape[0]].shape)})") if shape else ""]
        raise RuntimeError(f"{path} does not match the model config: " + "; ".join(x for x in detail if x))
    module.load_state_dict(state)


def load_weights(model, path: str | Path) -> None:
    p = Path(path)
    if not p.exists():
        raise RuntimeError(f"checkpoint not found: {p}")
    ck = _read(p)
    _load_state(model, ck["model"] if isinstance(ck, dict) and isinstance(ck.get("model"), dict) else ck, p)
