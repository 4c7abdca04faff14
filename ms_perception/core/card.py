"""The model card: everything the runtime needs to know about an exported model.

Training writes it (``ms_perception_training.export``); the runtime reads it from the ONNX
``metadata_props`` (key :data:`CARD_KEY`) or from a JSON sidecar next to a TensorRT engine,
and never imports torch. A card that does not describe the model it travels with (input
names, shapes, the graph hash) is rejected with a message naming the mismatch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ms_perception.core.anchors import AnchorLevel
from ms_perception.core import jsonio

CARD_KEY = "ms_perception.card"
CARD_VERSION = 1
TASKS = ("detection", "segmentation")


class CardError(ValueError):
    """The model card is missing, malformed, or does not match the model file."""


@dataclass
class TensorSpec:
    """One graph input or output. shape is static (N first); dtype is a numpy dtype name."""
    name: str
    shape: list[int]
    dtype: str
    meaning: str = ""


@dataclass
class Normalization:
    """How pixel values become model inputs: x = (pixel / scale - mean) / std per channel.

    in_graph: the graph takes uint8 (thermal: the runtime's 8-bit window output) and applies
    this itself; otherwise the runtime feeds float32 already normalized.
    """
    mean: list[float]
    std: list[float]
    scale: float = 255.0
    in_graph: bool = True


@dataclass
class ModelCard:
    name: str
    task: str                                  # detection | segmentation
    class_names: list[str]                     # logit k -> class_names[k] (segmentation: id k)
    inputs: list[TensorSpec]                   # "visible" (N,3,H,W) and, if used, "thermal" (N,1,h,w)
    outputs: list[TensorSpec]
    visible_norm: Normalization
    thermal_norm: Normalization | None
    thermal_factor: int = 1                    # thermal has this many times fewer pixels than visible
    branches: list[str] = field(default_factory=lambda: ["fused"])  # outputs exist per branch
    # detection decoding: "in_graph" (outputs are xyxy boxes in input pixels) or "anchors"
    # (outputs are deltas; the runtime rebuilds anchors from anchor_levels)
    box_decoding: str = "in_graph"
    anchor_levels: list[AnchorLevel] = field(default_factory=list)
    level_sizes: list[list[int]] = field(default_factory=list)  # (H, W) per level, for scale-balanced scores
    box_coder_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    score_activation: str = "sigmoid"          # scores outputs are already probabilities
    graph_sha256: str = ""                     # hash of the ONNX graph without the card
    version: int = CARD_VERSION
    config: dict = field(default_factory=dict)  # the model config it was built from
    notes: str = ""
    # where the weights came from (``train fit`` writes it, ``train export`` copies it): the parent
    # model's hash, each training dataset with its content hash, how many fleet frames were labeled.
    # Empty for a model trained from scratch by an older release. See :func:`lineage_summary`.
    lineage: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        d = asdict(self)
        d["anchor_levels"] = [a.to_dict() for a in self.anchor_levels]
        return d

    def to_json(self) -> str:
        return jsonio.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(d: dict, source: str = "card") -> "ModelCard":
        if not isinstance(d, dict):
            raise CardError(f"{source}: the model card must be a JSON object")
        if d.get("version") != CARD_VERSION:
            raise CardError(f"{source}: model card version {d.get('version')!r}; this runtime reads version "
                            f"{CARD_VERSION} (re-export the model with this release)")
        try:
            d = dict(d)
            d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
            d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
            d["visible_norm"] = Normalization(**d["visible_norm"])
            d["thermal_norm"] = Normalization(**d["thermal_norm"]) if d.get("thermal_norm") else None
            d["anchor_levels"] = [AnchorLevel.from_dict(a) for a in d.get("anchor_levels", [])]
            card = ModelCard(**d)
        except (KeyError, TypeError) as exc:
            raise CardError(f"{source}: malformed model card ({exc})") from None
        card.validate(source)
        return card

    @staticmethod
    def from_json(text: str, source: str = "card") -> "ModelCard":
        try:
            return ModelCard.from_dict(json.loads(text), source)
        except json.JSONDecodeError as exc:
            raise CardError(f"{source}: model card is not valid JSON ({exc})") from None

    # ----------------------------------------------------------------------- accessors
    def validate(self, source: str = "card") -> None:
        if self.task not in TASKS:
            raise CardError(f"{source}: task {self.task!r} is not one of {TASKS}")
        names = [t.name for t in self.inputs]
        if "visible" not in names:
            raise CardError(f"{source}: the model card lists no 'visible' input (inputs: {names})")
        if self.task == "detection" and self.box_decoding == "anchors" and not self.anchor_levels:
            raise CardError(f"{source}: box_decoding 'anchors' needs anchor_levels")
        if not self.class_names:
            raise CardError(f"{source}: class_names is empty")
        if not isinstance(self.lineage, dict):
            raise CardError(f"{source}: lineage must be a JSON object, got {type(self.lineage).__name__}")

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    @property
    def uses_thermal(self) -> bool:
        return self.input("thermal") is not None

    @property
    def visible_hw(self) -> tuple[int, int]:
        s = self.input("visible").shape
        return int(s[2]), int(s[3])

    @property
    def thermal_hw(self) -> tuple[int, int] | None:
        t = self.input("thermal")
        return (int(t.shape[2]), int(t.shape[3])) if t else None


def lineage_summary(card: "ModelCard") -> str:
    """One line for logs and reports: the parent, the datasets and the fleet frames."""
    lin = card.lineage or {}
    if "datasets" not in lin:
        ck = lin.get("checkpoint_sha256")
        return ("lineage: not recorded" + (f" (exported from checkpoint {ck[:16]}, trained by an older release)"
                                           if ck else " (exported without a checkpoint)"))
    parent = lin.get("parent") or {}
    if parent:
        ident = parent.get("model_sha256") or parent.get("checkpoint_sha256") or "?"
        what = "model" if parent.get("model_sha256") else "checkpoint"
        head = f"fine-tuned from {what} {ident[:16]} (generation {lin.get('generation', '?')})"
    else:
        head = "trained from scratch (generation 0)"
    data = ", ".join(f"{d.get('type')}[{d.get('items')} items, {str(d.get('content_sha256', ''))[:12]}]"
                     for d in lin.get("datasets") or [])
    return f"lineage: {head} on {data or 'no recorded data'}; {int(lin.get('fleet_frames', 0))} labeled fleet frames"


def graph_hash(model_bytes: bytes) -> str:
    return hashlib.sha256(model_bytes).hexdigest()


def read_card(path: str | Path) -> ModelCard:
    """Read the card of an ``.onnx`` file (metadata_props) or a ``.json`` sidecar / engine sidecar."""
    p = Path(path)
    if not p.exists():
        raise CardError(f"{p}: model file not found")
    if p.suffix == ".json":
        return ModelCard.from_json(p.read_text(), str(p))
    if p.suffix != ".onnx":
        side = p.with_suffix(p.suffix + ".card.json")
        if not side.exists():
            raise CardError(f"{p}: no model card sidecar {side.name} next to the engine; rebuild the engine with "
                            "`ms-perception build-engine`, which writes it")
        return ModelCard.from_json(side.read_text(), str(side))
    meta = _onnx_metadata(p)
    if CARD_KEY not in meta:
        raise CardError(f"{p}: ONNX file has no '{CARD_KEY}' metadata; export it with "
                        "`ms-perception train export`, which embeds the model card")
    return ModelCard.from_json(meta[CARD_KEY], str(p))


def _onnx_metadata(p: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:  # fall back to ONNX Runtime, which the runtime needs anyway
        import onnxruntime as ort
        try:
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise CardError(f"{p}: not a readable ONNX model ({exc})") from None
        return dict(sess.get_modelmeta().custom_metadata_map)
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise CardError(f"{p}: not a readable ONNX model ({exc})") from None
    return {e.key: e.value for e in m.metadata_props}


# ------------------------------------------------------------------------- graph hash
_METADATA_PROPS = 14   # onnx.ModelProto.metadata_props (repeated StringStringEntryProto)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise CardError("truncated protobuf varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """Top-level protobuf fields of ``buf`` as (field number, raw bytes of the whole field, payload)."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
            payload = b""
        elif wire == 1:
            i += 8
            payload = b""
        elif wire == 2:
            n, i = _varint(buf, i)
            payload = buf[i:i + n]
            i += n
        elif wire == 5:
            i += 4
            payload = b""
        else:
            raise CardError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise CardError("truncated protobuf field")
        yield key >> 3, buf[start:i], payload


def onnx_graph_sha256(model_bytes: bytes) -> str:
    """SHA-256 of the serialized ModelProto without the card's metadata entry: what export writes
    into ``graph_sha256``. Computed on the wire format (protobuf serializes fields in field-number
    order), so the runtime needs no ``onnx`` package; the test compares it with onnx's own result."""
    kept = []
    for num, raw, payload in _fields(model_bytes):
        if num == _METADATA_PROPS:
            key = next((p for n, _, p in _fields(payload) if n == 1), b"")
            if key == CARD_KEY.encode():
                continue
        kept.append(raw)
    return hashlib.sha256(b"".join(kept)).hexdigest()
