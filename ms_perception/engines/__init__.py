"""Inference engines behind one interface; :func:`create_engine` picks one by name.

onnxruntime[-cpu|-cuda|-tensorrt]: ONNX Runtime with that execution provider.
tensorrt: native TensorRT 10 engine built from the ONNX on the target (cached).
"""
from __future__ import annotations

from pathlib import Path

from ms_perception.engines.base import Engine, EngineError

BACKENDS = ("onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def create_engine(backend: str, model_path: str | Path, **options) -> Engine:
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "tensorrt":
        from ms_perception.engines.tensorrt_engine import TensorRTEngine
        return TensorRTEngine(model_path, **options)
    from ms_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
    provider = backend.split("-", 1)[1] if "-" in backend else "cpu"
    return OnnxRuntimeEngine(model_path, provider=provider, **options)


__all__ = ["BACKENDS", "Engine", "EngineError", "create_engine"]
