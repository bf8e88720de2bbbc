"""rcan-deploy: RCAN export, graph passes and INT8 quantization for edge deployment.

The CLI commands are plain functions here: ``export``, ``rewrite``, ``check``, ``info``.
"""

from .api import check, export, info, rewrite

__version__ = "0.1.0"
__all__ = ["check", "export", "info", "rewrite"]
