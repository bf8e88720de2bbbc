"""CUDA runtime helpers on cuda-python: checked calls, the current GPU and what keeps one from
being used."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..errors import UserError


class CudaError(UserError):
    """A CUDA runtime call failed: one line naming the call, the error and CUDA's text."""


def error_text(cudart: ModuleType, error: Any) -> str:
    """``cudaErrorX: CUDA's description`` of a cuda-python error value."""
    name = getattr(error, "name", str(error))
    try:
        _, text = cudart.cudaGetErrorString(error)
        text = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # the runtime itself is unusable (e.g. no driver library)
        return name
    return f"{name}: {text}"


def cuda_call(cudart: ModuleType, result: tuple, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python ``(error, *values)`` result; CudaError naming ``what`` on an error."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {error_text(cudart, error)}")
    return values[0] if len(values) == 1 else tuple(values) or None


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def gpu_problem(cudart: ModuleType) -> str | None:
    """Why no GPU can be used through ``cudart`` (None when one can): no device, a driver older
    than cuda-python's runtime (with both versions), or another CUDA error."""
    error, count = cudart.cudaGetDeviceCount()
    success = cudart.cudaError_t.cudaSuccess
    if error == success:
        return None if count > 0 else ("no CUDA device is visible: TensorRT needs an NVIDIA GPU "
                                       "(in Docker pass --gpus all, see docker/README.md)")
    name = getattr(error, "name", str(error))
    if name == "cudaErrorInsufficientDriver":
        driver_status, driver = cudart.cudaDriverGetVersion()
        runtime_status, runtime = cudart.cudaRuntimeGetVersion()
        versions = (f" (driver CUDA {_cuda_version(driver)}, cuda-python runtime CUDA "
                    f"{_cuda_version(runtime)})") if driver_status == runtime_status == success \
            else ""
        return (f"the NVIDIA driver is older than cuda-python's CUDA runtime{versions}: update "
                "the driver or install the cuda-python release of the driver's CUDA major version")
    if name == "cudaErrorNoDevice":
        return ("no CUDA device is visible (cudaErrorNoDevice): TensorRT needs an NVIDIA GPU (in "
                "Docker pass --gpus all, see docker/README.md)")
    return f"no usable NVIDIA GPU ({error_text(cudart, error)})"


def current_gpu(cudart: ModuleType) -> dict[str, Any]:
    """Name and compute capability of the current CUDA device; a UserError when none is usable."""
    problem = gpu_problem(cudart)
    if problem:
        raise UserError(problem)
    index = cuda_call(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.split(b"\0")[0].decode() if isinstance(props.name, bytes) else props.name
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}", "index": index}
