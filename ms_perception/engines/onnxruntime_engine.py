"""ONNX Runtime engine (CPU, CUDA or TensorRT execution provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ms_perception.core.card import ModelCard, onnx_graph_sha256, read_card
from ms_perception.engines.base import Engine, EngineError

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32"}


def session_options(threads: int = 0):
    """The latency settings every ONNX Runtime session here uses (the engine's and ``bench --peer``'s):
    full graph optimization, one request at a time, no thread spinning."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRuntimeEngine(Engine):
    def __init__(self, model_path: str | Path, provider: str = "cpu", threads: int = 0,
                 card: ModelCard | None = None, accept_edited_graph: bool = False):
        import onnxruntime as ort
        p = Path(model_path)
        if not p.exists():
            raise EngineError(f"model file not found: {p} (export one with `ms-perception train export`, or use the "
                              "embedded default model)")
        self.card = card or read_card(p)
        self.warnings: list[str] = []
        self._check_graph_hash(p, accept_edited_graph)
        if provider not in PROVIDERS:
            raise EngineError(f"unknown ONNX Runtime provider {provider!r}; choose one of {list(PROVIDERS)}")
        available = set(ort.get_available_providers())
        wanted = [pr for pr in PROVIDERS[provider] if pr in available]
        if PROVIDERS[provider][0] not in available:
            raise EngineError(f"ONNX Runtime here has no {PROVIDERS[provider][0]} (available: {sorted(available)}); "
                              f"install the matching onnxruntime build or choose backend onnxruntime-cpu")
        so = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(p), so, providers=wanted)
        except Exception as exc:  # ORT raises several exception types
            raise EngineError(f"{p}: ONNX Runtime cannot load the model ({exc})") from None
        self.name = f"onnxruntime-{provider}"
        self.providers = self.session.get_providers()
        inputs = {i.name: (list(i.shape), _ORT_DTYPES.get(i.type, i.type)) for i in self.session.get_inputs()}
        outputs = {o.name: (list(o.shape), _ORT_DTYPES.get(o.type, o.type)) for o in self.session.get_outputs()}
        self.output_names = list(outputs)
        self.check_against_card(inputs, outputs, str(p))

    def _check_graph_hash(self, p: Path, accept: bool) -> None:
        """The card's graph_sha256 must be the hash of the graph it travels with (captures carry it as the
        model's identity); an edited graph is refused unless ``accept`` says it was edited on purpose."""
        actual = onnx_graph_sha256(p.read_bytes())
        if actual == self.card.graph_sha256:
            return
        what = (f"the card's graph_sha256 {self.card.graph_sha256[:16] or '(empty)'}... is not the hash of this graph "
                f"({actual[:16]}...)")
        if not accept:
            raise EngineError(f"{p}: {what}: the graph was changed after export, or the card belongs to another model; "
                              "re-export it, or accept the edited graph explicitly (replay/demo --accept-edited-graph, "
                              "node parameter accept_edited_graph: true)")
        self.warnings.append(f"{p}: {what}; accepted as asked (accept_edited_graph), records carry the graph's own hash")
        self.card.graph_sha256 = actual

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))
