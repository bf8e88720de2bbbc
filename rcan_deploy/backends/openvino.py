"""OpenVINO CPU runner."""

from __future__ import annotations

import numpy as np

from .base import ModelSource, Runner, import_optional, load_failure, model_path


class OpenVINORunner(Runner):
    """Runs an ONNX model (path or ModelProto) on OpenVINO's CPU plugin with the LATENCY hint;
    ``threads`` sets the inference thread count (None: runtime default).

    Non-quantized layers run in fp32 even on CPUs where OpenVINO would default to bf16, so that
    fp32 results stay comparable with the other runtimes; Q/DQ layers still run in int8."""

    name = "openvino"

    def __init__(self, model: ModelSource, threads: int | None = None):
        super().__init__(model)
        self.threads = threads
        self.request = None

    def activate_impl(self) -> None:
        ov = import_optional("openvino", "openvino")
        path = model_path(self.model)
        core = ov.Core()
        try:
            network = core.read_model(str(path) if path else self.model.SerializeToString())
        except RuntimeError as exc:
            if path is None:
                raise
            raise load_failure(path, "OpenVINO", exc) from None
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self.request = core.compile_model(network, "CPU", config).create_infer_request()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()  # the request reuses its buffer

    def deactivate_impl(self) -> None:
        self.request = None
