"""``ms-perception`` command line. Errors print one line naming the problem and exit 2."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ms_perception.core import jsonio
from ms_perception.formats.errors import FormatError


class CliError(Exception):
    """A user error: printed as ``ms-perception: error: ...`` without a traceback."""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x256, got {text!r}") from None


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


# ------------------------------------------------------------------------------ synth


def cmd_synth(args) -> int:
    from ms_perception.synth.generator import SynthConfig, SyntheticGenerator
    from ms_perception.synth.writers import timed, write_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CliError(f"output folder {out} is not empty; choose another --out or pass --overwrite")
    try:
        cfg = SynthConfig(width=args.size[0], height=args.size[1], night_fraction=args.night_fraction,
                          dusk_fraction=args.dusk_fraction, fog_fraction=args.fog_fraction,
                          thermal_factor=args.thermal_factor, crossover_fraction=args.crossover_fraction,
                          sequence_length=args.sequence_length, fps=args.fps,
                          misregistration_px=args.misregistration_px)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.pairs < 1:
        raise CliError(f"--pairs must be >= 1, got {args.pairs}")
    gen = SyntheticGenerator(cfg, seed=args.seed)
    src = timed(gen.pairs(args.pairs))
    t0 = time.perf_counter()
    n = write_dataset(args.format, src, out, thermal_factor=args.thermal_factor, test_every=args.test_every)
    total = time.perf_counter() - t0
    rate = src.count / src.seconds if src.seconds else float("inf")
    summary = {"pairs": n, "format": args.format, "out": str(out), "size": list(args.size),
               "thermal_size": list(cfg.thermal_size), "generation_pairs_per_s": round(rate, 1),
               "total_pairs_per_s_with_writing": round(n / total, 1)}
    if args.json:
        print(jsonio.dumps(summary))
    else:
        print(f"wrote {n} {args.format} pairs to {out} ({cfg.width}x{cfg.height} visible, "
              f"{cfg.thermal_size[0]}x{cfg.thermal_size[1]} thermal)")
        print(f"generation: {rate:.1f} pairs/s (one core); with encoding and writing: {n / total:.1f} pairs/s")
    return 0


# ------------------------------------------------------------------------------- eval


def cmd_eval_kaist(args) -> int:
    from ms_perception.formats.kaist import load_annotations, load_detections
    from ms_perception.metrics.kaist import KaistEvalConfig, evaluate_kaist

    gts = load_annotations(args.annotations)
    dets = load_detections(args.detections)
    known = {g.image_id for g in gts}
    unknown = sorted(set(dets) - known)
    if unknown:
        raise CliError(f"{args.detections}: detections reference {len(unknown)} image(s) not in the annotations "
                       f"(first: 1-based index {unknown[0] + 1}; the annotations hold {len(gts)} images)")
    cfg = KaistEvalConfig(height_range=(args.min_height, float("inf")),
                          count_gt_without_detections=not args.mlpd_compat)
    t0 = time.perf_counter()
    res = evaluate_kaist(gts, dets, cfg)
    dt = time.perf_counter() - t0
    out = {k: round(100 * v.miss_rate, 4) for k, v in res.items()}
    if args.plot:
        from ms_perception.metrics.plots import plot_miss_rate_curves
        plot_miss_rate_curves(res, args.plot, title="KAIST reasonable")
    if not args.json:
        for k, v in res.items():
            print(f"{k:>5}: log-average miss rate {100 * v.miss_rate:6.2f}%  "
                  f"({v.num_images} images, {v.num_gt} pedestrians, recall {100 * v.recall:.1f}%)")
        print(f"evaluated in {dt:.2f} s")
    print(jsonio.dumps(out))
    return 0


def cmd_eval_coco(args) -> int:
    from ms_perception.metrics.coco import coco_eval
    stats = coco_eval(args.gt, args.detections)
    if not args.json:
        for k, v in stats.items():
            print(f"{k:>6}: {v:.4f}")
    print(jsonio.dumps({k: round(v, 6) for k, v in stats.items()}))
    return 0


def cmd_eval_seg(args) -> int:
    import cv2
    import numpy as np

    from ms_perception.metrics.segmentation import confusion_matrix, segmentation_metrics

    gt_dir, pred_dir = Path(args.gt), Path(args.pred)
    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            raise CliError(f"not a folder of label PNGs: {d}")
    names = sorted(p.name for p in gt_dir.glob("*.png"))
    if not names:
        raise CliError(f"no .png label maps in {gt_dir}")
    if args.names_file:
        names = [f"{n.strip()}.png" for n in Path(args.names_file).read_text().split() if n.strip()]
    if args.num_classes < 1:
        raise CliError(f"--num-classes must be >= 1, got {args.num_classes}")
    conf = {"all": np.zeros((args.num_classes,) * 2, np.int64)}
    ignore = None if args.ignore_index < 0 else args.ignore_index
    for n in names:
        g = cv2.imread(str(gt_dir / n), cv2.IMREAD_UNCHANGED)
        p = cv2.imread(str(pred_dir / n), cv2.IMREAD_UNCHANGED)
        if g is None:
            raise CliError(f"cannot read ground-truth label map {gt_dir / n}")
        if p is None:
            raise CliError(f"missing or unreadable prediction {pred_dir / n} (every ground-truth map needs one)")
        if g.shape != p.shape:
            raise CliError(f"{n}: prediction is {p.shape[::-1]}, ground truth {g.shape[::-1]} (w, h); they must match")
        if g.ndim != 2 or p.ndim != 2:
            raise CliError(f"{n}: label maps must be single-channel class-id PNGs (got {g.ndim}-D / {p.ndim}-D)")
        labelled = g[g != ignore] if ignore is not None else g
        if labelled.size and int(labelled.max()) >= args.num_classes:
            raise CliError(f"{gt_dir / n}: ground-truth label {int(labelled.max())} is >= --num-classes "
                           f"{args.num_classes}; pass the dataset's class count (MFNet: 9)")
        if p.size and int(p.max()) >= args.num_classes:
            raise CliError(f"{pred_dir / n}: predicted label {int(p.max())} is out of range for --num-classes "
                           f"{args.num_classes} (ids 0..{args.num_classes - 1})")
        c = confusion_matrix(g, p, args.num_classes, ignore)
        conf["all"] += c
        # MFNet names end in D (day) or N (night)
        tag = {"D": "day", "N": "night"}.get(Path(n).stem[-1:])
        if tag:
            conf.setdefault(tag, np.zeros_like(c))
            conf[tag] += c
    out = {}
    for k, c in conf.items():
        r = segmentation_metrics(c, ignore)
        out[k] = {"mAcc": round(r.mean_accuracy, 6), "mIoU": round(r.miou, 6)}
        if not args.json:
            print(f"{k:>5}: mean accuracy {100 * r.mean_accuracy:.2f}%  mIoU {100 * r.miou:.2f}%")
    print(jsonio.dumps(out))
    return 0


# ------------------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    from ms_perception.demo import run_demo
    return run_demo(Path(args.out), pairs=args.pairs, seed=args.seed, model=args.model, backend=args.backend,
                    score_threshold=args.score_threshold)


# ------------------------------------------------------------------------ replay / bench


def replay_params(args) -> dict:
    """Replay's options as the node's parameters (one configuration: ms_perception.build)."""
    from ms_perception.build import read_params_file
    p = read_params_file(args.params_file) if args.params_file else {}
    given = {"model_path": args.model, "backend": args.backend, "score_threshold": args.score_threshold,
             "nms_iou": args.nms_iou, "sync_slop_s": args.slop, "sync_queue_size": args.queue_size,
             "calibration_file": args.calibration, "thermal_normalization": args.thermal_mode,
             "thermal_kelvin_per_count": args.thermal_kelvin_per_count,
             "thermal_offset_kelvin": args.thermal_offset_kelvin, "thermal_raw_min": args.thermal_raw_min,
             "thermal_raw_max": args.thermal_raw_max, "capture_dir": args.capture_dir,
             "capture_threshold": args.capture_threshold, "capture_min_interval_s": args.capture_min_interval,
             "capture_score": args.capture_score,
             "capture_quota_mb": args.capture_quota_mb, "robot_id": args.robot_id}
    p.update({k: v for k, v in given.items() if v is not None})
    if args.assume_same_fov:
        p["assume_same_fov"] = True
    if args.accept_edited_graph:
        p["accept_edited_graph"] = True
    p["capture_enabled"] = bool(args.capture_dir)   # replay records only into a folder it is given
    p.setdefault("robot_id", "replay")
    for name, value in [kv.split("=", 1) if "=" in kv else (kv, None) for kv in args.param]:
        if value is None:
            raise CliError(f"--param {name!r}: write NAME=VALUE (a detector node parameter, e.g. max_detections=50)")
        import yaml
        p[name] = yaml.safe_load(value)
    return p


def cmd_replay(args) -> int:
    from ms_perception.build import build_pipeline, resolve
    from ms_perception.core.jsonio import dumps
    from ms_perception.engines import EngineError
    from ms_perception.replay.bag import BagError
    from ms_perception.replay.run import evaluate_persons, frame_score_lifts, load_annotations, replay_bag

    if args.camera_fps is not None and not (math.isfinite(args.camera_fps) and args.camera_fps > 0):
        raise CliError(f"--camera-fps {args.camera_fps}: give the camera's frame rate, a number > 0 (e.g. 30)")
    params = replay_params(args)
    visible_only = args.thermal_topic == ""
    if args.visible_topic:
        params["visible_topic"] = args.visible_topic
    if args.thermal_topic:
        params["thermal_topic"] = args.thermal_topic
    params = resolve(params)
    visible, thermal = params["visible_topic"], None if visible_only else params["thermal_topic"]
    if thermal and thermal == visible:
        raise CliError(f"the visible and thermal topics are the same ({visible!r}); set --visible-topic and "
                       "--thermal-topic to the two cameras' topics")
    anns = load_annotations(args.bag)
    try:
        pipe = build_pipeline(params)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:   # the capture folder cannot be written: an error before the replay begins
        raise CliError(f"--capture-dir {args.capture_dir}: {exc}; choose a writable folder") from None
    engine = pipe.engine
    annotated = {int(a["stamp_ns"]) for a in anns} if anns else set()
    det_file = _LineWriter(Path(args.detections_out)) if args.detections_out else None
    names = engine.card.class_names

    def on_result(pair, res):
        if det_file is not None:
            det_file.write(dumps({"stamp_ns": int(pair.stamp_ns), "detections": [
                {"label": int(c), "class": names[int(c)], "score": float(sc), "box": [float(v) for v in b]}
                for b, sc, c in zip(res.detections.boxes, res.detections.scores, res.detections.labels)]}))

    try:
        summary, results = replay_bag(args.bag, pipe, visible, thermal, slop_s=params["sync_slop_s"],
                                      queue_size=params["sync_queue_size"], on_result=on_result,
                                      keep=lambda s: s in annotated, camera_fps=args.camera_fps)
    except (EngineError, BagError) as exc:
        if det_file is not None:
            det_file.abort()
        raise CliError(str(exc)) from None
    if det_file is not None:
        det_file.commit()
    if summary.pairs == 0 and summary.complete and not summary.failed_pairs["count"] \
            and not summary.invalid_output_pairs["count"]:
        raise CliError(f"{args.bag}: no frame pairs on {visible} + {thermal} (pairing stats {summary.pairing}); "
                       "check the topic names and --slop")
    from ms_perception.core.card import lineage_summary
    report = {"model": engine.card.name, "model_sha256": engine.card.graph_sha256,
              "lineage": engine.card.lineage, **summary.to_dict(), "complete": summary.complete}
    if results and "person" in names:
        report["miss_rate"] = evaluate_persons(results, anns, names.index("person"), tuple(summary.visible_hw))
        lifts = frame_score_lifts(results, anns, names.index("person"), tuple(summary.visible_hw))
        report["inconsistency_lift"] = lifts.get("inconsistency")
        report["frame_score_lifts"] = lifts
    if args.out:
        from ms_perception.core.atomic import atomic_write
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(args.out), (dumps(report, indent=2) + "\n").encode())
    if not args.json:
        print(f"model {engine.card.name} {engine.card.graph_sha256[:16]}; {lineage_summary(engine.card)}")
        print(f"pairs {summary.pairs} ({summary.pairs_per_s:.1f} pairs/s over {summary.wall_s:.1f} s), unpaired "
              f"{summary.pairing['unpaired']}, detections {summary.detections}, capture decisions {summary.captured}")
        for k, v in summary.latency_ms.items():
            print(f"  {k:>13}: p50 {v['p50']:.2f} ms  p95 {v['p95']:.2f} ms")
        if summary.inconsistency:
            i = summary.inconsistency
            print(f"  inconsistency: median {i['p50']:.4f}, p95 {i['p95']:.4f}, max {i['max']:.4f}")
        if pipe.writer is not None:
            print("  " + pipe.writer.summary_line())
        if "miss_rate" in report:
            print("  person miss rate: " + ", ".join(f"{k} {v:.2f}%" for k, v in report["miss_rate"].items()))
        for name, lift in (report.get("frame_score_lifts") or {}).items():
            if lift["ratio"] is not None:
                print(f"  errors in the top {lift['fraction']:.0%} by {name}: {lift['top_rate']:.0%} vs "
                      f"{lift['random_rate']:.0%} of all pairs ({lift['ratio']:.2f}x)")
    for w in summary.warnings:   # on stderr in every output mode
        print(f"warning: {w}", file=sys.stderr)
    print(dumps({k: report[k] for k in ("model", "model_sha256", "lineage", "pairs", "pairs_per_s", "wall_s", "pairing", "detections", "latency_ms", "inconsistency", "captured",
                                        "capture", "miss_rate", "inconsistency_lift", "frame_score_lifts", "thermal_saturated_pairs", "failed_pairs",
                                        "invalid_output_pairs", "read", "complete", "warnings") if k in report}))
    if not summary.complete:
        print(f"ms-perception: error: {args.bag}: the bag could not be read to the end; the report covers what was "
              "read (exit 1)", file=sys.stderr)
        return 1
    return 0


class _LineWriter:
    """JSON lines streamed to a temporary file beside ``path``, renamed into place at the end: the
    file appears whole or not at all, and memory does not grow with the bag."""

    def __init__(self, path: Path):
        import tempfile
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        self.f = open(fd, "w")

    def write(self, line: str) -> None:
        self.f.write(line + "\n")

    def commit(self) -> None:
        import os
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def cmd_bench(args) -> int:
    from ms_perception.bench import BenchError, default_cache, ensure_models, print_report, run_bench
    from ms_perception.engines import EngineError
    try:
        if bool(args.teacher) != bool(args.student):
            raise CliError("pass both --teacher and --student, or neither (then the presets are exported)")
        if args.teacher:
            from ms_perception.build import default_model
            models = {"teacher": Path(args.teacher), "student": Path(args.student), "default": default_model()}
            for role in ("paper_teacher", "paper_student", "three_branch"):
                if getattr(args, role):
                    models[role] = Path(getattr(args, role))
        else:
            models = ensure_models(Path(args.cache) if args.cache else default_cache())
        peers = {}
        for item in args.peer or []:
            name, _, path = item.rpartition("=")
            name = name or Path(path).stem
            if name in peers:
                raise CliError(f"--peer {item}: the name {name!r} is given twice; write NAME=PATH")
            peers[name] = Path(path)
        r = run_bench(models, tuple(args.size), args.iterations, args.warmup, args.threads, args.backend,
                      peers=peers)
        if args.replay_pairs > 0:
            from ms_perception.bench import run_replay_bench
            r["replay"] = run_replay_bench(models["default"], args.replay_pairs, args.replay_rounds)
    except (BenchError, EngineError) as exc:
        raise CliError(str(exc)) from None
    if not args.json:
        print_report(r)
        if "replay" in r:
            from ms_perception.bench import print_replay_report
            print_replay_report(r["replay"])
    print(jsonio.dumps(r))
    return 0


def cmd_build_engine(args) -> int:
    from ms_perception.engines import EngineError
    from ms_perception.engines.tensorrt_engine import build_engine
    try:
        t0 = time.perf_counter()
        path, card = build_engine(args.onnx, args.cache_dir or Path(args.onnx).parent / "engines", args.precision,
                                  workspace_bytes=int(args.workspace_mb) << 20, rebuild=True)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    print(jsonio.dumps({"engine": str(path), "card": str(path) + ".card.json", "model": card.name,
                      "precision": args.precision, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from ms_perception.core.capture import CAPTURE_SCORES
    from ms_perception.ros.params import DEFAULTS
    p = argparse.ArgumentParser(prog="ms-perception", description="Multispectral perception: data, evaluation, runtime.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic multispectral dataset in a real dataset layout")
    s.add_argument("--format", required=True, choices=("kaist", "mfnet", "flir", "coco"))
    s.add_argument("--out", required=True)
    s.add_argument("--pairs", type=int, default=100)
    s.add_argument("--size", type=_size, default=(320, 256), help="visible size WxH (default 320x256)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--night-fraction", type=_fraction, default=0.3)
    s.add_argument("--dusk-fraction", type=_fraction, default=0.1)
    s.add_argument("--fog-fraction", type=_fraction, default=0.1)
    s.add_argument("--crossover-fraction", type=_fraction, default=0.1)
    s.add_argument("--thermal-factor", type=int, default=1, choices=(1, 4, 16, 64),
                   help="thermal camera has K times fewer pixels (1, 4, 16, 64)")
    s.add_argument("--misregistration-px", type=float, default=2.0)
    s.add_argument("--sequence-length", type=int, default=20)
    s.add_argument("--fps", type=float, default=10.0)
    s.add_argument("--test-every", type=int, default=4, help="every K-th sequence goes to the test split (0: none)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_synth)

    e = sub.add_parser("eval", help="evaluate detections or segmentations")
    esub = e.add_subparsers(dest="metric", required=True)
    k = esub.add_parser("kaist", help="KAIST log-average miss rate (reasonable subset)")
    k.add_argument("--annotations", required=True, help="KAIST JSON or folder of bbGt .txt files")
    k.add_argument("--detections", required=True, help="txt 'index,x,y,w,h,score' (1-based) or COCO results JSON")
    k.add_argument("--min-height", type=float, default=55.0, help="reasonable height threshold (thesis: 50)")
    k.add_argument("--mlpd-compat", action="store_true",
                   help="reproduce the MLPD Python script (skip ground truth of images without detections)")
    k.add_argument("--plot", help="write the miss-rate/FPPI curves to this PNG")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_eval_kaist)
    c = esub.add_parser("coco", help="COCO AP through pycocotools")
    c.add_argument("--gt", required=True)
    c.add_argument("--detections", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_eval_coco)
    g = esub.add_parser("seg", help="segmentation mean accuracy / mIoU from label PNG folders")
    g.add_argument("--gt", required=True, help="folder of ground-truth label PNGs")
    g.add_argument("--pred", required=True, help="folder of predicted label PNGs with the same names")
    g.add_argument("--num-classes", type=int, default=9)
    g.add_argument("--ignore-index", type=int, default=0, help="unlabeled class id (-1: none)")
    g.add_argument("--names-file", help="list of names (e.g. MFNet test.txt)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_eval_seg)

    d = sub.add_parser("demo", help="end-to-end demo on generated data")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--pairs", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--model", help="ONNX model with a card (default: the embedded default model)")
    d.add_argument("--backend", default="onnxruntime", help="engine backend (default onnxruntime = CPU)")
    d.add_argument("--score-threshold", type=float, default=0.3)
    d.set_defaults(func=cmd_demo)
    r = sub.add_parser("replay", help="replay a rosbag2 (.mcap/.db3) through the pipeline: latency, pairing, "
                                      "inconsistency, capture, accuracy when annotations.json is in the bag folder")
    r.add_argument("bag", help="bag folder (or .mcap/.db3 file)")
    r.add_argument("--visible-topic", help=f"default {DEFAULTS['visible_topic']} (the node's)")
    r.add_argument("--thermal-topic", help=f"default {DEFAULTS['thermal_topic']}; '' for visible-only models")
    r.add_argument("--model", help="ONNX model or TensorRT engine with a card (default: the embedded model)")
    r.add_argument("--backend", default="onnxruntime")
    r.add_argument("--params-file", help="the detector node's parameter YAML (e.g. config/detector.yaml): replay "
                                        "then runs exactly the node's configuration; the options below override it")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="any detector node parameter (repeatable), e.g. --param max_detections=50")
    r.add_argument("--accept-edited-graph", action="store_true",
                   help="accept a model whose graph does not match its card's graph_sha256 (edited on purpose)")
    r.add_argument("--score-threshold", type=_fraction, help=f"default {DEFAULTS['score_threshold']} (the node's)")
    r.add_argument("--nms-iou", type=_fraction, help=f"default {DEFAULTS['nms_iou']}")
    r.add_argument("--slop", type=float, help=f"pairing slop in seconds (default {DEFAULTS['sync_slop_s']}, "
                                              "as the ROS node)")
    r.add_argument("--queue-size", type=int, help=f"default {DEFAULTS['sync_queue_size']}")
    r.add_argument("--calibration", help="thermal->visible homography YAML")
    r.add_argument("--assume-same-fov", action="store_true", help="thermal differs from visible only in resolution")
    r.add_argument("--thermal-mode", choices=("window", "percentile"))
    r.add_argument("--thermal-kelvin-per-count", type=float,
                   help="16-bit radiometric scale: 0.01 (TLinear high resolution, Boson, Lepton 3.5; default), "
                        "0.04 (FLIR low-resolution 16-bit mode), 0.1 (Optris, with --thermal-offset-kelvin 173.15)")
    r.add_argument("--thermal-offset-kelvin", type=float, help="16-bit radiometric offset, K at count 0 (default 0)")
    r.add_argument("--thermal-raw-min", type=float, help="window low end in raw counts (default: -10 degC through "
                                                          "the radiometric scale)")
    r.add_argument("--thermal-raw-max", type=float, help="window high end in raw counts (default: +50 degC)")
    r.add_argument("--capture-dir", help="record uncertain pairs here")
    r.add_argument("--capture-score", choices=CAPTURE_SCORES,
                   help=f"which per-frame score ranks pairs for capture; default {DEFAULTS['capture_score']} (the node's)")
    r.add_argument("--capture-threshold", type=float, help=f"default {DEFAULTS['capture_threshold']} (the node's)")
    r.add_argument("--capture-min-interval", type=float, help=f"default {DEFAULTS['capture_min_interval_s']}")
    r.add_argument("--capture-quota-mb", type=float, help=f"default {DEFAULTS['capture_quota_mb']:g} (the node's)")
    r.add_argument("--robot-id", help="default 'replay'")
    r.add_argument("--camera-fps", type=float,
                   help="hand the pipeline at most this many pairs per second, as the camera would (latency and "
                        "capture under the robot's arrival rate; default: as fast as it goes)")
    r.add_argument("--out", help="write the full report JSON here")
    r.add_argument("--detections-out", help="write every pair's detections here (JSON lines: stamp_ns of the visible "
                                            "image, detections with label, class, score, box xyxy in pixels)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_replay)

    b = sub.add_parser("bench", help="engine time of the GAFF teachers vs MD students, the pipeline overhead of "
                                     "every shipped model, and any --peer ONNX detector, side by side in one run")
    b.add_argument("--teacher", help="teacher ONNX (default: export config/models/gaff_r18_retinanet.yaml)")
    b.add_argument("--student", help="student ONNX (default: export config/models/md_student_r18_retinanet.yaml)")
    b.add_argument("--three-branch", help="optional three-branch ONNX (default with the presets: "
                                          "gaff_three_branch_r18_retinanet); its pipeline computes inconsistency")
    b.add_argument("--paper-teacher", help="optional ONNX of the MD paper's teacher (default with the presets: "
                                           "md_paper_gaff_teacher_r18_retinanet)")
    b.add_argument("--paper-student", help="optional ONNX of the MD paper's student (default with the presets: "
                                           "md_paper_student_r18_retinanet)")
    b.add_argument("--peer", action="append", metavar="[NAME=]MODEL.onnx",
                   help="any ONNX detector to time beside ours (repeatable; nothing is downloaded): a bare ONNX "
                        "Runtime session with the same settings, NCHW image inputs at --size; ratios ours / peer")
    b.add_argument("--cache", help="folder for the exported presets (default ~/.cache/ms_perception/bench)")
    b.add_argument("--size", type=_size, default=(640, 512), help="camera size WxH (default 640x512)")
    b.add_argument("--iterations", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    b.add_argument("--backend", default="onnxruntime")
    b.add_argument("--replay-pairs", type=int, default=100,
                   help="also replay a synthetic bag of this many pairs through the default model: per-pair p95 vs "
                        "a 30 fps frame interval, capture on/off p99, pairs/s with and without the reader thread "
                        "(0: skip)")
    b.add_argument("--replay-rounds", type=int, default=6,
                   help="interleaved rounds of the replay comparison (6 x 100 pairs: a p99 is the 6th largest of "
                        "600 per-pair times; with 300 it was the 3rd, and moved 20 %% between runs)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("build-engine", help="build a TensorRT engine from an ONNX model on this device (cached by "
                                            "ONNX hash, TensorRT version, compute capability, precision)")
    t.add_argument("onnx")
    t.add_argument("--cache-dir", help="default: engines/ beside the ONNX file")
    t.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                   help="int8 needs an explicitly quantized (Q/DQ) ONNX; TensorRT 10 deprecates implicit calibration")
    t.add_argument("--workspace-mb", type=int, default=1024)
    t.set_defaults(func=cmd_build_engine)
    from ms_perception.fleet.cli import add_parser as add_captures
    add_captures(sub)
    sub.add_parser("train", help="training, info and export (needs torch; see `ms-perception train -h`)")
    return p


def _train(argv: list[str]) -> int:
    """``ms-perception train ...`` hands over to the training package (torch), imported only here."""
    import importlib
    try:
        train_cli = importlib.import_module("ms_perception_training.cli")
    except ImportError as exc:
        print(f"ms-perception: error: `train` needs the training extra and torch ({exc}); install "
              "`pip install torch==2.13.0` then `pip install -e .[train]`", file=sys.stderr)
        return 2
    return train_cli.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, FormatError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"ms-perception: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
