"""TensorRT engines: build (``build.py``), inspect (``inspect.py``), FP16 graph copies
(``fp16.py``).

TensorRT and cuda-python are imported on first use through :func:`require_tensorrt` and
:func:`require_cudart`; importing this package (or rcan_deploy) never loads them. Supports
TensorRT 10.x and 11.x (11.x networks are always strongly typed and have no FP16/INT8 builder
flags: INT8 comes from the graph's Q/DQ nodes and FP16 from an FP16 copy of the graph).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

INSTALL_HINT = ("TensorRT engines need the 'tensorrt' and 'cuda-python' packages and an NVIDIA "
                "GPU: use the GPU image (docker build -f docker/Dockerfile.gpu -t "
                "rcan-deploy:gpu . then docker run --gpus all -v $PWD:/work rcan-deploy:gpu ..., "
                "see docker/README.md) or install NVIDIA's TensorRT wheels (pip install tensorrt "
                "cuda-python)")


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a one-line UserError saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError):  # OSError: the bindings are there but libnvinfer is not
        raise UserError(f"TensorRT is not installed: {INSTALL_HINT}") from None


def require_cudart() -> ModuleType:
    """cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before
    cuda-python 12.6), or a one-line UserError saying how to get them."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError(f"cuda-python is not installed: {INSTALL_HINT}")


__all__ = ["INSTALL_HINT", "require_cudart", "require_tensorrt"]
