"""TensorRT runner: a serialized engine (.plan) on the current CUDA GPU, I/O through cuda-python."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..trt import require_cudart, require_tensorrt
from ..trt.device import cuda_call
from ..trt.engine import io_tensors, load_engine
from .base import Runner


class TensorRTRunner(Runner):
    """Runs a fixed-shape engine built by ``rcan-deploy build`` (one input, one output).

    ``infer`` copies the input to the GPU, enqueues the engine with ``execute_async_v3`` on its
    own stream and copies the output back. ``inference_times`` (base class) holds the wall time
    of each call including the copies; ``gpu_times`` the engine's GPU time alone, in seconds,
    measured with CUDA events around the enqueue."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path):
        super().__init__(engine_path)
        self.gpu_times: list[float] = []
        self._loaded = None

    def activate_impl(self) -> None:
        trt = require_tensorrt()
        self._cudart = cudart = require_cudart()
        self._loaded = load_engine(trt, cudart, self.model)
        tensors = io_tensors(trt, self._loaded.engine)
        inputs = [t for t in tensors if t["mode"] == "input"]
        outputs = [t for t in tensors if t["mode"] == "output"]
        if len(inputs) != 1 or not outputs or any(d < 0 for t in tensors for d in t["shape"]):
            raise UserError(f"{self.model}: expected a fixed-shape engine with one input and an "
                            f"output, got {[(t['name'], t['shape']) for t in tensors]}")
        self._context = self._loaded.engine.create_execution_context()
        self._buffers = {}
        for tensor in tensors:
            nbytes = int(np.prod(tensor["shape"])) * np.dtype(tensor["dtype"]).itemsize
            self._buffers[tensor["name"]] = self._cuda(cudart.cudaMalloc(nbytes))
            self._context.set_tensor_address(tensor["name"], self._buffers[tensor["name"]])
        self._input, self._output = inputs[0], outputs[0]
        self._stream = self._cuda(cudart.cudaStreamCreate())
        self._events = (self._cuda(cudart.cudaEventCreate()), self._cuda(cudart.cudaEventCreate()))

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        cudart, stream = self._cudart, self._stream
        if list(x.shape) != self._input["shape"]:
            raise ValueError(f"expected an input of shape {self._input['shape']}, got "
                             f"{list(x.shape)}")
        x = np.ascontiguousarray(x, dtype=self._input["dtype"])
        output = np.empty(self._output["shape"], dtype=self._output["dtype"])
        self._cuda(cudart.cudaMemcpyAsync(self._buffers[self._input["name"]], x.ctypes.data,
                                          x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                          stream))
        self._cuda(cudart.cudaEventRecord(self._events[0], stream))
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.model}: TensorRT execute_async_v3 failed")
        self._cuda(cudart.cudaEventRecord(self._events[1], stream))
        self._cuda(cudart.cudaMemcpyAsync(output.ctypes.data, self._buffers[self._output["name"]],
                                          output.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        self._cuda(cudart.cudaStreamSynchronize(stream))
        self.gpu_times.append(self._cuda(cudart.cudaEventElapsedTime(*self._events)) / 1e3)
        return output

    def _cuda(self, result: tuple):
        return cuda_call(self._cudart, result)

    def deactivate_impl(self) -> None:
        cudart = self._cudart
        for event in self._events:
            self._cuda(cudart.cudaEventDestroy(event))
        self._cuda(cudart.cudaStreamDestroy(self._stream))
        for pointer in self._buffers.values():
            self._cuda(cudart.cudaFree(pointer))
        self._context = None  # before the engine (and the runtime) it was made from
        self._loaded = None
