"""Teacher vs student in fp16 on a GPU with PyTorch, the closest thing to TensorRT on machines
where TensorRT cannot be installed (issue 16's GPU goal).

    python bench/gpu_speed.py [--size 640x512] [--iterations 200] [--modes eager,cudagraph,compile]
                              [--roles teacher,student,paper_teacher,paper_student] [--json OUT]

Each role is a preset of ``config/models`` (the same presets ``ms-perception bench`` exports to
ONNX; untrained weights: time does not depend on them). A model is prepared as the export
prepares it: BatchNorm folded into the convolutions, the thermal repeat folded into the first
convolution, wrapped with the export wrapper (normalization, score activation, decoded boxes:
the graph a TensorRT engine would run), then converted to fp16 and run at batch 1. Modes:

- ``eager``: plain PyTorch calls (kernel launch overhead included);
- ``cudagraph``: one CUDA graph capture, replayed (no launch overhead: what TensorRT's enqueue of a
  built engine amounts to);
- ``compile``: ``torch.compile(mode="max-autotune")``, which fuses kernels (the nearest thing to
  TensorRT's layer fusion and tactic choice) and replays CUDA graphs; compiling takes minutes.

The models are timed round-robin, one call each per round, with CUDA events, so that a change of
clock or a noisy neighbour hits every model alike; the report gives each model's median and p90
in ms and the student / teacher ratios of the medians. A parity line gives the largest score
difference between the timed model (folded, fp16) and the unfolded fp32 model on the same input
(what is timed must compute the same detector). On a machine without CUDA it runs in fp32 on the CPU in eager mode only and says so:
that run checks the script, not the GPU figure.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from ms_perception.core import jsonio

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"teacher": "gaff_r18_retinanet.yaml", "student": "md_student_r18_retinanet.yaml",
           "paper_teacher": "md_paper_gaff_teacher_r18_retinanet.yaml",
           "paper_student": "md_paper_student_r18_retinanet.yaml"}
PAIRS = (("student", "teacher"), ("paper_student", "paper_teacher"))
MODES = ("eager", "cudagraph", "compile")


class GpuSpeedError(ValueError):
    pass


class Prepared(torch.nn.Module):
    """Normalization (in the model's dtype) + the export wrapper fed normalized floats."""

    def __init__(self, wrapper, cfg):
        super().__init__()
        self.wrapper = wrapper
        self.register_buffer("v_mean", torch.tensor(cfg.input.visible_mean).view(1, 3, 1, 1))
        self.register_buffer("v_std", torch.tensor(cfg.input.visible_std).view(1, 3, 1, 1))
        self.t_mean, self.t_std = cfg.input.thermal_mean, cfg.input.thermal_std

    def forward(self, visible, thermal):
        dt = self.v_mean.dtype
        v = (visible.to(dt) / 255.0 - self.v_mean) / self.v_std if visible is not None else None
        t = (thermal.to(dt) / 255.0 - self.t_mean) / self.t_std if thermal is not None else None
        return self.wrapper(v, t)


def prepare(role: str, size_wh: tuple[int, int], device: torch.device, dtype: torch.dtype):
    """(folded module in dtype on device, uint8 inputs on device, the unfolded fp32 module on the CPU
    (the reference for parity), n parameters)."""
    from ms_perception.core.anchors import grid_anchors
    from ms_perception_training.export.onnx_export import ExportWrapper
    from ms_perception_training.models.bn_fold import fold_batchnorm, fold_thermal_repeat
    from ms_perception_training.models.build import build_model
    from ms_perception_training.models.config import load_model_config
    mcfg = load_model_config(ROOT / "config" / "models" / PRESETS[role])
    w, h = size_wh
    try:
        mcfg = dataclasses.replace(mcfg, input=dataclasses.replace(mcfg.input, width=w, height=h))
    except ValueError as e:
        raise GpuSpeedError(f"--size {w}x{h} does not suit {role}: {e}") from None
    torch.manual_seed(0)
    unfolded = build_model(mcfg).eval()
    params = sum(p.numel() for p in unfolded.parameters())
    model = copy.deepcopy(unfolded)
    fold_batchnorm(model)
    fold_thermal_repeat(model)
    g = torch.Generator().manual_seed(1)
    th, tw = mcfg.input.thermal_hw
    v = torch.randint(0, 256, (1, 3, h, w), generator=g).to(torch.uint8) if mcfg.uses_visible else None
    t = torch.randint(0, 256, (1, 1, th, tw), generator=g).to(torch.uint8) if mcfg.uses_thermal else None
    with torch.no_grad():
        probe = model(None if v is None else v.float(), None if t is None else t.float())
    anchors = grid_anchors(model.anchor_levels(), [tuple(x.shape[-2:]) for x in probe.main.cls_logits])
    ref = Prepared(ExportWrapper(unfolded, False, True, anchors), mcfg).eval()
    net = Prepared(ExportWrapper(model, False, True, anchors), mcfg).eval().to(device=device, dtype=dtype)
    move = (lambda x: None if x is None else x.to(device))
    return net, (move(v), move(t)), ref, params


def runner(net, inputs, mode: str, device: torch.device):
    """A no-argument callable that runs one forward pass in ``mode`` and returns its outputs."""
    v, t = inputs
    if mode == "eager":
        return lambda: net(v, t)
    if device.type != "cuda":
        raise GpuSpeedError(f"mode {mode} needs a CUDA device; on this machine use --modes eager")
    if mode == "compile":
        fn = torch.compile(net, mode="max-autotune")
        for _ in range(3):                                  # compile + autotune + graph capture
            fn(v, t)
        return lambda: fn(v, t)
    s = torch.cuda.Stream()                                 # cudagraph
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            net(v, t)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = net(v, t)

    def replay():
        graph.replay()
        return static                                       # the captured outputs, rewritten by the replay
    return replay


def time_models(roles, size_wh=(640, 512), iterations: int = 200, warmup: int = 20, modes=("eager",),
                device: str = "auto") -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    for m in modes:
        if m not in MODES:
            raise GpuSpeedError(f"unknown mode {m!r}; use one of {', '.join(MODES)}")
        if m != "eager" and dev.type != "cuda":
            raise GpuSpeedError(f"mode {m} needs a CUDA device (none here); use --modes eager")
    unknown = [r for r in roles if r not in PRESETS]
    if unknown:
        raise GpuSpeedError(f"unknown role(s) {unknown}; use {', '.join(PRESETS)}")
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (no CUDA: fp32, eager)",
              "dtype": str(dtype).replace("torch.", ""), "size": f"{size_wh[0]}x{size_wh[1]}", "batch": 1,
              "iterations": iterations, "torch": torch.__version__, "models": {}, "ratios": {}}
    with torch.inference_mode():
        nets = {}
        for r in roles:
            net, inputs, ref, params = prepare(r, size_wh, dev, dtype)
            ref_scores = ref(*(None if x is None else x.cpu() for x in inputs))[0].float()
            got = net(*inputs)[0].float().cpu()
            nets[r] = (net, inputs)
            report["models"][r] = {"preset": PRESETS[r], "params_m": round(params / 1e6, 2),
                                   "score_max_abs_vs_unfolded_fp32": float((got - ref_scores).abs().max())}
        for mode in modes:
            calls = {r: runner(n, i, mode, dev) for r, (n, i) in nets.items()}
            times = {r: [] for r in calls}
            for k in range(warmup + iterations):
                for r, call in calls.items():
                    if dev.type == "cuda":
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record()
                        call()
                        b.record()
                        b.synchronize()
                        ms = a.elapsed_time(b)
                    else:
                        t0 = time.perf_counter()
                        call()
                        ms = (time.perf_counter() - t0) * 1e3
                    if k >= warmup:
                        times[r].append(ms)
            for r, ts in times.items():
                ts.sort()
                report["models"][r][mode] = {"median_ms": round(statistics.median(ts), 4),
                                             "p90_ms": round(ts[min(len(ts) - 1, int(0.9 * len(ts)))], 4)}
            for s, t in PAIRS:
                if s in times and t in times:
                    report["ratios"][f"{s}/{t} {mode}"] = round(
                        report["models"][s][mode]["median_ms"] / report["models"][t][mode]["median_ms"], 4)
    return report


