"""Parameters, multiply-accumulates (torch.utils.flop_counter) and CPU latency of a model."""
from __future__ import annotations

import time

import torch
from ms_perception_training.models.multispectral import MultispectralModel


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_inputs(model: MultispectralModel, batch: int = 1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    v = torch.randn(batch, 3, cfg.input.height, cfg.input.width, generator=g) if cfg.uses_visible else None
    t = torch.randn(batch, 1, *cfg.input.thermal_hw, generator=g) if cfg.uses_thermal else None
    return v, t


@torch.no_grad()
def count_macs(model: MultispectralModel, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (FlopCounterMode counts 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    v, t = example_inputs(model, batch)
    with FlopCounterMode(display=False) as fc:
        model(v, t)
    return fc.get_total_flops() // 2


@torch.no_grad()
def cpu_latency_ms(model: MultispectralModel, runs: int = 5, warmup: int = 1, threads: int | None = None) -> dict:
    """Median and min wall time of a batch-1 forward on the CPU (eval mode)."""
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    v, t = example_inputs(model, 1)
    for _ in range(warmup):
        model(v, t)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(v, t)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 2), "min_ms": round(times[0], 2), "runs": runs,
            "threads": torch.get_num_threads()}


def model_info(model: MultispectralModel, latency_runs: int = 5) -> dict:
    cfg = model.cfg
    info = {"name": cfg.name, "task": cfg.task, "scheme": cfg.fusion.scheme, "fusion": cfg.fusion.module,
            "input": [cfg.input.width, cfg.input.height], "thermal_input": list(cfg.input.thermal_hw[::-1]),
            "params": count_params(model), "macs": count_macs(model)}
    if cfg.paper_params_m:
        info["paper_params"] = {"params": int(round(cfg.paper_params_m * 1e6)), "source": cfg.paper_source,
                                "difference_percent": round(100 * (info["params"] / (cfg.paper_params_m * 1e6) - 1), 2)}
    parts = {name: count_params(mod) for name, mod in model.encoder.named_children()}  # backbones, fusion, cfl
    parts.update({name: count_params(mod) for name, mod in model.named_children() if name != "encoder"})
    info["params_by_part"] = parts
    if latency_runs > 0:
        info["cpu_latency"] = cpu_latency_ms(model, latency_runs)
    return info
