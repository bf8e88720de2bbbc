"""Runner template shared by every backend (Polygraphy style).

A runner is built cheaply, ``activate()`` loads the runtime and compiles the model,
``infer(x)`` runs one NCHW float32 batch and records its wall time, ``deactivate()`` frees the
runtime. Runners are context managers: ``with get_runner("ort", path) as runner: runner.infer(x)``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from ..errors import UserError, short_reason

ModelSource = str | Path | onnx.ModelProto


def import_optional(module: str, package: str) -> ModuleType:
    """Import an optional runtime, or stop with a one-line hint naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = f"this runtime needs the '{package}' package: pip install {package}"
        raise UserError(hint) from None


def model_path(model: ModelSource) -> Path | None:
    """The file behind ``model`` (None for a ModelProto); a missing file is a UserError."""
    if isinstance(model, onnx.ModelProto):
        return None
    path = Path(model)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    return path


def load_failure(path: Path, runtime: str, exc: Exception) -> UserError:
    """A one-line user error for a model file the runtime rejects."""
    return UserError(f"{path}: {runtime} cannot load this model ({short_reason(exc)})")


class Runner:
    """Base runner: owns the activation state, input checks and timing; subclasses implement
    ``activate_impl``, ``infer_impl`` and ``deactivate_impl``."""

    name = "runner"

    def __init__(self, model: ModelSource):
        self.model = model
        self.is_active = False
        self.inference_times: list[float] = []

    def activate(self) -> None:
        """Load the runtime and compile the model."""
        if self.is_active:
            raise RuntimeError(f"{self.name} runner is already active")
        self.activate_impl()
        self.is_active = True

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one NCHW float32 input through the model's first input; return its first output."""
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner is not active: call activate() or use 'with'")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW array, got shape {tuple(x.shape)}")
        start = time.perf_counter()
        output = self.infer_impl(x)
        self.inference_times.append(time.perf_counter() - start)
        return output

    def time(self, x: np.ndarray, warmup: int = 1, repeat: int = 3) -> list[float]:
        """Wall seconds of ``repeat`` inferences of ``x`` after ``warmup`` untimed ones."""
        for _ in range(warmup + repeat):
            self.infer(x)
        return self.inference_times[-repeat:]

    def last_inference_time(self) -> float | None:
        """Seconds taken by the latest ``infer`` call (None before the first)."""
        return self.inference_times[-1] if self.inference_times else None

    def deactivate(self) -> None:
        """Release the runtime; the runner can be activated again."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError
