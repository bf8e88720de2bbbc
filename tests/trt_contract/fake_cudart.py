"""A CUDA runtime on host memory with cuda-python's ``cuda.bindings.runtime`` calling convention
(``(error, *values)`` tuples, ``cudaError_t``/``cudaMemcpyKind`` enums, stream and event
handles that ``int()`` accepts), for running the project's TensorRT code without a GPU.

Device and pinned allocations are real host buffers (ctypes), so copies move real bytes and
:mod:`trt_contract.fake_tensorrt` can run an engine on them. It keeps count of every call and of
what is still allocated, and can be told to fail a given call (``fail``) to test error paths.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import sys
import types
from collections import Counter
from dataclasses import dataclass


class cudaError_t(enum.IntEnum):  # noqa: N801 (cuda-python's names)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


_TEXT = {cudaError_t.cudaSuccess: b"no error",
         cudaError_t.cudaErrorInvalidValue: b"invalid argument",
         cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
         cudaError_t.cudaErrorInsufficientDriver:
             b"CUDA driver version is insufficient for CUDA runtime version",
         cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
         cudaError_t.cudaErrorInvalidResourceHandle: b"invalid resource handle",
         cudaError_t.cudaErrorIllegalAddress: b"an illegal memory access was encountered"}


class _Handle:
    """cudaStream_t / cudaEvent_t: an opaque handle whose ``int()`` is its address."""

    def __init__(self, value: int):
        self._value = value

    def __int__(self) -> int:
        return self._value


@dataclass
class DeviceProp:
    name: bytes
    major: int
    minor: int


class FakeCuda:
    """State of the fake runtime; ``module()`` is what ``import cuda.bindings.runtime`` gives.

    ``fail``: {function name: {call number (1-based): error}} makes that call return the error.
    """

    def __init__(self, devices: int = 1, driver: int = 12090, runtime: int = 12090,
                 fail: dict[str, dict[int, cudaError_t]] | None = None):
        self.devices, self.driver, self.runtime = devices, driver, runtime
        self.fail = fail or {}
        self.calls: Counter = Counter()
        self.device: dict[int, ctypes.Array] = {}  # pointer -> buffer
        self.pinned: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.events: set[int] = set()
        self.unpinned_copies = 0  # host side of a copy outside pinned memory
        self._handles = itertools.count(0x1000, 0x10)

    # -- bookkeeping ---------------------------------------------------------------------------
    def live(self) -> dict[str, int]:
        return {"device": len(self.device), "pinned": len(self.pinned),
                "streams": len(self.streams), "events": len(self.events)}

    def _enter(self, name: str) -> cudaError_t | None:
        self.calls[name] += 1
        error = self.fail.get(name, {}).get(self.calls[name])
        return None if error is None else cudaError_t(error)

    def _inside(self, table: dict[int, ctypes.Array], pointer: int, count: int) -> bool:
        return any(base <= pointer and pointer + count <= base + ctypes.sizeof(buffer)
                   for base, buffer in table.items())

    def read(self, pointer: int, count: int) -> bytes:
        """Bytes of device memory (for the fake engine); AssertionError outside allocations."""
        assert self._inside(self.device, pointer, count), "read outside device allocations"
        return ctypes.string_at(pointer, count)

    def write(self, pointer: int, data: bytes) -> None:
        assert self._inside(self.device, pointer, len(data)), "write outside device allocations"
        ctypes.memmove(pointer, data, len(data))

    # -- the runtime API -----------------------------------------------------------------------
    def cudaGetErrorString(self, error):
        return cudaError_t.cudaSuccess, _TEXT.get(cudaError_t(error), b"unknown error")

    def cudaDriverGetVersion(self):
        return cudaError_t.cudaSuccess, self.driver

    def cudaRuntimeGetVersion(self):
        return cudaError_t.cudaSuccess, self.runtime

    def cudaGetDeviceCount(self):
        error = self._enter("cudaGetDeviceCount")
        if error is not None:
            return error, 0
        if self.driver < self.runtime:
            return cudaError_t.cudaErrorInsufficientDriver, 0
        if self.devices == 0:
            return cudaError_t.cudaErrorNoDevice, 0
        return cudaError_t.cudaSuccess, self.devices

    def cudaGetDevice(self):
        return cudaError_t.cudaSuccess, 0

    def cudaGetDeviceProperties(self, index):
        return cudaError_t.cudaSuccess, DeviceProp(b"Fake GPU (CPU memory)\0\0\0", 9, 0)

    def _alloc(self, name: str, table: dict, size) -> tuple:
        error = self._enter(name)
        if error is not None:
            return error, None
        if not isinstance(size, int) or size <= 0:
            return cudaError_t.cudaErrorInvalidValue, None
        buffer = ctypes.create_string_buffer(size)
        table[ctypes.addressof(buffer)] = buffer
        return cudaError_t.cudaSuccess, ctypes.addressof(buffer)

    def _free(self, name: str, table: dict, pointer) -> tuple:
        error = self._enter(name)
        if error is not None:
            return (error,)
        if table.pop(int(pointer), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t.cudaSuccess,)

    def cudaMalloc(self, size):
        return self._alloc("cudaMalloc", self.device, size)

    def cudaFree(self, pointer):
        return self._free("cudaFree", self.device, pointer)

    def cudaMallocHost(self, size):
        return self._alloc("cudaMallocHost", self.pinned, size)

    def cudaFreeHost(self, pointer):
        return self._free("cudaFreeHost", self.pinned, pointer)

    def _create(self, name: str, table: set) -> tuple:
        error = self._enter(name)
        if error is not None:
            return error, None
        handle = _Handle(next(self._handles))
        table.add(int(handle))
        return cudaError_t.cudaSuccess, handle

    def _destroy(self, name: str, table: set, handle) -> tuple:
        error = self._enter(name)
        if error is not None:
            return (error,)
        if not isinstance(handle, _Handle) or int(handle) not in table:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        table.discard(int(handle))
        return (cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self):
        return self._create("cudaStreamCreate", self.streams)

    def cudaStreamDestroy(self, stream):
        return self._destroy("cudaStreamDestroy", self.streams, stream)

    def cudaEventCreate(self):
        return self._create("cudaEventCreate", self.events)

    def cudaEventDestroy(self, event):
        return self._destroy("cudaEventDestroy", self.events, event)

    def _live(self, handle, table: set) -> bool:
        return isinstance(handle, _Handle) and int(handle) in table

    def cudaEventRecord(self, event, stream):
        error = self._enter("cudaEventRecord")
        if error is not None:
            return (error,)
        ok = self._live(event, self.events) and self._live(stream, self.streams)
        return (cudaError_t.cudaSuccess if ok else cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaEventElapsedTime(self, start, end):
        error = self._enter("cudaEventElapsedTime")
        if error is not None:
            return error, None
        ok = self._live(start, self.events) and self._live(end, self.events)
        return (cudaError_t.cudaSuccess, 0.25) if ok else \
            (cudaError_t.cudaErrorInvalidResourceHandle, None)

    def cudaStreamSynchronize(self, stream):
        error = self._enter("cudaStreamSynchronize")
        if error is not None:
            return (error,)
        ok = self._live(stream, self.streams)
        return (cudaError_t.cudaSuccess if ok else cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        error = self._enter("cudaMemcpyAsync")
        if error is not None:
            return (error,)
        if not isinstance(kind, cudaMemcpyKind) or not self._live(stream, self.streams):
            return (cudaError_t.cudaErrorInvalidValue,)
        device, host = {cudaMemcpyKind.cudaMemcpyHostToDevice: (dst, src),
                        cudaMemcpyKind.cudaMemcpyDeviceToHost: (src, dst)}.get(kind, (None, None))
        if device is None or not self._inside(self.device, int(device), count):
            return (cudaError_t.cudaErrorInvalidValue,)
        if not self._inside(self.pinned, int(host), count):
            self.unpinned_copies += 1
        ctypes.memmove(int(dst), int(src), count)
        return (cudaError_t.cudaSuccess,)

    def module(self) -> types.ModuleType:
        runtime = types.ModuleType("cuda.bindings.runtime")
        runtime.cudaError_t, runtime.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
        for name in dir(self):
            if name.startswith("cuda"):
                setattr(runtime, name, getattr(self, name))
        return runtime

    def install(self, monkeypatch=None) -> types.ModuleType:
        """Make ``import cuda.bindings.runtime`` give this runtime (through ``monkeypatch``
        when given, so a test undoes it)."""
        runtime = self.module()
        package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        package.bindings, bindings.runtime = bindings, runtime
        modules = {"cuda": package, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime}
        for name, module in modules.items():
            if monkeypatch is not None:
                monkeypatch.setitem(sys.modules, name, module)
            else:
                sys.modules[name] = module
        return runtime
