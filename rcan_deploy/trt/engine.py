"""Serialized engines: a quiet TensorRT logger, deserialisation with a clear mismatch error, and
the I/O tensors of an engine (TensorRT 10+ named-tensor API)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import UserError, short_reason
from ..record import read_record
from .device import current_gpu


_LOGGER = None


def trt_logger(trt: ModuleType):
    """The process-wide TensorRT logger: prints nothing, keeps error messages in ``.errors`` and
    warnings (unfused Q/DQ nodes among them) in ``.warnings``, both cleared here (one logger for
    all TensorRT objects, as TensorRT expects it to outlive them)."""
    global _LOGGER
    if _LOGGER is None:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.WARNING:
                    self.warnings.append(msg)

        _LOGGER = _Logger()
    _LOGGER.errors.clear()
    _LOGGER.warnings.clear()
    return _LOGGER


def last_error() -> str | None:
    """The latest error TensorRT logged since the logger was last fetched (one line)."""
    if _LOGGER is None or not _LOGGER.errors:
        return None
    return " ".join(_LOGGER.errors[-1].split())[:200] or None


def dtype_name(trt: ModuleType, dtype) -> str:
    """numpy name of a TensorRT data type (``float32``), else TensorRT's own (``bf16``)."""
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        return dtype.name.lower()


def io_tensors(trt: ModuleType, engine) -> list[dict[str, Any]]:
    """Name, mode (input/output), shape and dtype of each I/O tensor, in engine order."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        tensors.append({"name": name, "mode": engine.get_tensor_mode(name).name.lower(),
                        "shape": list(engine.get_tensor_shape(name)),
                        "dtype": dtype_name(trt, engine.get_tensor_dtype(name))})
    return tensors


def mismatch_error(path: Path, tensorrt_version: str, gpu: dict[str, Any],
                   detail: str | None) -> UserError:
    """A one-line error for an engine this TensorRT/GPU cannot load, naming what its sidecar says
    it was built with against what is here."""
    here = f"TensorRT {tensorrt_version} on {gpu['name']} (sm {gpu['compute_capability']})"
    record = read_record(path, verify=False)
    sections = record.sections if record else {}
    if "tensorrt" in sections and "gpu" in sections:
        built = sections["gpu"]
        origin = (f"it was built with TensorRT {sections['tensorrt'].get('version')} on "
                  f"{built['name']} (sm {built['compute_capability']})")
    else:
        origin = "no sidecar records what it was built with"
    reason = f" ({short_reason(Exception(detail))})" if detail and detail.strip() else ""
    return UserError(f"{path}: {here} cannot load this engine{reason}; {origin}: rebuild it here "
                     "with rcan-deploy build")


@dataclass
class LoadedEngine:
    """A deserialized engine, the runtime that made it (kept alive as long as the engine; the
    fields are released in this order) and the GPU it is on."""

    engine: Any
    runtime: Any
    gpu: dict[str, Any]


def load_engine(trt: ModuleType, cudart: ModuleType, path: str | Path) -> LoadedEngine:
    """Deserialize an engine file; UserError when it is missing, there is no GPU, or this
    TensorRT/GPU cannot load it (see :func:`mismatch_error`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such TensorRT engine file")
    gpu = current_gpu(cudart)
    logger = trt_logger(trt)
    runtime = trt.Runtime(logger)
    try:
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
    except Exception as exc:  # most versions log and return None; some raise
        logger.errors.append(str(exc))
        engine = None
    if engine is None:
        detail = logger.errors[-1] if logger.errors else None
        raise mismatch_error(path, trt.__version__, gpu, detail)
    return LoadedEngine(engine, runtime, gpu)
