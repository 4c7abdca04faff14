"""``ms-perception bench``: engine time of the GAFF teachers and the MD students, the pipeline's
own overhead for every model the project ships (the embedded default model included), and any
ONNX detector the user supplies (``--peer``), measured side by side in one process, interleaved
(this machine is noisy, so only ratios measured in the same run are meaningful).

The process never imports torch: when no models are given, the two full-size presets are
exported by a *child* process (``ms-perception train export``) into a cache folder, and this
process only loads the ONNX files. The peak resident memory reported is this process's.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ms_perception.core.frames import Frame, FramePair
from ms_perception.core.pairing import ApproximateTimePairer
from ms_perception.core.pipeline import Pipeline, PipelineConfig
from ms_perception.core.postprocess import ModelOutputError
from ms_perception.engines import create_engine

# teacher/student: today's MD pair (GAFF at C4 with a shared layer4, 256-channel FPN and 4 x 256
# head); paper_teacher/paper_student: the pair with the MD paper's parameter counts (two complete
# ResNet-18 streams, light neck and head; thesis Table 5.4); three_branch: the active-learning
# model, whose pipeline also computes the inconsistency score; default: the embedded model
PRESETS = {"teacher": "gaff_r18_retinanet.yaml", "student": "md_student_r18_retinanet.yaml",
           "paper_teacher": "md_paper_gaff_teacher_r18_retinanet.yaml",
           "paper_student": "md_paper_student_r18_retinanet.yaml",
           "three_branch": "gaff_three_branch_r18_retinanet.yaml"}
ROLES = tuple(PRESETS) + ("default", "default_demo_rig")
STUDENTS = ("student", "paper_student", "default")
# the embedded default model also on the rig it ships with (the demo's: visible 640x512, thermal
# 320x256, 4x fewer thermal pixels); the "default" role gives it a thermal camera as large as the
# visible one (its card's thermal input equals its visible input), the heavier case
RIG_THERMAL_FACTOR = {"default_demo_rig": 4}
_PC = PipelineConfig()
NMS_DEFAULTS = {"score_threshold": _PC.score_threshold, "nms_iou": _PC.nms_iou, "max_detections": _PC.max_detections}
# bumped when `train export` makes a different graph from the same preset, so cached exports of an
# earlier exporter are not timed as today's (2: the repeated thermal channels folded into the stem)
EXPORT_REVISION = 2


class BenchError(RuntimeError):
    pass


def config_dir() -> Path:
    """config/ of a source checkout, else the installed share/ms_perception/config."""
    here = Path(__file__).resolve().parent.parent / "config"
    if (here / "models").is_dir():
        return here
    return Path(sys.prefix) / "share" / "ms_perception" / "config"


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ms_perception" / "bench"


def ensure_models(cache: Path) -> dict[str, Path]:
    """Export the presets (untrained weights: timing does not depend on them) if missing; the
    embedded default model comes with the package."""
    from ms_perception.build import default_model
    out = {}
    for role, preset in PRESETS.items():
        path = cache / f"{Path(preset).stem}.r{EXPORT_REVISION}.onnx"
        if path.exists() and _stale(path):
            print(f"{path} was exported by an earlier release (no in-graph inconsistency means); re-exporting",
                  flush=True)
            path.unlink()
        if not path.exists():
            cfg = config_dir() / "models" / preset
            if not cfg.exists():
                raise BenchError(f"preset {cfg} not found; pass --teacher and --student ONNX files instead")
            print(f"exporting {preset} -> {path} (child process with torch)", flush=True)
            cache.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([sys.executable, "-m", "ms_perception.cli", "train", "export", "--config", str(cfg),
                                   "--out", str(path), "--json"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BenchError(f"exporting {preset} failed ({proc.stderr.strip().splitlines()[-1:]}); install the "
                                 "training extra (`pip install torch==2.13.0 && pip install -e .[train]`) or pass "
                                 "--teacher/--student ONNX files exported elsewhere")
        out[role] = path
    out["default"] = default_model()
    return out


def _stale(path: Path) -> bool:
    """A cached three-branch export without the in-graph inconsistency output (train export adds it now)."""
    from ms_perception.core.card import CardError, read_card
    from ms_perception.core.inconsistency import INCONSISTENCY_OUTPUT
    try:
        card = read_card(path)
    except CardError:
        return True
    outs = {o.name for o in card.outputs}
    return card.task == "detection" and {"scores_visible", "scores_thermal"} <= outs and INCONSISTENCY_OUTPUT not in outs


class Peer:
    """Any ONNX model the user supplies, timed as a bare ONNX Runtime session with the engine's own
    settings: no card, no pre- or postprocessing (its engine time is compared with ours)."""

    def __init__(self, name: str, path: Path, size_wh: tuple[int, int], threads: int, seed: int):
        import onnxruntime as ort

        from ms_perception.engines.onnxruntime_engine import session_options
        if not Path(path).exists():
            raise BenchError(f"--peer {path}: file not found")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises several exception types
            raise BenchError(f"--peer {path}: ONNX Runtime cannot load it ({exc})") from None
        self.name, self.path = name, Path(path)
        rng = np.random.default_rng(seed)
        w, h = size_wh
        self.feeds, self.shapes = {}, {}
        for i in self.session.get_inputs():
            shape = []
            for k, d in enumerate(i.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif k == 0:
                    shape.append(1)                                  # batch
                elif len(i.shape) == 4 and k in (2, 3):
                    shape.append(h if k == 2 else w)                 # NCHW image: the bench size
                else:
                    raise BenchError(f"--peer {path}: input {i.name!r} has a free dimension {d!r} at axis {k} that "
                                     "bench cannot choose; export the model with fixed shapes (or NCHW images)")
            dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
                     "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(i.type)
            if dtype is None:
                raise BenchError(f"--peer {path}: input {i.name!r} has type {i.type}, which bench cannot feed")
            x = rng.integers(0, 256, shape) if dtype == np.uint8 else rng.random(shape)
            if i.name in NMS_DEFAULTS and shape == [1]:   # our in-graph NMS's thresholds: the pipeline's defaults
                x = np.array([NMS_DEFAULTS[i.name]])
            self.feeds[i.name] = x.astype(dtype)
            self.shapes[i.name] = shape
        self.engine_ms: list[float] = []

    def run(self) -> float:
        t0 = time.perf_counter()
        self.session.run(None, self.feeds)
        return (time.perf_counter() - t0) * 1e3


def _frames(card, size_wh: tuple[int, int], seed: int, factor: int | None = None) -> tuple[Frame, Frame | None]:
    """A realistic pair: visible rgb8 at ``size_wh``, thermal mono16 at the model's thermal grid
    scaled to the camera (the MD student's camera really has fewer pixels); no thermal frame for a
    visible-only model (the RGB-only student). ``factor``: the thermal camera's pixel factor below
    the visible one when the rig is known (default: the card's visible / thermal input areas)."""
    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
    w, h = size_wh
    if factor is None:
        factor = 1
        if card.thermal_hw is not None:
            area = (card.visible_hw[0] * card.visible_hw[1]) / (card.thermal_hw[0] * card.thermal_hw[1])
            factor = min((1, 4, 16, 64), key=lambda f: abs(f - max(1, round(area))))
    sp = next(iter(SyntheticGenerator(SynthConfig(width=w, height=h, thermal_factor=factor), seed).pairs(1)))
    vis = Frame(sp.visible, sp.stamp_visible_ns, "rgb8", "visible")
    return vis, (Frame(sp.thermal_raw, sp.stamp_thermal_ns, "mono16", "thermal") if card.uses_thermal else None)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_bench(models: dict[str, Path], size_wh=(640, 512), iterations: int = 20, warmup: int = 3,
              threads: int = 0, backend: str = "onnxruntime", seed: int = 0,
              peers: dict[str, Path] | None = None) -> dict:
    """models: role -> ONNX path for "teacher", "student" and optionally "paper_teacher",
    "paper_student", "three_branch", "default". peers: name -> any ONNX model, timed bare."""
    if iterations < 1 or warmup < 0:
        raise BenchError(f"need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")
    rss_start = _peak_rss_mb()
    runs = {}
    missing = {"teacher", "student"} - set(models)
    if missing:
        raise BenchError(f"bench needs a teacher and a student model; missing {sorted(missing)}")
    if "default" in models and "default_demo_rig" not in models:
        models = {**models, "default_demo_rig": models["default"]}
    roles = [r for r in ROLES if r in models]
    for role in roles:
        path = models[role]
        engine = create_engine(backend, path, threads=threads) if backend.startswith("onnxruntime") \
            else create_engine(backend, path)
        vis, th = _frames(engine.card, size_wh, seed, RIG_THERMAL_FACTOR.get(role))
        cfg = PipelineConfig(assume_same_fov=True)
        runs[role] = {"engine": engine, "pipe": Pipeline(engine, cfg), "vis": vis, "th": th,
                      "pairer": ApproximateTimePairer(0.05, 10), "engine_ms": [], "pipeline_ms": [],
                      "overhead_ms": [], "stages": {}, "invalid_outputs": 0, "first_invalid": ""}
    peer_runs = [Peer(name, p, size_wh, threads, seed) for name, p in (peers or {}).items()]
    step = 100_000_000

    def one(r: dict, i: int) -> tuple[float, dict] | None:
        """One pair through the role's pipeline: (total ms, stage ms), or None for an invalid output."""
        stamp = (i + 1) * step
        t0 = time.perf_counter()
        vis = Frame(r["vis"].data, stamp, r["vis"].encoding, "visible")
        if r["th"] is None:   # visible-only model: no pairing
            pair = FramePair(vis, None)
        else:
            r["pairer"].add("thermal", Frame(r["th"].data, stamp + 1_000_000, r["th"].encoding, "thermal"))
            pair = r["pairer"].add("visible", vis)
            if pair is None:
                raise BenchError("the pairer did not pair two frames 1 ms apart; this is a bug")
        try:
            res = r["pipe"].process(pair)
        except ModelOutputError as exc:   # counted and reported; the timing of that run is not used
            r["invalid_outputs"] += 1
            r["first_invalid"] = r["first_invalid"] or str(exc)
            return None
        return (time.perf_counter() - t0) * 1e3, res.timings_ms

    for i in range(warmup + iterations):
        for peer in peer_runs:
            ms = peer.run()
            if i >= warmup:
                peer.engine_ms.append(ms)
        for role in roles:       # interleaved: every model sees the same machine state
            r = runs[role]
            got = one(r, i)
            if got is None or i < warmup:
                continue
            total, stages = got
            r["engine_ms"].append(stages["infer"])
            r["pipeline_ms"].append(total)
            r["overhead_ms"].append(total - stages["infer"])
            for k, v in stages.items():
                r["stages"].setdefault(k, []).append(v)
    # each model alone, back to back, as a node runs it (one model per process): the interleaved
    # runs above leave each model's buffers cold in the caches, which inflates the small costs
    alone = {}
    for role in roles:
        r, eng, ovh = runs[role], [], []
        for i in range(warmup + iterations):
            got = one(r, warmup + iterations + i)
            if got is not None and i >= warmup:
                eng.append(got[1]["infer"])
                ovh.append(got[0] - got[1]["infer"])
        if eng:
            alone[role] = {"engine_ms": round(float(np.median(eng)), 3), "overhead_ms": round(float(np.median(ovh)), 3),
                           "overhead_ratio": round(float(np.median(ovh)) / float(np.median(eng)), 4)}
    for role, r in runs.items():
        if not r["engine_ms"]:
            raise BenchError(f"{models[role]}: every run gave non-finite or out-of-range outputs ({r['first_invalid']})")
    med = {role: {k: float(np.median(r[k])) for k in ("engine_ms", "pipeline_ms", "overhead_ms")}
           for role, r in runs.items()}
    for role, r in runs.items():
        med[role]["stages_ms"] = {k: round(float(np.median(v)), 3) for k, v in r["stages"].items() if k != "infer"}
        med[role]["model"] = r["engine"].card.name
        med[role]["visible_hw"] = list(r["engine"].card.visible_hw)
        med[role]["thermal_hw"] = list(r["engine"].card.thermal_hw) if r["th"] is not None else None
        med[role]["thermal_camera_hw"] = list(r["th"].shape_hw) if r["th"] is not None else None
        med[role]["invalid_output_runs"] = r["invalid_outputs"]
    ratios = {role: med[role]["overhead_ms"] / med[role]["engine_ms"] for role in roles}
    extra = {}
    if "paper_teacher" in med and "paper_student" in med:
        extra["paper_student_teacher_ratio"] = round(med["paper_student"]["engine_ms"] / med["paper_teacher"]["engine_ms"], 4)
    if peer_runs:
        extra["peers"] = {p.name: {"path": str(p.path), "engine_ms": round(float(np.median(p.engine_ms)), 3),
                                   "inputs": p.shapes} for p in peer_runs}
        # ours / theirs, engine time: <= 1.0 means our model is at least as fast
        extra["peer_ratios"] = {p.name: {role: round(med[role]["engine_ms"] / float(np.median(p.engine_ms)), 4)
                                         for role in roles if role in STUDENTS} for p in peer_runs}
    return {
        "backend": runs["teacher"]["engine"].name, "size": list(size_wh), "iterations": iterations,
        "threads": threads or "default", "cpu_count": os.cpu_count(),
        **{role: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in med[role].items()} for role in roles},
        "overhead_ratio": round(max(ratios.values()), 4),   # the worst model's
        "overhead_ratio_by_model": {role: round(v, 4) for role, v in ratios.items()},
        "alone": alone,
        "overhead_ratio_alone": round(max(a["overhead_ratio"] for a in alone.values()), 4) if alone else None,
        "student_teacher_ratio": round(med["student"]["engine_ms"] / med["teacher"]["engine_ms"], 4),
        **extra,
        "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_models_mb": round(rss_start, 1),
        "torch_imported": "torch" in sys.modules,
    }


FRAME_INTERVAL_MS = 1000.0 / 30     # a 30 fps camera


def run_replay_bench(model: Path, pairs: int = 100, rounds: int = 3, seed: int = 0) -> dict:
    """Replay of one synthetic bag (the demo's rig: visible rgb8 640x512, thermal mono16 320x256,
    mcap) through ``model``, six ways interleaved round by round: capture off with the reader
    thread; capture on, writing to disk (top 25 % of a 20-pair window, no minimum interval: a
    heavier load than a robot's); capture off, reading on the pipeline's thread; and capture off
    and on with the pairs handed over at a 30 fps camera's rate (the robot's case: the writer
    encodes between frames; as fast as possible, it can only take CPU from the engine), and capture
    off at that rate again (an A/A pair: the noise floor of the p99 ratio on this machine). Per-pair
    time = the sum of the pipeline's stages of that pair (what the node spends per message);
    pairs/s = pairs / the replay's wall time (reading, pairing and the pipeline)."""
    import shutil
    import tempfile

    from ms_perception.build import build_pipeline
    from ms_perception.demo import THERMAL_TOPIC, VISIBLE_TOPIC, make_demo_bag
    from ms_perception.replay.run import replay_bag
    if pairs < 1 or rounds < 1:
        raise BenchError(f"the replay bench needs pairs >= 1 and rounds >= 1, got {pairs} and {rounds}")
    tmp = Path(tempfile.mkdtemp(prefix="ms_perception_bench_"))
    variants = {"off": {}, "capture": {}, "sequential": {}, "off_camera": {}, "capture_camera": {}, "off_camera_again": {}}
    per_pair = {k: [] for k in variants}
    rate = {k: [] for k in variants}
    written = written_camera = 0
    try:
        bag, cal, _ = make_demo_bag(tmp / "bag", pairs, seed)
        for rnd in range(rounds):
            for name in variants:
                # the node's defaults capture (into ~/ms_perception_capture): the "off" variants say off
                params = {"model_path": str(model), "calibration_file": str(cal), "capture_enabled": False}
                if name.startswith("capture"):
                    cap = tmp / f"{name}_{rnd}"
                    params.update(capture_enabled=True, capture_dir=str(cap), robot_id="bench",
                                  capture_mode="top_fraction", capture_top_fraction=0.25, capture_window=20,
                                  capture_min_interval_s=0.0, capture_quota_mb=2000.0)
                pipe = build_pipeline(params)
                times = per_pair[name]
                summ, _ = replay_bag(bag, pipe, VISIBLE_TOPIC, THERMAL_TOPIC, slop_s=0.02,
                                     on_result=lambda _p, res: times.append(sum(res.timings_ms.values())),
                                     reader_thread=name != "sequential",
                                     camera_fps=1000.0 / FRAME_INTERVAL_MS if "_camera" in name else None)
                rate[name].append(summ.pairs / summ.wall_s)
                if name.startswith("capture"):
                    written += int(summ.capture.get("written", 0)) if name == "capture" else 0
                    written_camera += int(summ.capture.get("written", 0)) if name != "capture" else 0
                    shutil.rmtree(tmp / f"{name}_{rnd}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    q = {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "p99": float(np.percentile(v, 99))}
         for k, v in per_pair.items()}
    pps = {k: float(np.median(v)) for k, v in rate.items()}
    return {"pairs": pairs, "rounds": rounds, "captured_written": written, "captured_written_camera": written_camera,
            "per_pair_ms": {k: {m: round(x, 3) for m, x in v.items()} for k, v in q.items()},
            "pairs_per_s": {k: round(v, 2) for k, v in pps.items()},
            "p95_over_frame_interval": round(q["off"]["p95"] / FRAME_INTERVAL_MS, 4),
            "capture_p99_ratio": round(q["capture"]["p99"] / q["off"]["p99"], 4),
            "capture_p99_ratio_camera": round(q["capture_camera"]["p99"] / q["off_camera"]["p99"], 4),
            # the same variant twice: how far this machine moves a p99 ratio with nothing changed
            "a_a_p99_ratio_camera": round(q["off_camera_again"]["p99"] / q["off_camera"]["p99"], 4),
            "reader_thread_speedup": round(pps["off"] / pps["sequential"], 4)}


def print_replay_report(r: dict) -> None:
    pp, ps = r["per_pair_ms"], r["pairs_per_s"]
    print(f"replay of {r['pairs']} pairs x {r['rounds']} rounds (demo rig 640x512 + 320x256, mcap), default model:")
    print(f"  per-pair time p50 {pp['off']['p50']:.2f} ms, p95 {pp['off']['p95']:.2f} ms, p99 {pp['off']['p99']:.2f} ms; "
          f"{ps['off']:.1f} pairs/s")
    print(f"  p95 / 30 fps frame interval: {r['p95_over_frame_interval']:.4f}   goal < 1.0")
    print(f"  capture on / off, p99 per-pair time, pairs at a 30 fps camera's rate: {r['capture_p99_ratio_camera']:.4f} "
          f"({pp['capture_camera']['p99']:.2f} vs {pp['off_camera']['p99']:.2f} ms; {r['captured_written_camera']} "
          f"records written)   goal <= 1.05; capture off / off, the same thing twice: {r['a_a_p99_ratio_camera']:.4f} "
          "(this machine's noise on that figure)")
    print(f"  capture on / off, p99 per-pair time, pairs as fast as possible (no idle core for the writer): "
          f"{r['capture_p99_ratio']:.4f} ({pp['capture']['p99']:.2f} vs {pp['off']['p99']:.2f} ms; "
          f"{r['captured_written']} records written)")
    print(f"  pairs/s with the reader thread / without: {r['reader_thread_speedup']:.4f} ({ps['off']:.1f} vs "
          f"{ps['sequential']:.1f})")


def print_report(r: dict) -> None:
    print(f"{r['backend']} at {r['size'][0]}x{r['size'][1]}, {r['iterations']} interleaved runs, "
          f"{r['cpu_count']} CPUs, threads {r['threads']}")
    for role in ROLES:
        if role not in r:
            continue
        m = r[role]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in m["stages_ms"].items())
        cam = (f"thermal camera {m['thermal_camera_hw'][1]}x{m['thermal_camera_hw'][0]}" if m["thermal_camera_hw"]
               else "visible only")
        print(f"  {role:<16} {m['model']:<28} engine {m['engine_ms']:8.2f} ms   pipeline overhead "
              f"{m['overhead_ms']:6.2f} ms ({stages}; {cam})")
        if m.get("invalid_output_runs"):
            print(f"  warning: {role}: {m['invalid_output_runs']} run(s) gave non-finite or out-of-range outputs "
                  "(not timed)")
    print(f"  pipeline overhead / engine time, worst model, interleaved: {r['overhead_ratio']:.4f}   goal <= 0.10  "
          f"({r['overhead_ratio_by_model']})")
    if r.get("alone"):
        by = {role: a["overhead_ratio"] for role, a in r["alone"].items()}
        print(f"  pipeline overhead / engine time, worst model, each alone as a node runs it: "
              f"{r['overhead_ratio_alone']:.4f}   goal <= 0.10  ({by})")
    print(f"  student / teacher engine time: {r['student_teacher_ratio']:.4f}   goal <= 0.55 "
          "(paper: 6.55 / 10.97 ms = 0.60 on a GPU)")
    if "paper_student_teacher_ratio" in r:
        print(f"  paper student / paper teacher engine time: {r['paper_student_teacher_ratio']:.4f}   goal <= 0.55")
    for name, p in r.get("peers", {}).items():
        ratios = ", ".join(f"{role} {v:.3f}" for role, v in r["peer_ratios"][name].items())
        print(f"  peer {name:<20} engine {p['engine_ms']:8.2f} ms (inputs {p['inputs']}); ours / peer: {ratios}   "
              "goal <= 1.0 for a deployment student")
    print(f"  peak resident memory of this process: {r['peak_rss_mb']:.0f} MB; torch imported: {r['torch_imported']}")
