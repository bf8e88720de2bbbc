"""rcan-deploy: RCAN export, graph passes and INT8 quantization for edge deployment.

The CLI commands are plain functions here: ``export``, ``optimize``, ``rewrite``, ``check``, ``info``,
``quantize``, ``upscale`` (``run``), ``fetch`` (``data fetch``), ``train``, ``bench``,
``gate`` and ``demo``; TensorRT ``build``/``inspect`` live in :mod:`rcan_deploy.trt`.
"""

from .api import check, export, fetch, info, optimize, quantize, rewrite, train, upscale
from .benchmark import bench, gate
from .demo_pipeline import demo

__version__ = "0.1.0"
__all__ = ["bench", "check", "demo", "export", "fetch", "gate", "info", "optimize", "quantize",
           "rewrite", "train", "upscale"]
