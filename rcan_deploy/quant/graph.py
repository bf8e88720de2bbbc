"""Graph helpers for PTQ: dynamic-shape copies, fixing shapes back, Q/DQ inspection and undoing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UserError

GLOBAL_POOLING_OPS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


def _set_spatial_dims(model: onnx.ModelProto, dims: list[int | str]) -> onnx.ModelProto:
    """Copy with the input's H, W (and the output's) set to ints or symbolic names."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value, names in ((out.graph.input[0], dims), (out.graph.output[0], None)):
        shape = value.type.tensor_type.shape.dim
        for axis in (2, 3):
            shape[axis].Clear()
            if names is None:
                shape[axis].dim_param = ("out_height", "out_width")[axis - 2]
            elif isinstance(names[axis - 2], str):
                shape[axis].dim_param = names[axis - 2]
            else:
                shape[axis].dim_value = int(names[axis - 2])
    del out.graph.value_info[:]
    return out


def dynamic_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fixed-shape graph with symbolic input height and width (same nodes and names)."""
    return _set_spatial_dims(model, ["height", "width"])


def fix_spatial_shape(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """Set the input to H x W again and re-infer every shape (no constant folding, so Q/DQ
    weights stay as they are)."""
    fixed = _set_spatial_dims(model, [height, width])
    fixed.graph.output[0].type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(fixed, strict_mode=True)


def has_global_pooling(model: onnx.ModelProto) -> bool:
    """Whether some node reduces over the whole image (channel attention, CBAM)."""
    return any(node.op_type in GLOBAL_POOLING_OPS for node in model.graph.node)


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Per-tensor activation scales of a QDQ graph: {quantized tensor: scale}."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts:
            scale = consts.get(node.input[1])
            if scale is not None and scale.size == 1:
                scales[node.input[0]] = float(scale.reshape(-1)[0])
    return scales


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of Conv/ConvTranspose/Gemm/MatMul nodes whose weight comes through a DequantizeLinear."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            weight = producers.get(node.input[1])
            if weight is not None and weight.op_type == "DequantizeLinear":
                names.append(node.name)
    return names


def weight_scale_ranges(model: onnx.ModelProto) -> dict[str, list[float]]:
    """[min, max] of the per-channel weight scales of every quantized layer."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    ranges = {}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if len(node.input) > 1 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] in consts:
            scale = consts[dq.input[1]]
            ranges[node.name] = [float(scale.min()), float(scale.max())]
    return ranges


def _dequantize(dq: gs.Node) -> np.ndarray:
    """Float values of a DequantizeLinear of constant integers: (x - zero_point) * scale."""
    values = dq.inputs[0].values.astype(np.float32)
    per_channel = [1] * values.ndim
    per_channel[dq.attrs.get("axis", 1)] = -1

    def broadcast(tensor: gs.Constant) -> np.ndarray:
        array = tensor.values.astype(np.float32)
        return array.reshape(per_channel) if array.size > 1 else array

    zero = broadcast(dq.inputs[2]) if len(dq.inputs) > 2 else 0.0
    return (values - zero) * broadcast(dq.inputs[1])


def float_layers(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of a QDQ graph where the named layers read float inputs (their Q/DQ bypassed):
    how a layer "kept in higher precision" computes, used to measure sensitivity."""
    graph = gs.import_onnx(model)
    wanted = set(names)
    unknown = wanted - {node.name for node in graph.nodes}
    if unknown:
        raise UserError(f"no such layer(s) in the graph: {', '.join(sorted(unknown))}")
    for node in graph.nodes:
        if node.name not in wanted:
            continue
        for index, tensor in enumerate(node.inputs):
            dq = tensor.inputs[0] if tensor.inputs else None
            if dq is None or dq.op != "DequantizeLinear":
                continue
            q = dq.inputs[0].inputs[0] if dq.inputs[0].inputs else None
            if q is not None and q.op == "QuantizeLinear":
                node.inputs[index] = q.inputs[0]
            elif isinstance(dq.inputs[0], gs.Constant):  # int8 weights stored as constants
                node.inputs[index] = gs.Constant(f"{tensor.name}_float", _dequantize(dq))
    graph.cleanup().toposort()
    return gs.export_onnx(graph, opset_imports=list(model.opset_import))
