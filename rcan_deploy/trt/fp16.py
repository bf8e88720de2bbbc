"""FP16 copy of an ONNX graph for strongly typed TensorRT builds (TensorRT 11 has no FP16 flag).

nvidia-modelopt's AutoCast mixed-precision conversion
(``modelopt.onnx.autocast.convert_to_mixed_precision``) runs the graph on reference inputs and
keeps in FP32 every node whose inputs or outputs reach beyond ``data_max`` (modelopt's default,
512) or whose initializers do not fit FP16; everything else becomes FP16. Graph inputs and
outputs stay float32 (Casts at the edges), so runners feed and read the same arrays as for the
fp32 graph. Q/DQ nodes are kept, so the copy of a QDQ graph runs INT8 where quantized.

The reference run uses natural-image crops at the graph's input range through a dynamic-shape
copy of the graph (the ranges of a fully convolutional network do not depend on the image size),
so it costs a few crops, not a 1080p frame. Plain ONNX: runs on ONNX Runtime CPU too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import onnx

from ..errors import UserError
from ..onnx_utils import input_shape
from ..quant.graph import dynamic_copy, fix_spatial_shape

DATA_MAX = 512.0  # modelopt AutoCast's default bound on |activation| for an FP16 node
# modelopt logs each conversion step at INFO, polygraphy its reference run, and onnxscript's
# opset converter warns about its fallback; none of it is actionable here.
_CHATTY_LOGGERS = ("modelopt.onnx", "modelopt.onnx.autocast", "onnxscript", "polygraphy")
_NOT_COMPUTE = ("Cast", "Constant", "QuantizeLinear", "DequantizeLinear")


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


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes of a converted graph whose first output is still float32."""
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*typed.graph.value_info, *typed.graph.output)}
    return [node.name for node in model.graph.node if node.op_type not in _NOT_COMPUTE
            and types.get(node.output[0]) == onnx.TensorProto.FLOAT]


def fp16_graph(model: onnx.ModelProto, reference: np.ndarray,
               data_max: float = DATA_MAX) -> onnx.ModelProto:
    """An FP16 copy of ``model`` with float32 inputs/outputs and its input shape; nodes whose
    values on ``reference`` (N, C, h, w inputs at the graph's input range) exceed ``data_max``
    stay FP32. ``model`` itself is left unchanged."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise UserError("FP16 graphs need nvidia-modelopt: pip install -c constraints.txt -e . "
                        "(see README)") from None
    if reference.ndim != 4 or len(reference) == 0:
        raise UserError("the FP16 conversion needs at least one reference input")
    height, width = input_shape(model)[2:]
    name = model.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        path, data = os.path.join(tmp, "graph.onnx"), os.path.join(tmp, "reference")
        onnx.save(dynamic_copy(model), path)
        os.mkdir(data)
        for index, x in enumerate(reference.astype(np.float32)):
            np.savez(os.path.join(data, f"{index:04d}.npz"), **{name: x[None]})
        with _quiet_loggers():
            mixed = convert_to_mixed_precision(path, low_precision_type="fp16", keep_io_types=True,
                                               calibration_data=data, data_max=data_max,
                                               providers=["cpu"])
    return fix_spatial_shape(mixed, height, width)
