"""One place that assembles the runtime pipeline from one configuration: the detector node's
parameter table (:mod:`ms_perception.ros.params`, ROS-free). The node, ``ms-perception replay``
and the demo all call :func:`build_pipeline` with a parameter dict, so their defaults (score
and NMS thresholds, thermal window, capture policy and quota) cannot drift apart; replay and
the demo override only what they set explicitly, and replay reads the node's YAML as it is
(``--params-file config/detector.yaml``).
"""
from __future__ import annotations

from pathlib import Path

from ms_perception.core.capture import CapturePolicy, CaptureWriter
from ms_perception.core.pipeline import Pipeline
from ms_perception.engines import Engine, create_engine
from ms_perception.ros.params import DEFAULTS, capture_config, check_all, coerce, pipeline_config


class BuildError(ValueError):
    """A parameter is invalid or names something unusable; the message names the parameter and the fix."""


def resolve(params: dict) -> dict:
    """Defaults + ``params``, validated as the node validates them (every problem in one message)."""
    p = {**DEFAULTS, **{k: coerce(k, v) for k, v in params.items()}}
    problems = check_all(p)
    if problems:
        raise BuildError("; ".join(problems))
    return p


def default_model() -> Path:
    return Path(__file__).resolve().parent / "models" / "default_gaff_three_branch.onnx"


def load_engine(p: dict, path: str | Path | None = None) -> Engine:
    """The engine for ``path`` (default: the ``model_path`` parameter, '' = the embedded model)."""
    path = Path(path if path is not None else (p["model_path"] or default_model())).expanduser()
    if p["backend"] == "tensorrt":
        return create_engine("tensorrt", path, cache_dir=p["engine_cache_dir"] or None, precision=p["precision"],
                             accept_edited_graph=p["accept_edited_graph"])
    return create_engine(p["backend"], path, accept_edited_graph=p["accept_edited_graph"])


def capture_for(p: dict, model_hash: str) -> tuple[CapturePolicy | None, CaptureWriter | None]:
    """Policy and writer when ``capture_enabled``; a folder that cannot be written raises OSError now."""
    if not p["capture_enabled"]:
        return None, None
    writer = CaptureWriter(Path(p["capture_dir"]).expanduser(), robot_id=p["robot_id"], model_hash=model_hash,
                           quota_bytes=int(p["capture_quota_mb"] * (1 << 20)), queue_size=int(p["capture_queue_size"]))
    return CapturePolicy(capture_config(p)), writer


def build_pipeline(params: dict, engine: Engine | None = None) -> Pipeline:
    """The pipeline the node runs, from a parameter dict (missing entries take the node's defaults)."""
    p = resolve(params)
    engine = engine if engine is not None else load_engine(p)
    policy, writer = capture_for(p, engine.card.graph_sha256[:16])
    try:
        pipe = Pipeline(engine, pipeline_config(p), policy, writer)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    pipe.warnings.extend(getattr(engine, "warnings", []))
    return pipe


def read_params_file(path: str | Path) -> dict:
    """The ``ros__parameters`` of a node parameter YAML (``/**:`` or any node name), as a dict."""
    import yaml
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"{p}: cannot read the parameter file ({exc})") from None
    if not isinstance(doc, dict):
        raise BuildError(f"{p}: not a ROS parameter file (expected '<node or /**>: ros__parameters: ...')")
    found = [v["ros__parameters"] for v in doc.values() if isinstance(v, dict) and
             isinstance(v.get("ros__parameters"), dict)]
    if len(found) != 1:
        raise BuildError(f"{p}: expected one '<node or /**>: ros__parameters:' section, found {len(found)}")
    return dict(found[0])
