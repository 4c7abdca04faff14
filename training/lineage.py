"""A trained model's lineage: where its weights came from and what it was trained on.

``train fit`` computes it once at the start of a run and stores it in every checkpoint (and in
``OUT/lineage.json``); ``train export`` copies it into the model card, adding the exported
checkpoint's hash; ``replay`` and the node print it (``ms_perception.core.card.lineage_summary``).

::

    {"generation": 2,                    # 0: from scratch; a fine-tune is its parent's + 1
     "parent": {"checkpoint": "...", "checkpoint_sha256": "...",      # fit.init_checkpoint
                "model_sha256": "...", "model": "..."},               # fit.parent_model's card
     "ancestors": [{"generation": 0, "model_sha256": ..., "checkpoint_sha256": ...}, ...],
     "datasets": [{"type": "synthetic", "items": 600, "repeat": 1, "content_sha256": "..."},
                  {"type": "captures", "root": "...", "items": 120, "repeat": 2, "content_sha256": "...",
                   "fleet_frames": 120, "robots": ["r1", "r2"], "captured_by": ["5cda2d226e4c30a2"]}],
     "fleet_frames": 120,                # labeled fleet frames trained on, over all datasets
     "checkpoint_sha256": "..."}         # added by export: the checkpoint the model was exported from

The content hash covers what training reads: for a disk dataset every image file's bytes
(visible, thermal, label map) and every annotation (boxes, labels, ignore flags), in the
dataset's order; for the synthetic source the generated, preprocessed pairs themselves. Two
datasets with the same hash trained the same way. Hashing reads the whole dataset once (a
KAIST-sized set: about a minute from a local disk); ``--resume`` reuses ``OUT/lineage.json``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ms_perception.core import jsonio

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _array(h, a) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def _file(h, path) -> None:
    if path is None:
        h.update(b"-")
        return
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)


def content_sha256(items) -> str:
    """The content hash of one source's items: a RecordPool (disk: files + annotations) or a list
    of PoolItems (synthetic: the generated pairs)."""
    h = hashlib.sha256()
    records = getattr(items, "records", None)
    if records is not None:
        for r in records:
            h.update(str(r.name).encode() + b"\0")
            for p in (r.visible_path, r.thermal_path, r.label_path):
                _file(h, p)
            for a in (r.boxes, r.labels, r.ignore):
                _array(h, a)
            hom = (r.extra or {}).get("homography_thermal_to_visible")
            if hom is not None:
                _array(h, np.asarray(hom, np.float64))
    else:
        for it in items:
            for a in (it.visible, it.thermal, it.boxes, it.labels, it.semantic, it.ignore):
                _array(h, a)
    return h.hexdigest()


def _fleet(items) -> dict:
    prov = [(r.extra or {}).get("ms_perception") for r in getattr(items, "records", [])]
    prov = [p for p in prov if p]
    if not prov:
        return {}
    return {"fleet_frames": len(prov), "robots": sorted({str(p.get("robot")) for p in prov}),
            "captured_by": sorted({str(p.get("model_hash")) for p in prov if p.get("model_hash")})}


def dataset_entry(d, items) -> dict:
    e = {"type": d.type, "items": len(items), "repeat": d.repeat, "content_sha256": content_sha256(items)}
    if d.type == "synthetic":
        e["generator"] = {k: getattr(d, k) for k in ("pairs", "width", "height", "thermal_factor", "night_fraction",
                                                      "crossover_fraction", "sequence_length", "seed")}
    else:
        e.update({"root": str(d.root), "split": d.split, **({"limit": d.limit} if d.limit else {})})
    e.update(_fleet(items))
    return e


def checkpoint_lineage(path: str | Path) -> dict:
    """The lineage stored in a checkpoint ({} when it has none: written by an older release)."""
    import torch
    ck = torch.load(path, map_location="cpu", weights_only=True)
    text = ck.get("lineage") if isinstance(ck, dict) else None
    return json.loads(text) if isinstance(text, str) else {}


def parent_entry(init_checkpoint: str, parent_model: str) -> tuple[dict, dict]:
    """(parent, the parent's own lineage). ``parent_model``: the deployed model the checkpoint was
    exported as; a model exported from another checkpoint is refused (the lineage would lie)."""
    from ms_perception_training.config import ConfigError
    if not init_checkpoint:
        if parent_model:
            raise ConfigError("fit.parent_model is set but fit.init_checkpoint is not: fine-tuning starts from the "
                              "parent's checkpoint (--init-checkpoint)")
        return {}, {}
    if str(init_checkpoint).endswith(".onnx"):   # weights read from the deployed model itself
        from ms_perception.core.card import read_card
        card = read_card(init_checkpoint)
        if parent_model and read_card(parent_model).graph_sha256 != card.graph_sha256:
            raise ConfigError(f"fit.parent_model {parent_model} is not fit.init_checkpoint {init_checkpoint}, whose "
                              "weights this run starts from: leave parent_model out (the ONNX file is the parent)")
        parent = {"checkpoint": str(init_checkpoint), "model_sha256": card.graph_sha256, "model": card.name}
        exported_from = (card.lineage or {}).get("checkpoint_sha256")
        if exported_from:
            parent["checkpoint_sha256"] = exported_from
        return parent, card.lineage or {}
    parent = {"checkpoint": str(init_checkpoint), "checkpoint_sha256": file_sha256(init_checkpoint)}
    lineage = checkpoint_lineage(init_checkpoint)
    if parent_model:
        from ms_perception.core.card import read_card
        card = read_card(parent_model)
        exported_from = (card.lineage or {}).get("checkpoint_sha256")
        if exported_from and exported_from != parent["checkpoint_sha256"]:
            raise ConfigError(f"fit.parent_model {parent_model} was exported from checkpoint {exported_from[:16]}, not "
                              f"from fit.init_checkpoint {init_checkpoint} ({parent['checkpoint_sha256'][:16]}): name "
                              "the checkpoint that model was exported from")
        parent.update({"model_sha256": card.graph_sha256, "model": card.name})
        lineage = card.lineage or lineage
    return parent, lineage


def build_lineage(cfg, parts: list) -> dict:
    """``parts``: (DataConfig, items) of every training source, in order."""
    parent, plin = parent_entry(cfg.init_checkpoint, cfg.parent_model)
    datasets = [dataset_entry(d, items) for d, items in parts]
    lin = {"generation": (int(plin.get("generation", 0)) + 1) if parent else 0,
           "datasets": datasets, "fleet_frames": sum(int(e.get("fleet_frames", 0)) for e in datasets)}
    if parent:
        lin["parent"] = parent
        own = {k: parent[k] for k in ("model_sha256", "checkpoint_sha256") if k in parent}
        lin["ancestors"] = list(plin.get("ancestors") or []) + [{"generation": int(plin.get("generation", 0)), **own}]
    return lin


def source_parts(cfg_data, pool) -> list:
    """(DataConfig, items) per source of a pool made by ``open_source``."""
    parts = getattr(pool, "parts", None)
    if parts is None:
        return [(cfg_data, pool)]
    return [(d, items) for items, _, d in parts]


def write_lineage(out_dir: Path, lineage: dict) -> None:
    from ms_perception.core.atomic import atomic_write
    atomic_write(Path(out_dir) / "lineage.json", jsonio.dumps(lineage, indent=1, sort_keys=True))
