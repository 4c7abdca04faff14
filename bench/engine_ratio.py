"""Engine time of several ONNX models side by side, as ratios to the first: one ONNX Runtime
session each (CPU, the same thread count), timed in interleaved rounds so that every model sees
the same machine state (these machines are noisy; only ratios from one run mean anything).

Used to ask whether a candidate default model fits the embedded model's engine-time budget::

    python bench/engine_ratio.py ms_perception/models/default_gaff_three_branch.onnx wider.onnx

Inputs are random uint8 images at each model's own input shapes (a pixel's value does not change a
convolution's cost); an in-graph NMS (``train graph-edit --nms``) gets the pipeline's default
thresholds. Prints each model's median and p90 milliseconds and its median ratio to the first.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

# the pipeline's defaults for a graph with the NMS in it (ms_perception.core.pipeline.PipelineConfig)
NMS_FEEDS = {"score_threshold": np.array([0.3], np.float32), "nms_iou": np.array([0.5], np.float32),
             "max_detections": np.array([100], np.int64)}
DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


def feeds_for(session, rng) -> dict:
    out = {}
    for i in session.get_inputs():
        if i.name in NMS_FEEDS:
            out[i.name] = NMS_FEEDS[i.name]
            continue
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if i.type not in DTYPES:
            raise SystemExit(f"{i.name}: input type {i.type} is not an image (uint8) or float input; "
                             "this bench feeds images only")
        out[i.name] = rng.integers(0, 256, shape).astype(DTYPES[i.type])
    return out


def measure(paths: list[str], rounds: int, warmup: int, threads: int) -> dict:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in paths]
    feeds = [feeds_for(s, rng) for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    times = np.zeros((rounds, len(paths)))
    for r in range(rounds):
        for k in np.roll(np.arange(len(paths)), r):   # the order rotates: no model always runs first
            t = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[r, k] = 1000 * (time.perf_counter() - t)
    ratio = times / times[:, :1]
    return {"threads": threads, "rounds": rounds, "models": [
        {"model": p, "median_ms": round(float(np.median(times[:, k])), 3),
         "p90_ms": round(float(np.percentile(times[:, k], 90)), 3),
         "ratio_to_first": round(float(np.median(ratio[:, k])), 3)} for k, p in enumerate(paths)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="ONNX files; the first is the reference")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rep = measure(a.models, a.rounds, a.warmup, a.threads)
    if a.json:
        from ms_perception.core.jsonio import dumps
        print(dumps(rep))
        return 0
    print(f"{rep['rounds']} interleaved rounds, {rep['threads']} thread(s); ratio = median of per-round ratios")
    for m in rep["models"]:
        print(f"  {m['model']}: median {m['median_ms']} ms, p90 {m['p90_ms']} ms, ratio {m['ratio_to_first']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