def print_report(rep: dict) -> None:
    print(f"device {rep['device']}, {rep['dtype']}, {rep['size']}, batch 1, {rep['iterations']} interleaved rounds, "
          f"torch {rep['torch']}")
    for r, m in rep["models"].items():
        modes = "  ".join(f"{k} {v['median_ms']:.3f} ms (p90 {v['p90_ms']:.3f})" for k, v in m.items() if isinstance(v, dict))
        print(f"  {r:14s} {m['params_m']:6.2f} M params  {modes}  score diff vs unfolded fp32 {m['score_max_abs_vs_unfolded_fp32']:.2e}")
    for k, v in rep["ratios"].items():
        goal = "   goal <= 0.55 (paper: 6.55 / 10.97 ms = 0.60)" if k.startswith("paper_student") else ""
        print(f"  {k}: {v:.4f}{goal}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="640x512")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--modes", default="eager,cudagraph,compile")
    ap.add_argument("--roles", default=",".join(PRESETS))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--json", help="also write the report here")
    a = ap.parse_args(argv)
    try:
        w, h = (int(x) for x in a.size.lower().split("x"))
    except ValueError:
        print(f"--size {a.size!r}: give WIDTHxHEIGHT, e.g. 640x512", file=sys.stderr)
        return 2
    if a.iterations < 1:
        print("--iterations must be at least 1", file=sys.stderr)
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: PyTorch sees no CUDA device here; use --device cpu or run on a GPU machine",
              file=sys.stderr)
        return 2
    try:
        rep = time_models([r for r in a.roles.split(",") if r], (w, h), a.iterations, a.warmup,
                          tuple(m for m in a.modes.split(",") if m), a.device)
    except GpuSpeedError as e:
        print(str(e), file=sys.stderr)
        return 2
    print_report(rep)
    if a.json:
        Path(a.json).write_text(jsonio.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
