"""Inference runners (Polygraphy style): ``get_runner("ort" | "openvino" | "tensorrt" | "torch",
model)``.

Importing this package loads no runtime; each runner imports its runtime in ``activate()``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .base import ModelSource, Runner
from .onnxruntime import OnnxRuntimeRunner
from .openvino import OpenVINORunner
from .tensorrt import TensorRTRunner
from .torch import TorchRunner

RUNTIMES = ("ort", "openvino")  # CPU runtimes of ONNX graphs
GPU_RUNTIMES = ("tensorrt",)  # need an NVIDIA GPU; take an engine file (rcan-deploy build)

# name -> factory(model, threads); ``threads`` is the host thread count of CPU runtimes.
_RUNNERS: dict[str, Callable[[ModelSource, int | None], Runner]] = {
    "ort": lambda model, threads: OnnxRuntimeRunner(model, threads=threads),
    "openvino": lambda model, threads: OpenVINORunner(model, threads=threads),
    "tensorrt": lambda model, threads: TensorRTRunner(model),
    # the PyTorch network an ONNX graph was exported from (rebuilt from its sidecar chain)
    "torch": lambda model, threads: TorchRunner(model, threads=threads),
}


def get_runner(name: str, model: ModelSource, threads: int | None = None) -> Runner:
    """An inactive runner for ``model`` on runtime ``name`` (RUNTIMES or GPU_RUNTIMES)."""
    if name not in _RUNNERS:
        raise UserError(f"unknown runtime {name!r}: expected one of {', '.join(_RUNNERS)}")
    return _RUNNERS[name](model, threads)


__all__ = ["GPU_RUNTIMES", "RUNTIMES", "OnnxRuntimeRunner", "OpenVINORunner", "Runner",
           "TensorRTRunner", "TorchRunner", "get_runner"]
