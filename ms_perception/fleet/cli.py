"""``ms-perception captures merge|select|export|import|info``: the fleet's labeling loop, torch-free.

Exit status: 0 when everything landed; 1 when it landed but items were skipped (each named on
one line, and counted in the summary); 2 when nothing was done (one line says why).
"""
from __future__ import annotations

from pathlib import Path

from ms_perception.core import jsonio
from ms_perception.core.capture import CAPTURE_SCORES
from ms_perception.core.selection import STRATEGIES


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for it in items or []:
        a, sep, b = it.rpartition("=")
        if not sep or not a or not b:
            raise ValueError(f"{flag} {it!r}: give A=B")
        out[a] = b
    return out


def cmd_merge(args) -> int:
    from ms_perception.fleet.pool import Pool
    with Pool(args.out, create=True) as pool:
        rep = pool.merge(args.sources, rename=_pairs(args.rename, "--rename"), duplicate_mad=args.duplicate_mad)
        print(rep.summary())
        print(f"pool {args.out}: {len(pool)} records")
    return 1 if rep.problems else 0


def cmd_select(args) -> int:
    from ms_perception.fleet.exchange import write_selection
    from ms_perception.fleet.pool import Pool, select_records
    with Pool(args.pool) as pool:
        keys, n = select_records(pool, args.budget, args.strategy, args.seed, args.bucket_s, args.score)
    if not keys:
        raise ValueError(f"{args.pool}: no unlabeled record to select from")
    write_selection(Path(args.out), Path(args.pool), keys, args.strategy, args.budget, args.seed, n, args.score)
    robots: dict[str, int] = {}
    for k in keys:
        robots[k.split("/", 1)[0]] = robots.get(k.split("/", 1)[0], 0) + 1
    by = args.strategy if args.score == "inconsistency" else f"{args.strategy} on {args.score}"
    print(f"select: {len(keys)} of {n} unlabeled records by {by} ({', '.join(f'{r} {c}' for r, c in sorted(robots.items()))}) -> {args.out}")
    return 0


def cmd_export(args) -> int:
    from ms_perception.fleet.exchange import export_selection
    res = export_selection(Path(args.selection), args.format, Path(args.out), pre_annotate=args.pre_annotate,
                           classes=args.labels.split(",") if args.labels else None, url_prefix=args.url_prefix,
                           min_score=args.min_score)
    print(f"export: {res['frames']} frame(s) as {args.format} ({'with' if args.pre_annotate else 'without'} "
          f"pre-annotations; labels {', '.join(res['labels'])}), {res['skipped']} skipped -> {res['out']}")
    return 1 if res["skipped"] else 0


def cmd_import(args) -> int:
    from ms_perception.fleet.exchange import import_labels
    rep = import_labels(Path(args.labels), args.format, Path(args.into),
                        export_dir=Path(args.export) if args.export else None,
                        label_map=_pairs(args.label_map, "--label-map"))
    print(rep.summary() + f" -> {args.into}")
    return 1 if rep.problems else 0


def cmd_info(args) -> int:
    from ms_perception.fleet.pool import Pool
    with Pool(args.pool) as pool:
        print(jsonio.dumps({"records": len(pool), **pool.counts()}, indent=1))
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("captures", help="fleet captures: merge robots' capture folders, select frames to label, "
                                        "export them to a labeling tool, import the labels")
    cs = c.add_subparsers(dest="captures_cmd", required=True)
    m = cs.add_parser("merge", help="gather capture folders (or archives of them) from many robots into a pool")
    m.add_argument("sources", nargs="+", help="capture folders (a robot's, or one holding a folder per robot), or "
                                              ".tar/.tar.gz/.zip archives of one")
    m.add_argument("--out", required=True, help="the pool folder (created; merging again adds only new records)")
    m.add_argument("--rename", action="append", metavar="SRC=ID",
                   help="merge the source SRC (as given) under the robot id ID (two robots sharing an id)")
    m.add_argument("--duplicate-mad", type=float, default=2.0,
                   help="mean |difference| (0-255) of 32x24 thumbnails below which two frames are the same scene")
    m.set_defaults(func=cmd_merge)
    s = cs.add_parser("select", help="choose the frames to label across the fleet")
    s.add_argument("pool")
    s.add_argument("--budget", type=int, required=True)
    s.add_argument("--strategy", choices=STRATEGIES, default="inconsistency",
                   help="inconsistency (the active-learning paper's), entropy, random, or diverse (inconsistency "
                        "spread over robots and time)")
    s.add_argument("--score", choices=CAPTURE_SCORES, default="inconsistency",
                   help="inconsistency / diverse: the per-frame score to rank by (default: the paper's image "
                        "inconsistency; detection_inconsistency / detection_entropy: as the robot computed them)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bucket-s", type=float, default=600.0, help="diverse: length of a time bucket (s)")
    s.add_argument("--out", required=True, help="the selection file (JSON)")
    s.set_defaults(func=cmd_select)
    e = cs.add_parser("export", help="write a selection in a labeling tool's import format")
    e.add_argument("selection")
    e.add_argument("--format", required=True, choices=("coco", "cvat", "label-studio"))
    e.add_argument("--out", required=True, help="a new folder")
    e.add_argument("--pre-annotate", action="store_true", help="the model's detections as pre-annotations")
    e.add_argument("--labels", help="comma-separated class list (default: the capturing model's classes)")
    e.add_argument("--min-score", type=float, default=0.0, help="pre-annotations: lowest detection score kept")
    e.add_argument("--url-prefix", help="label-studio: image URL prefix (default: Label Studio's local-files "
                                        "URL /data/local-files/?d=<OUT name>/, served with "
                                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<OUT's parent>)")
    e.set_defaults(func=cmd_export)
    i = cs.add_parser("import", help="add a labeling tool's export of the labels to a captures dataset")
    i.add_argument("labels", help="COCO JSON, CVAT annotations.xml (or its folder), or Label Studio JSON export")
    i.add_argument("--format", required=True, choices=("coco", "cvat", "label-studio"))
    i.add_argument("--into", required=True, help="the dataset folder (train fit: data: {type: captures, root: ...})")
    i.add_argument("--export", help="the export folder the labels belong to (default: found beside the labels)")
    i.add_argument("--label-map", action="append", metavar="NAME=CLASS", help="rename a tool label (CLASS - drops it)")
    i.set_defaults(func=cmd_import)
    n = cs.add_parser("info", help="records of a pool by status, robot and dropped reason")
    n.add_argument("pool")
    n.set_defaults(func=cmd_info)
