"""Native TensorRT 10 engine (JetPack 6 ships TensorRT 10.3).

NOT RUN on the project's machines: TensorRT cannot be installed there (PyPI wheels are
download stubs), so this file is written against the TensorRT 10 Python API and its tests
skip when ``tensorrt`` is absent. What is tested without TensorRT: the cache key, the
sidecar card, and the error paths that do not need the library.

Build: ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in TRT 10)
-> ``OnnxParser.parse`` -> ``BuilderConfig`` (workspace pool limit, FP16 / INT8 flags) ->
``build_serialized_network``. The serialized engine is cached under a name keyed by the
ONNX file's SHA-256, the TensorRT version, the GPU's compute capability and the precision,
with the model card as a JSON sidecar. An engine whose key does not match (other GPU, other
TensorRT, changed ONNX) is rebuilt, or refused with a message when ``rebuild=False``.
Run: ``set_tensor_address`` for every I/O tensor, ``execute_async_v3(stream)``, with device
buffers allocated once through cuda-python's ``cudart``.

INT8: TensorRT 10 deprecates implicit (calibrator) INT8 in favour of explicitly quantized
ONNX (Q/DQ nodes). ``precision="int8"`` sets the INT8 flag (plus FP16 fallback) and is only
meaningful for a Q/DQ-quantized ONNX; no calibrator is provided here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ms_perception.core.atomic import atomic_write
from ms_perception.core.card import ModelCard, onnx_graph_sha256, read_card
from ms_perception.engines.base import Engine, EngineError
from ms_perception.engines.nms_strip import has_nms, strip_nms

PRECISIONS = ("fp32", "fp16", "int8")
WORKSPACE_BYTES = 1 << 30


def onnx_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(onnx_hash: str, trt_version: str, compute_capability: tuple[int, int], precision: str) -> str:
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return f"{onnx_hash[:16]}-trt{trt_version}-sm{compute_capability[0]}{compute_capability[1]}-{precision}"


def engine_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    engine = cache_dir / f"{key}.engine"
    return engine, engine.with_suffix(".engine.card.json")


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineError("backend 'tensorrt' needs the TensorRT Python bindings (JetPack: `sudo apt install "
                          "python3-libnvinfer`); or use backend onnxruntime-tensorrt / onnxruntime-cuda / "
                          "onnxruntime-cpu") from None
    try:
        from cuda import cudart  # cuda-python
    except ImportError:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 layout
        except ImportError:
            raise EngineError("backend 'tensorrt' needs cuda-python for device buffers: `pip install cuda-python`") \
                from None
    return trt, cudart


def _check(ret, what: str):
    """cuda-python returns (err,) or (err, value): raise on error, return the value."""
    err, *vals = ret if isinstance(ret, tuple) else (ret,)
    if int(err) != 0:
        raise EngineError(f"CUDA error during {what}: {err}")
    return vals[0] if len(vals) == 1 else tuple(vals) if vals else None


def compute_capability(cudart, device: int = 0) -> tuple[int, int]:
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    return int(props.major), int(props.minor)


def build_engine(onnx_path: str | Path, cache_dir: str | Path, precision: str = "fp16",
                 workspace_bytes: int = WORKSPACE_BYTES, rebuild: bool = True,
                 accept_edited_graph: bool = False) -> tuple[Path, ModelCard]:
    """Build (or reuse) the engine for ``onnx_path`` on this GPU; returns (engine path, card)."""
    trt, cudart = _import_trt()
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    if not onnx_path.exists():
        raise EngineError(f"ONNX model not found: {onnx_path}")
    card = read_card(onnx_path)
    actual = onnx_graph_sha256(onnx_path.read_bytes())
    if actual != card.graph_sha256:
        if not accept_edited_graph:
            raise EngineError(f"{onnx_path}: the card's graph_sha256 is not the hash of this graph ({actual[:16]}...); "
                              "re-export it, or accept the edited graph explicitly (accept_edited_graph)")
        card.graph_sha256 = actual
    key = cache_key(onnx_sha256(onnx_path), trt.__version__, compute_capability(cudart), precision)
    engine_path, card_path = engine_paths(cache_dir, key)
    if engine_path.exists() and card_path.exists():   # the card the engine was built with (NMS taken out)
        return engine_path, ModelCard.from_json(card_path.read_text(), str(card_path))
    stale = sorted(cache_dir.glob(f"{key.split('-')[0]}-*.engine")) if cache_dir.exists() else []
    if stale and not rebuild:
        raise EngineError(f"cached engine(s) {[s.name for s in stale]} were built for another TensorRT version, GPU "
                          f"or precision (need {key}); run `ms-perception build-engine` on this device")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    graph = onnx_path.read_bytes()
    if has_nms(card):   # a data-dependent output: the engine runs without it, the runtime does the NMS
        graph, card = strip_nms(graph, card)
    if not parser.parse(graph):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            raise EngineError("this GPU has no fast FP16; build with precision fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(engine_path, bytes(serialized))
    atomic_write(card_path, card.to_json())
    return engine_path, card


class TensorRTEngine(Engine):
    """Runs a serialized engine (``.engine`` + ``.engine.card.json``), or builds one from an
    ``.onnx`` into ``cache_dir`` first."""

    def __init__(self, model_path: str | Path, cache_dir: str | Path | None = None, precision: str = "fp16",
                 rebuild: bool = True, accept_edited_graph: bool = False, **_):
        trt, cudart = _import_trt()
        self.warnings: list[str] = []
        self.trt, self.cudart = trt, cudart
        p = Path(model_path)
        if not p.exists():
            raise EngineError(f"model file not found: {p}")
        if p.suffix == ".onnx":
            p, self.card = build_engine(p, cache_dir or p.parent / "engines", precision, rebuild=rebuild,
                                        accept_edited_graph=accept_edited_graph)
        else:
            self.card = read_card(p)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(p.read_bytes())
        if self.engine is None:
            raise EngineError(f"{p}: TensorRT could not deserialize the engine (built with another TensorRT version "
                              "or GPU?); rebuild it with `ms-perception build-engine` on this device")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.name = "tensorrt"
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        inputs, outputs = {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if any(s < 0 for s in shape):
                raise EngineError(f"{p}: tensor {name!r} has a dynamic shape {shape}; export with static shapes")
            host = np.empty(shape, dtype)
            ptr = _check(cudart.cudaMalloc(host.nbytes), "cudaMalloc")
            self.buffers[name] = (ptr, host)
            self.context.set_tensor_address(name, ptr)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs[name] = (list(shape), dtype.name)
            else:
                outputs[name] = (list(shape), dtype.name)
        self.input_names, self.output_names = list(inputs), list(outputs)
        self.check_against_card(inputs, outputs, str(p))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = self.cudart
        h2d, d2h = c.cudaMemcpyKind.cudaMemcpyHostToDevice, c.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            ptr, host = self.buffers[name]
            a = np.ascontiguousarray(feeds[name], dtype=host.dtype)
            if a.shape != host.shape:
                raise EngineError(f"input {name!r} has shape {a.shape}, the engine expects {host.shape}")
            _check(c.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, h2d, self.stream), "copy to device")
        if not self.context.execute_async_v3(self.stream):
            raise EngineError("TensorRT execute_async_v3 failed")
        out = {}
        for name in self.output_names:
            ptr, host = self.buffers[name]
            _check(c.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream), "copy to host")
        _check(c.cudaStreamSynchronize(self.stream), "stream synchronize")
        for name in self.output_names:
            out[name] = self.buffers[name][1].copy()
        return out

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        self.cudart.cudaStreamDestroy(self.stream)

