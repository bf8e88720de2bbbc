"""Inference runners (Polygraphy style): ``get_runner("ort" | "openvino", model)``.

Importing this package loads no runtime; each runner imports its runtime in ``activate()``.
"""

from __future__ import annotations

from ..errors import UserError
from .base import ModelSource, Runner
from .onnxruntime import OnnxRuntimeRunner
from .openvino import OpenVINORunner

RUNTIMES = ("ort", "openvino")
_RUNNERS = {"ort": OnnxRuntimeRunner, "openvino": OpenVINORunner}


def get_runner(name: str, model: ModelSource, threads: int | None = None) -> Runner:
    """An inactive runner for ``model`` on runtime ``name`` (one of RUNTIMES)."""
    if name not in _RUNNERS:
        raise UserError(f"unknown runtime {name!r}: expected one of {', '.join(RUNTIMES)}")
    return _RUNNERS[name](model, threads=threads)


__all__ = ["RUNTIMES", "OnnxRuntimeRunner", "OpenVINORunner", "Runner", "get_runner"]
