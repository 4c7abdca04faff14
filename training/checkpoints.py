"""Checkpoints: written atomically, read with ``weights_only=True`` (never unpickles code), and
everything exact resume needs (weights, optimizer, AMP scaler, distiller modules, iteration, RNG)."""
from __future__ import annotations

from pathlib import Path

import torch


def save_checkpoint(path: Path, model, opt, scaler, distiller, it: int, history: list, cfg, lineage: str = "",
                    extra: dict | None = None):
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
    state.update(extra or {})
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model, opt, scaler, distiller, cfg) -> tuple[int, list, dict]:
    """Restore a run from ``path``; returns the iteration, the loss history and the run's time so far
    (``progress``: seconds, images, wait, compute, and ``from_iteration``, the first iteration they
    cover: 0, or the iteration a checkpoint written before the timing was kept resumed from)."""
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
    progress = {k: float(v) for k, v in ck.get("progress", {}).items()} or \
        {"seconds": 0.0, "images": 0.0, "wait": 0.0, "compute": 0.0, "from_iteration": float(ck["iteration"])}
    return int(ck["iteration"]), ck["history"].tolist(), progress


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
    """Weights from a checkpoint, or from an ONNX export of the same model config (``.onnx``: see
    :func:`state_from_onnx`; fine-tune with ``fit.bn: frozen``)."""
    p = Path(path)
    if not p.exists():
        raise RuntimeError(f"checkpoint not found: {p}")
    if p.suffix == ".onnx":
        _load_state(model, state_from_onnx(model, p), p)
        return
    ck = _read(p)
    _load_state(model, ck["model"] if isinstance(ck, dict) and isinstance(ck.get("model"), dict) else ck, p)


def average_checkpoints(paths: list, weights: list[float] | None = None) -> dict:
    """A weights-only checkpoint whose floating-point tensors are the convex combination
    sum_i w_i * theta_i of the checkpoints' (default: equal weights); integer buffers (BatchNorm's
    batch counters) come from the first. Weight-space ensembling of a fine-tune with the model it
    started from (WiSE-FT, Wortsman et al., CVPR 2022: theta = (1 - a) theta_0 + a theta_1) keeps
    much of what each is good at, at one model's cost; the checkpoints must come from the same
    config (and, for the average to mean anything, from one initialization). The first one's lineage
    is kept."""
    if len(paths) < 2:
        raise ValueError("average: give at least two checkpoints")
    w = [1.0 / len(paths)] * len(paths) if weights is None else [float(x) for x in weights]
    if len(w) != len(paths):
        raise ValueError(f"average: {len(paths)} checkpoints but {len(w)} weights; give one weight per checkpoint")
    if min(w) < 0 or abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"average: the weights must be >= 0 and sum to 1 (got {w}, sum {sum(w):g})")
    cks = [_read(Path(p)) for p in paths]
    states = [ck["model"] if isinstance(ck.get("model"), dict) else ck for ck in cks]
    first = states[0]
    for p, st in zip(paths[1:], states[1:]):
        if set(st) != set(first):
            diff = sorted(set(st) ^ set(first))
            raise ValueError(f"average: {p} has other tensors than {paths[0]} (e.g. {diff[:3]}); average "
                             "checkpoints of the same model config")
        bad = [k for k in first if st[k].shape != first[k].shape]
        if bad:
            raise ValueError(f"average: {p}: {bad[0]} is {tuple(st[bad[0]].shape)}, {tuple(first[bad[0]].shape)} in "
                             f"{paths[0]}; average checkpoints of the same model config")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            acc = torch.zeros_like(v, dtype=torch.float64)
            for wi, st in zip(w, states):
                acc += wi * st[k].to(torch.float64)
            out[k] = acc.to(v.dtype)
        else:
            out[k] = v.clone()
    ck = {"model": out, "averaged_from": [str(p) for p in paths], "average_weights": w}
    if isinstance(cks[0], dict) and "lineage" in cks[0]:
        ck["lineage"] = cks[0]["lineage"]
    return ck


ONNX_PREFIX = "w.model."      # the export wrapper's name for the model (export/onnx_export.py::ExportWrapper)


