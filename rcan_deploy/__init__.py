"""rcan-deploy: RCAN export, graph passes and INT8 quantization for edge deployment.

The CLI commands are plain functions here: ``export``, ``optimize``, ``rewrite``, ``check``,
``info``, ``quantize``, ``upscale`` (``run``), ``fetch`` (``data fetch``), ``train``, ``bench``,
``gate`` and ``demo``; TensorRT ``build``/``inspect`` live in :mod:`rcan_deploy.trt`. They are
imported on first use, so that ``import rcan_deploy`` (and the CLI's start-up) loads no torch.
"""

import importlib

__version__ = "0.1.0"
_HOMES = {"check": "api", "export": "api", "fetch": "api", "info": "api", "optimize": "api",
          "quantize": "api", "rewrite": "api", "train": "api", "upscale": "api",
          "bench": "benchmark", "gate": "benchmark", "demo": "demo_pipeline"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
