"""TensorRT runner: a serialized engine (.plan) on the current CUDA GPU, I/O through cuda-python."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..trt import require_cudart, require_tensorrt
from ..trt.device import CudaError, cuda_call, error_text
from ..trt.engine import io_tensors, last_error, load_engine
from .base import Runner


class TensorRTRunner(Runner):
    """Runs a fixed-shape engine built by ``rcan-deploy build`` (one input, one output).

    ``activate`` allocates, once, a device buffer per I/O tensor, pinned (page-locked) host
    buffers for the input and output, a stream and two events; if any step fails, what was
    allocated so far is freed before the error propagates. ``infer`` copies the input into its
    pinned buffer, then to the GPU, enqueues the engine with ``execute_async_v3`` and copies the
    output back. ``deactivate`` frees everything even when some frees fail, then reports the
    failures in one line. CUDA errors are one-line :class:`CudaError`\\ s.

    ``inference_times`` (base class) holds the wall time of each call including the copies;
    ``gpu_times`` the engine's GPU time alone, in seconds, measured with CUDA events."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path):
        super().__init__(engine_path)
        self.gpu_times: list[float] = []
        self._loaded = None
        self._context = None
        self._host: dict[str, np.ndarray] = {}
        self._resources: list[tuple[str, object]] = []  # (free function, handle), oldest first

    def activate_impl(self) -> None:
        trt = require_tensorrt()
        self._cudart = require_cudart()
        try:
            self._activate(trt)
        except BaseException:
            self._release()  # the original error matters more than a failed free
            raise

    def _activate(self, trt) -> None:
        self._loaded = load_engine(trt, self._cudart, self.model)
        tensors = io_tensors(trt, self._loaded.engine)
        inputs = [t for t in tensors if t["mode"] == "input"]
        outputs = [t for t in tensors if t["mode"] == "output"]
        if len(inputs) != 1 or not outputs or any(d < 0 for t in tensors for d in t["shape"]):
            raise UserError(f"{self.model}: expected a fixed-shape engine with one input and an "
                            f"output, got {[(t['name'], t['shape']) for t in tensors]}")
        self._input, self._output = inputs[0], outputs[0]
        self._context = self._loaded.engine.create_execution_context()
        if self._context is None:
            raise UserError(f"{self.model}: TensorRT could not create an execution context"
                            f"{_detail()}")
        self._device = {}
        for tensor in tensors:
            pointer = self._allocate("cudaMalloc", "cudaFree", _nbytes(tensor))
            self._device[tensor["name"]] = pointer
            if not self._context.set_tensor_address(tensor["name"], pointer):
                raise UserError(f"{self.model}: TensorRT refused the buffer of tensor "
                                f"{tensor['name']!r}{_detail()}")
        for tensor in (self._input, self._output):
            pointer = self._allocate("cudaMallocHost", "cudaFreeHost", _nbytes(tensor))
            raw = (ctypes.c_ubyte * _nbytes(tensor)).from_address(pointer)
            self._host[tensor["name"]] = np.frombuffer(raw, dtype=tensor["dtype"]).reshape(
                tensor["shape"])
        self._stream = self._allocate("cudaStreamCreate", "cudaStreamDestroy")
        self._events = (self._allocate("cudaEventCreate", "cudaEventDestroy"),
                        self._allocate("cudaEventCreate", "cudaEventDestroy"))

    def _allocate(self, create: str, free: str, *args):
        handle = self._cuda(getattr(self._cudart, create)(*args), create)
        self._resources.append((free, handle))
        return handle

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        cudart, stream = self._cudart, self._stream
        if list(x.shape) != self._input["shape"]:
            raise ValueError(f"expected an input of shape {self._input['shape']}, got "
                             f"{list(x.shape)}")
        host_in, host_out = self._host[self._input["name"]], self._host[self._output["name"]]
        np.copyto(host_in, x, casting="same_kind")
        to_device, to_host = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        self._cuda(cudart.cudaMemcpyAsync(self._device[self._input["name"]], host_in.ctypes.data,
                                          host_in.nbytes, to_device, stream), "cudaMemcpyAsync")
        self._cuda(cudart.cudaEventRecord(self._events[0], stream), "cudaEventRecord")
        if not self._context.execute_async_v3(int(stream)):
            raise UserError(f"{self.model}: TensorRT could not run the engine"
                            f"{_detail()}")
        self._cuda(cudart.cudaEventRecord(self._events[1], stream), "cudaEventRecord")
        self._cuda(cudart.cudaMemcpyAsync(host_out.ctypes.data, self._device[self._output["name"]],
                                          host_out.nbytes, to_host, stream), "cudaMemcpyAsync")
        self._cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        self.gpu_times.append(self._cuda(cudart.cudaEventElapsedTime(*self._events),
                                         "cudaEventElapsedTime") / 1e3)
        return host_out.copy()

    def _cuda(self, result: tuple, what: str):
        return cuda_call(self._cudart, result, f"{self.model}: {what}")

    def _release(self) -> list[str]:
        """Free every resource, newest first, carrying on past failures; return them."""
        self._host = {}  # the arrays view pinned memory that is about to be freed
        self._context = None  # before the engine (and the runtime) it was made from
        failures = []
        while self._resources:
            free, handle = self._resources.pop()
            try:
                error = getattr(self._cudart, free)(handle)[0]
            except Exception as exc:  # a broken runtime must not stop the other frees
                failures.append(f"{free}: {exc}")
                continue
            if error != self._cudart.cudaError_t.cudaSuccess:
                failures.append(f"{free}: {error_text(self._cudart, error)}")
        self._loaded = None
        return failures

    def deactivate_impl(self) -> None:
        failures = self._release()
        if failures:
            raise CudaError(f"{self.model}: releasing the TensorRT runner's GPU resources failed: "
                            + "; ".join(failures))


def _nbytes(tensor: dict) -> int:
    return int(np.prod(tensor["shape"])) * np.dtype(tensor["dtype"]).itemsize


def _detail() -> str:
    last = last_error()
    return f" ({last})" if last else ""
