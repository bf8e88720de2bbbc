"""ONNX Runtime CPU runner."""

from __future__ import annotations

import numpy as np

from ..onnx_utils import ort_session
from .base import ModelSource, Runner, import_optional, load_failure, model_path


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model (path or ModelProto) on ONNX Runtime's CPUExecutionProvider with all
    graph optimisations; ``threads`` sets the intra-op thread count (None: runtime default)."""

    name = "onnxruntime"

    def __init__(self, model: ModelSource, threads: int | None = None):
        super().__init__(model)
        self.threads = threads
        self.session = None

    def activate_impl(self) -> None:
        import_optional("onnxruntime", "onnxruntime")
        path = model_path(self.model)
        try:
            self.session = ort_session(path or self.model, self.threads)
        except Exception as exc:  # ORT raises its own exception types for unreadable files
            if path is None:
                raise
            raise load_failure(path, "ONNX Runtime", exc) from None
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def deactivate_impl(self) -> None:
        self.session = None
