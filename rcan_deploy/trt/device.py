"""CUDA runtime helpers on cuda-python: checked calls and the current GPU."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..errors import UserError


def cuda_call(cudart: ModuleType, result: tuple) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result; raise RuntimeError on a CUDA error."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise RuntimeError(f"CUDA error {error.name}: {text.decode()}")
    return values[0] if len(values) == 1 else tuple(values) or None


def current_gpu(cudart: ModuleType) -> dict[str, Any]:
    """Name and compute capability of the current CUDA device; a UserError when none is usable."""
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        reason = "no CUDA device" if error == cudart.cudaError_t.cudaSuccess else error.name
        raise UserError(f"no usable NVIDIA GPU ({reason}): TensorRT needs one; in Docker pass "
                        "--gpus all (see docker/README.md)")
    index = cuda_call(cudart, cudart.cudaGetDevice())
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(index))
    name = props.name.split(b"\0")[0].decode() if isinstance(props.name, bytes) else props.name
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}", "index": index}
