"""``ms-perception train ...``: the training subpackage's commands (torch).

Reached through ``ms-perception train`` (the runtime CLI imports this module only for that
subcommand) or ``python -m ms_perception_training.cli``. Errors print one line and exit 2.
"""
from __future__ import annotations

import argparse

from ms_perception.core import jsonio
import sys
from pathlib import Path


class TrainCliError(Exception):
    pass


def _load(config: str):
    from ms_perception_training.models.config import load_model_config
    from ms_perception_training.models.build import build_model
    cfg = load_model_config(config)
    return cfg, build_model(cfg)


def load_checkpoint_into(model, path: str) -> None:
    """Load model weights from a checkpoint (``{"model": state_dict}`` or a bare state dict).

    weights_only=True: a checkpoint from elsewhere cannot run code. Mismatches name the tensors.
    """
    from ms_perception_training.fit import load_weights
    try:
        load_weights(model, path)
    except RuntimeError as exc:
        raise TrainCliError(str(exc)) from None


def cmd_info(args) -> int:
    from ms_perception_training.models.info import model_info
    cfg, model = _load(args.config)
    info = model_info(model, latency_runs=args.latency_runs)
    if not args.json:
        print(f"{info['name']}: {cfg.task}, scheme {cfg.fusion.scheme}, fusion {cfg.fusion.module}, "
              f"input {cfg.input.width}x{cfg.input.height}, thermal {info['thermal_input'][0]}x{info['thermal_input'][1]}")
        print(f"  parameters: {info['params']:,}")
        if "paper_params" in info:
            pp = info["paper_params"]
            print(f"    the paper: {pp['params']:,} ({pp['source']}); this preset {pp['difference_percent']:+.2f} %")
        for k, v in info["params_by_part"].items():
            print(f"    {k:<12s} {v:>12,}")
        print(f"  multiply-accumulates: {info['macs'] / 1e9:.2f} G")
        if "cpu_latency" in info:
            lat = info["cpu_latency"]
            print(f"  CPU latency (batch 1, {lat['threads']} threads): median {lat['median_ms']} ms over {lat['runs']} runs")
    print(jsonio.dumps(info))
    return 0


def cmd_export(args) -> int:
    from ms_perception_training.export.onnx_export import export_onnx
    cfg, model = _load(args.config)
    if args.checkpoint:
        load_checkpoint_into(model, args.checkpoint)
    lineage = {}
    if args.checkpoint:
        from ms_perception_training.lineage import checkpoint_lineage, file_sha256
        lineage = {**checkpoint_lineage(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint)}
    res = export_onnx(model.eval(), args.out, uint8_input=not args.float_input, decode=not args.no_decode,
                      batch=args.batch, dynamic_batch=args.dynamic_batch, fold_bn=not args.no_fold_bn,
                      opset=args.opset, notes=args.notes or "", lineage=lineage, in_graph_nms=args.nms)
    side = Path(args.out).with_suffix(".card.json")
    from ms_perception_training.export.onnx_export import card_json

    from ms_perception.core.atomic import atomic_write
    atomic_write(side, card_json(res.card))
    summary = {"out": str(res.path), "card": str(side), "parity_max_abs": res.parity_max_abs,
               "unsupported_tensorrt_ops": res.unsupported_ops, "folded_batchnorm": res.folded_bn,
               "graph_sha256": res.card.graph_sha256}
    if not args.json:
        print(f"wrote {res.path} ({res.path.stat().st_size / 1e6:.1f} MB) and {side}")
        print(f"  outputs: {', '.join(o.name + str(o.shape) for o in res.card.outputs)}")
        print(f"  ONNX Runtime vs PyTorch max |diff|: {res.parity_max_abs}")
        from ms_perception.core.card import lineage_summary
        print("  " + lineage_summary(res.card))
        print("  TensorRT ONNX parser: " + ("all operators supported" if not res.unsupported_ops else
                                             f"UNSUPPORTED {res.unsupported_ops}"))
    print(jsonio.dumps(summary))
    return 1 if res.unsupported_ops and args.strict_tensorrt else 0


def cmd_graph_edit(args) -> int:
    from ms_perception_training.export.graph_edits import GraphEditError, edit_file
    try:
        card = edit_file(args.model, args.out, nms=args.nms)
    except GraphEditError as exc:
        raise TrainCliError(str(exc)) from None
    summary = {"out": args.out, "card": str(Path(args.out).with_suffix(".card.json")),
               "graph_sha256": card.graph_sha256, "outputs": [o.name for o in card.outputs]}
    if not args.json:
        print(f"wrote {args.out}: outputs {', '.join(o.name + str(o.shape) for o in card.outputs)}; "
              f"graph {card.graph_sha256[:16]}")
    print(jsonio.dumps(summary))
    return 0


