"""FP16 copy of an ONNX graph for strongly typed TensorRT builds (TensorRT 11 has no FP16 flag).

nvidia-modelopt's AutoCast (``modelopt.onnx.autocast.convert_to_f16``) converts every float
tensor and initializer to float16 and keeps the graph inputs and outputs float32 (Casts at the
edges), so runners feed and read the same arrays as for the fp32 graph. Q/DQ nodes are kept, so
the copy of a QDQ graph runs INT8 where quantized and FP16 elsewhere. Plain ONNX: runs on ONNX
Runtime CPU too.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import onnx

from ..errors import UserError

# modelopt logs each conversion step at INFO, and onnxscript's opset converter warns about its
# fallback; neither is actionable here.
_CHATTY_LOGGERS = ("modelopt.onnx", "modelopt.onnx.autocast", "onnxscript")


@contextmanager
def _quiet_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def fp16_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of ``model`` with float32 inputs/outputs (opset raised to >= 19); ``model``
    itself is left unchanged."""
    try:
        from modelopt.onnx.autocast import convert_to_f16
    except ImportError:
        raise UserError("FP16 graphs need nvidia-modelopt: pip install -c constraints.txt -e . "
                        "(see README)") from None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with _quiet_loggers():
        return convert_to_f16(copy, low_precision_type="fp16", keep_io_types=True)