@torch.no_grad()
def state_from_onnx(model, path: str | Path) -> dict:
    """A state dict for ``model`` (built from the config the ONNX file was exported from) that
    computes what the export computes, read from the export's initializers (named after the
    model's parameters). The export folded each BatchNorm into the convolution before it
    (``bn_fold.fold_batchnorm``: w' = w·γ/sqrt(σ²+ε), b' = (b−μ)·γ/sqrt(σ²+ε)+β): the convolution
    takes w' (and b' when it has a bias), and the BatchNorm becomes the identity plus b': γ = 1,
    β = b' (or 0), μ = 0, σ² = 1 − ε. Exact in eval mode, so fine-tune with ``fit.bn: frozen``
    (in training mode a BatchNorm would renormalize by the batch). The folded thermal repeat
    (one input channel with the three kernels summed) becomes three channels of a third each:
    the same function of a repeated gray image. A module registered under two names (an encoder's
    ``reference`` backbone) is read under its first name. What the export pruned (the box branch
    of a mono head whose boxes the graph does not output) starts from the main head's weights of
    the same name, and is listed in ``model.onnx_init_filled`` for the log."""
    import onnx
    from onnx import numpy_helper
    from torch import nn
    p = Path(path)
    try:
        graph = onnx.load(str(p), load_external_data=False).graph
    except Exception as exc:  # protobuf errors come in many types
        raise RuntimeError(f"{p}: not a readable ONNX model ({exc})") from None
    inits = {i.name[len(ONNX_PREFIX):]: i for i in graph.initializer if i.name.startswith(ONNX_PREFIX)}
    # the exporter keeps one initializer of several equal ones (the zero biases of an untrained layer)
    # and gives the others by an Identity node named after them
    same_as = {n.output[0][len(ONNX_PREFIX):]: n.input[0][len(ONNX_PREFIX):] for n in graph.node
               if n.op_type == "Identity" and n.output[0].startswith(ONNX_PREFIX) and n.input[0].startswith(ONNX_PREFIX)}
    if not inits:
        raise RuntimeError(f"{p} has no weights named {ONNX_PREFIX}*: it was not exported by `train export`")
    own = model.state_dict()
    first = {}                     # tensor -> its first name (state_dict repeats aliased modules)
    for k, v in model.state_dict(keep_vars=True).items():
        first.setdefault(id(v), k)
    alias = {k: first[id(v)] for k, v in model.state_dict(keep_vars=True).items() if first[id(v)] != k}
    main = getattr(model, "main_branch", None)
    filled: list = []
    state: dict = {}
    used: set = set()

    def take(name: str) -> torch.Tensor:
        def resolve(n):
            return n if n in inits else (same_as[n] if same_as.get(n) in inits else None)
        got = resolve(name)
        if got is None and main and name.startswith("heads.") and name.split(".")[1] != main:
            got = resolve(".".join(["heads", main] + name.split(".")[2:]))
            if got is not None:
                filled.append(name)
        if got is None:
            raise RuntimeError(f"{p} has no weight {ONNX_PREFIX}{name}: it was exported from another model config "
                               "(build the model from the config named in its card)")
        name = got
        used.add(name)
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    bn_of = {}                     # BatchNorm module name -> the convolution it was folded into
    names = {m: n for n, m in model.named_modules()}
    for parent in model.modules():
        kids = list(parent.named_children())
        for (_, a), (_, b) in zip(kids, kids[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.num_features == a.out_channels:
                bn_of[names[b]] = names[a]
    conv_of = {c: bn for bn, c in bn_of.items()}
    for key, ref in own.items():
        if key in alias:
            continue
        mod, _, leaf = key.rpartition(".")
        if mod in bn_of:           # a folded BatchNorm: identity plus the folded bias
            conv = model.get_submodule(bn_of[mod])
            if leaf == "weight":
                state[key] = torch.ones_like(ref)
            elif leaf == "running_var":      # 1 / sqrt(σ² + ε) = 1
                state[key] = torch.full_like(ref, 1.0 - model.get_submodule(mod).eps)
            elif leaf == "bias":
                state[key] = take(bn_of[mod] + ".bias") if conv.bias is None else torch.zeros_like(ref)
            elif leaf == "running_mean":
                state[key] = torch.zeros_like(ref)
            else:                  # num_batches_tracked
                state[key] = ref.clone()
            continue
        if mod in conv_of and leaf == "bias":
            state[key] = take(key)
            continue
        w = take(key) if key in inits or not key.endswith("num_batches_tracked") else ref.clone()
        if w.shape != ref.shape and leaf == "weight" and w.ndim == 4 and ref.shape[1] == w.shape[1] + 2:
            c0 = w.shape[1] - 1    # the folded thermal repeat: channel c0 held the three kernels summed
            w = torch.cat([w[:, :c0], (w[:, c0:] / 3).repeat(1, 3, 1, 1)], 1)
        state[key] = w.to(ref.dtype)
    for key, src in alias.items():
        state[key] = state[src]
    unused = sorted(set(inits) - used)
    if unused:
        raise RuntimeError(f"{p} has {len(unused)} weights this model config does not have (e.g. {unused[:2]}): it "
                           "was exported from another config (build the model from the config named in its card)")
    model.onnx_init_filled = filled
    return state