def cmd_fit(args) -> int:
    from ms_perception_training.fit import fit, load_experiment
    cfg, mcfg, tcfg = load_experiment(args.config)
    if args.iterations:
        cfg.iterations = args.iterations
    if args.teacher_checkpoint:
        cfg.distill.teacher_checkpoint = args.teacher_checkpoint
    if args.init_checkpoint:
        cfg.init_checkpoint = args.init_checkpoint
    if args.parent_model:
        cfg.parent_model = args.parent_model
    log = (lambda *a: None) if args.json else print
    try:
        summary = fit(cfg, mcfg, Path(args.out), log=log, resume=args.resume, teacher_cfg=tcfg)
    except RuntimeError as exc:
        raise TrainCliError(str(exc)) from None
    import os
    if os.environ.get("RANK", "0") != "0":      # torchrun: only rank 0 reports
        return 0
    if not args.json:
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} over {summary['iterations']} "
              f"iterations in {summary['seconds']} s; checkpoint {summary['checkpoint']}")
        if "best" in summary:
            b = summary["best"]
            print(f"best held-out point: iteration {b['iteration']}, person miss rate {b['miss_rate']}; "
                  f"its weights: {b['checkpoint']}")
    print(jsonio.dumps(summary))
    return 0


def cmd_eval(args) -> int:
    from dataclasses import replace

    from ms_perception_training.checkpoints import load_weights
    from ms_perception_training.data.sources import SOURCES, eval_split, open_one
    from ms_perception_training.evaluate import _items, detection_scores, predict_pool, segmentation_scores, \
        write_benchmark_files
    from ms_perception_training.experiment import held_out_data, load_experiment
    from ms_perception_training.models.build import build_model
    cfg, mcfg, _ = load_experiment(args.config)
    model = build_model(mcfg)
    try:
        load_weights(model, args.checkpoint)
    except RuntimeError as exc:
        raise TrainCliError(str(exc)) from None
    if args.branch and args.branch not in model.branch_names + ["fused"]:
        raise TrainCliError(f"--branch {args.branch!r}: {mcfg.name} has branches {model.branch_names}")
    data = cfg.data
    if args.data:
        if args.data not in SOURCES:
            raise TrainCliError(f"--data {args.data!r}: use one of {list(SOURCES)}")
        data = replace(data, type=args.data, root=args.root or (data.root if data.type == args.data else ""))
    elif args.root:
        data = replace(data, root=args.root)
    if data.type == "synthetic":
        pairs = args.pairs or cfg.eval.pairs or 100
        pool = open_one(mcfg, held_out_data(replace(cfg, data=data, eval=replace(cfg.eval, pairs=pairs))))
        where = f"{pairs} synthetic validation pairs (seed {cfg.eval.seed})"
    else:
        if not data.root and not data.annotation_file:
            raise TrainCliError(f"--data {data.type}: give the dataset folder with --root")
        split = args.split or cfg.eval.split or eval_split(data)
        pool = open_one(mcfg, replace(data, limit=args.pairs or 0), split=split,
                           log=(lambda *a: None) if args.json else print)
        where = f"{len(pool)} pairs of {data.type} {split!r} ({data.root or data.annotation_file})"
    items = _items(pool)
    preds = predict_pool(model, mcfg, pool, branch=args.branch)
    scores = segmentation_scores(items, preds, mcfg.num_classes) if mcfg.task == "segmentation" \
        else detection_scores(items, preds, mcfg.class_names)
    res = {"model": mcfg.name, "data": data.type, "pairs": len(items), "branch": args.branch or model.main_branch,
           **scores}
    if args.out and mcfg.task != "segmentation":
        res["files"] = write_benchmark_files(items, preds, mcfg.class_names, args.out)
    if not args.json:
        print(f"{mcfg.name} on {where}:")
        for k, v in res.items():
            if k not in ("model", "pairs", "data"):
                print(f"  {k}: {v}")
    print(jsonio.dumps(res))
    return 0


def cmd_average(args) -> int:
    import torch
    from ms_perception_training.checkpoints import average_checkpoints
    try:
        ck = average_checkpoints(args.checkpoints, args.weights)
    except RuntimeError as exc:
        raise TrainCliError(str(exc)) from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ck, tmp)
    tmp.replace(out)
    summary = {"out": str(out), "checkpoints": ck["averaged_from"], "weights": ck["average_weights"],
               "tensors": len(ck["model"])}
    print(jsonio.dumps(summary) if args.json else
          f"{out}: {len(ck['model'])} tensors, " + " + ".join(f"{w:g} x {p}" for w, p in zip(ck["average_weights"], ck["averaged_from"])))
    return 0


def cmd_active(args) -> int:
    from ms_perception_training.active import load_active_config, run_active
    acfg = load_active_config(args.config)
    if args.strategy:
        acfg.strategies = args.strategy
    log = (lambda *a: None) if args.json else print
    try:
        res = run_active(acfg, Path(args.out), log=log)
    except RuntimeError as exc:
        raise TrainCliError(str(exc)) from None
    print(jsonio.dumps(res))
    return 0


