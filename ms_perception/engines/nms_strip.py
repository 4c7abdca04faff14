"""Take the in-graph NMS (training graph_edits.add_nms) out of a model before TensorRT builds it.

ONNX NonMaxSuppression gives an output whose length depends on the data; this runtime's TensorRT
engine allocates every output once, at a static shape. The TensorRT build therefore removes
exactly the nodes, inputs and output that ``add_nms`` added (the graph is then byte-for-byte the
graph before the edit: tested by its hash), and that engine's pipeline runs the runtime's NMS
(``postprocess.select_detections``), the same rule. Needs the ``onnx`` package (only here, in the
engine build)."""
from __future__ import annotations

from ms_perception.core.card import CARD_KEY, ModelCard, onnx_graph_sha256
from ms_perception.core.postprocess import NMS_INPUTS, NMS_OUTPUT
from ms_perception.engines.base import EngineError

NMS_PREFIX = "ms_nms/"   # the names of the nodes add_nms adds


def has_nms(card: ModelCard) -> bool:
    return card.output(NMS_OUTPUT) is not None


def strip_nms(model_bytes: bytes, card: ModelCard) -> tuple[bytes, ModelCard]:
    """(model without the in-graph NMS, carrying its card without the NMS inputs and output and with
    the new graph hash; that card)."""
    try:
        import onnx
    except ImportError:
        raise EngineError("this model has the in-graph NMS (detections_index), which a TensorRT build takes out "
                          "again; that needs the onnx package: pip install onnx") from None
    m = onnx.load_from_string(model_bytes)
    g = m.graph
    ours = [n for n in g.node if n.name.startswith(NMS_PREFIX)]
    if not ours:
        raise EngineError(f"{card.name}: the card lists {NMS_OUTPUT} but the graph has no {NMS_PREFIX} nodes; "
                          "re-run `train graph-edit --nms` on the export")
    removed = {o for n in ours for o in n.output} | set(NMS_INPUTS)
    keep = [n for n in g.node if not n.name.startswith(NMS_PREFIX)]
    users = sorted({n.name or n.op_type for n in keep if removed & set(n.input)})
    if users:
        raise EngineError(f"{card.name}: nodes {users} use the in-graph NMS's tensors; it cannot be taken out")
    del g.node[:]
    g.node.extend(keep)
    inputs = [i for i in g.input if i.name not in NMS_INPUTS]
    del g.input[:]
    g.input.extend(inputs)
    outputs = [o for o in g.output if o.name != NMS_OUTPUT]
    del g.output[:]
    g.output.extend(outputs)
    new = ModelCard.from_dict(card.to_dict())
    new.inputs = [s for s in new.inputs if s.name not in NMS_INPUTS]
    new.outputs = [s for s in new.outputs if s.name != NMS_OUTPUT]
    new.notes = (new.notes + "; " if new.notes else "") + "in-graph NMS taken out for TensorRT (the runtime runs it)"
    new.graph_sha256 = onnx_graph_sha256(m.SerializeToString())
    for e in m.metadata_props:   # the model carries its own card (the hash leaves that entry out)
        if e.key == CARD_KEY:
            e.value = new.to_json()
    return m.SerializeToString(), new
