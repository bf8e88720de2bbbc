"""Fold per-channel affine ops that follow a Conv (Add/Sub/Mul/Div by a constant) into it.

BasicSR's RCAN ends with ``conv_last(x) / img_range + mean`` and a range adapter may multiply the
output: folded into the conv's weights and bias they cost nothing, and the conv becomes the end
of a linear tail that :mod:`rcan_deploy.passes.fuse_upsampler` can fuse. Only ops after a conv are
folded (exact at the border, since nothing is padded after the conv).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import constant_behind, export_rewritten, sole_consumer

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray | None:
    """``values`` as a (channels,) float64 vector when it broadcasts per channel over NCHW."""
    if values.size == 1:
        return np.full(channels, float(values.reshape(-1)[0]))
    shape = values.shape
    if values.size == channels and shape[-2:] == (1, 1) and len(shape) in (3, 4):
        if len(shape) == 3 or shape[0] == 1:
            return values.reshape(-1).astype(np.float64)
    return None


def _fold_one(graph: gs.Graph, conv: gs.Node) -> bool:
    """Fold the affine op consuming ``conv``'s output into ``conv``; whether it did."""
    y = conv.outputs[0]
    op = sole_consumer(y, graph)
    weight = constant_behind(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if op is None or op.op not in AFFINE_OPS or weight is None or weight.values.ndim != 4:
        return False
    other_index = 1 if op.inputs[0] is y else 0
    constant = constant_behind(op.inputs[other_index])
    channels = weight.values.shape[0]
    vector = _per_channel(constant.values, channels) if constant is not None else None
    if vector is None or (op.op == "Div" and (other_index == 0 or np.any(vector == 0))):
        return False
    has_bias = len(conv.inputs) > 2 and constant_behind(conv.inputs[2]) is not None
    if len(conv.inputs) > 2 and not has_bias:
        return False
    w = weight.values.astype(np.float64)
    b = constant_behind(conv.inputs[2]).values.astype(np.float64) if has_bias else np.zeros(channels)
    if op.op == "Add":
        b = b + vector
    elif op.op == "Sub":  # conv - c, or c - conv
        w, b = (w, b - vector) if other_index == 1 else (-w, vector - b)
    else:
        factor = vector if op.op == "Mul" else 1.0 / vector
        w, b = w * factor[:, None, None, None], b * factor
    dtype = weight.values.dtype
    conv.inputs = [conv.inputs[0], gs.Constant(f"{weight.name}_affine", w.astype(dtype)),
                   gs.Constant(f"{conv.name or weight.name}_affine_bias", b.astype(dtype))]
    out = op.outputs[0]
    op.outputs.clear()
    conv.outputs = [out]
    return True


def fold_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold every constant per-channel Add/Sub/Mul/Div after a Conv into that Conv (repeatedly,
    so ``conv / 255 + mean`` folds both); return (model, ops folded). The input is not modified."""
    graph = gs.import_onnx(model)
    count = 0
    for node in list(graph.nodes):
        if node.op != "Conv" or not node.outputs:
            continue
        while _fold_one(graph, node):
            count += 1
    return export_rewritten(graph, model, count)