def build_parser(prog: str = "ms-perception train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Training, inspection and export of multispectral models.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="train a model (first trainer: synthetic data, CPU/GPU)")
    f.add_argument("--config", required=True, help="experiment YAML (config/experiments/)")
    f.add_argument("--out", required=True)
    f.add_argument("--iterations", type=int, help="override the config's iteration count")
    f.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt (weights, optimizer, "
                   "RNG states, iteration)")
    f.add_argument("--teacher-checkpoint", help="override distill.teacher_checkpoint")
    f.add_argument("--init-checkpoint", help="start from these weights (fine-tuning)")
    f.add_argument("--parent-model", help="the deployed model (.onnx, or an engine's card) the init checkpoint was "
                   "exported as: its hash and lineage become the parent in the new model's card")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fit)
    v = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split (or the experiment's synthetic "
                       "validation pairs) with the dataset's metric; --out writes the benchmark formats")
    v.add_argument("--config", required=True, help="experiment YAML (its model and data sections are used)")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--data", help="data source (kaist, flir_aligned, llvip, mfnet, vedai, coco, captures, voc, "
                   "synthetic); default: the experiment's data.type")
    v.add_argument("--root", help="the dataset's folder (default: the experiment's data.root)")
    v.add_argument("--split", help="the split to evaluate (default: eval.split, else the dataset's test split: "
                   "KAIST test, FLIR validation, LLVIP test, MFNet test)")
    v.add_argument("--out", help="folder for detections_kaist.txt (index,x,y,w,h,score), detections_coco.json "
                   "and ground_truth_coco.json, for external evaluators")
    v.add_argument("--pairs", type=int, help="synthetic: validation pairs (default: eval.pairs, else 100); "
                   "datasets: evaluate only the first N")
    v.add_argument("--branch", help="evaluate this branch (visible/thermal/fused) instead of the main one")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_eval)
    a = sub.add_parser("active", help="active learning: select pairs by cross-modality inconsistency (or random/"
                       "entropy), fine-tune, repeat to the budget; resumable")
    a.add_argument("--config", required=True, help="active-learning YAML (config/experiments/active_*.yaml)")
    a.add_argument("--out", required=True)
    a.add_argument("--strategy", action="append", choices=["inconsistency", "random", "entropy"],
                   help="override the config's strategies (repeatable)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_active)
    av = sub.add_parser("average", help="weight-space average of checkpoints of one model config (e.g. a fine-tune "
                        "and the model it started from, WiSE-FT); a weights-only checkpoint for export or eval")
    av.add_argument("checkpoints", nargs="+", help="two or more .pt checkpoints of the same model config")
    av.add_argument("--weights", type=float, nargs="+", help="one per checkpoint, >= 0, summing to 1 (default: equal)")
    av.add_argument("--out", required=True)
    av.add_argument("--json", action="store_true")
    av.set_defaults(func=cmd_average)
    i = sub.add_parser("info", help="parameters, multiply-accumulates and CPU latency of a model config")
    i.add_argument("--config", required=True)
    i.add_argument("--latency-runs", type=int, default=3, help="timed CPU forwards (0: skip)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    e = sub.add_parser("export", help="export to ONNX with the model card embedded")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint")
    e.add_argument("--out", required=True)
    e.add_argument("--float-input", action="store_true", help="float32 normalized inputs instead of uint8")
    e.add_argument("--no-decode", action="store_true", help="output anchor deltas; the runtime decodes")
    e.add_argument("--no-fold-bn", action="store_true")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--dynamic-batch", action="store_true")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--notes", help="free text stored in the card (e.g. the training command)")
    e.add_argument("--strict-tensorrt", action="store_true", help="exit 1 if an operator is not TensorRT-parsable")
    e.add_argument("--nms", action="store_true", help="the class-aware NMS in the graph too (graph-edit --nms); the "
                   "pipeline feeds its thresholds; a TensorRT build takes it out again")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_export)
    ge = sub.add_parser("graph-edit", help="add the in-graph cross-modality inconsistency means (and "
                        "with --nms the NMS) to an exported detector (no checkpoint needed; the weights are untouched)")
    ge.add_argument("model", help="an ONNX file written by `train export`")
    ge.add_argument("--out", required=True, help="the edited ONNX (its .card.json is written beside it)")
    ge.add_argument("--nms", action="store_true", help="also move the class-aware NMS into the graph (ONNX "
                    "NonMaxSuppression; thresholds stay runtime parameters; a TensorRT build strips it again)")
    ge.add_argument("--json", action="store_true")
    ge.set_defaults(func=cmd_graph_edit)
    return p


def main(argv: list[str] | None = None, prog: str = "ms-perception train") -> int:
    args = build_parser(prog).parse_args(argv)
    from ms_perception_training.config import ConfigError
    try:
        return int(args.func(args) or 0)
    except (TrainCliError, ConfigError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(prog="python -m ms_perception_training.cli"))
