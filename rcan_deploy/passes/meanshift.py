"""Fold RCAN's MeanShift layers (1x1 convs with Cin == Cout) into the neighbouring convs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import constant_behind, export_rewritten, sole_consumer

# The forward fold inverts the 1x1 weight; it is skipped above this condition number.
_MAX_CONDITION = 1e6


def _conv_params(node: gs.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(weight, bias or None) of a group-1 2-D Conv with constant parameters, else None."""
    if node.op != "Conv" or node.attrs.get("group", 1) != 1:
        return None
    weight = constant_behind(node.inputs[1])
    bias = constant_behind(node.inputs[2]) if len(node.inputs) > 2 else None
    if weight is None or weight.values.ndim != 4 or (len(node.inputs) > 2 and bias is None):
        return None
    return weight.values, bias.values if bias is not None else None


def _meanshift_params(node: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(W (C, C), b (C,)) in float64 if ``node`` is a 1x1 stride-1 unpadded Conv, Cin == Cout."""
    params = _conv_params(node)
    if params is None:
        return None
    weight, bias = params
    cout, cin, kh, kw = weight.shape
    unit = list(node.attrs.get("strides", [])) + list(node.attrs.get("dilations", []))
    if (cout, kh, kw) != (cin, 1, 1) or any(v != 1 for v in unit):
        return None
    if any(node.attrs.get("pads", [])):
        return None
    bias = np.zeros(cout) if bias is None else bias
    return weight[:, :, 0, 0].astype(np.float64), bias.astype(np.float64)


def _fold_backward(graph: gs.Graph, shift: gs.Node, w_s: np.ndarray, b_s: np.ndarray) -> bool:
    """Merge ``shift`` into the Conv P producing its input: W' = W_s W_P, b' = W_s b_P + b_s."""
    x = shift.inputs[0]
    producer = x.inputs[0] if x.inputs else None
    params = _conv_params(producer) if producer is not None else None
    if params is None or sole_consumer(x, graph) is not shift:
        return False
    weight_p, bias_p = params
    bias_p = np.zeros(weight_p.shape[0]) if bias_p is None else bias_p
    weight = np.einsum("oc,cikl->oikl", w_s, weight_p.astype(np.float64))
    bias = w_s @ bias_p.astype(np.float64) + b_s
    name = producer.inputs[1].name
    producer.inputs = [
        producer.inputs[0],
        gs.Constant(f"{name}_meanshift_folded", weight.astype(weight_p.dtype)),
        gs.Constant(f"{name}_meanshift_folded_bias", bias.astype(weight_p.dtype)),
    ]
    shifted = shift.outputs[0]
    shift.outputs.clear()
    producer.outputs = [shifted]
    return True


def _fold_forward(graph: gs.Graph, shift: gs.Node, w_s: np.ndarray, b_s: np.ndarray) -> bool:
    """Move ``shift`` into the Conv Q it feeds, using
    Q(pad0(W_s x + b_s)) = (W_Q W_s)(pad0(x + W_s^-1 b_s)) + b_Q.

    The offset stays an Add before Q, so Q's zero padding still sees zeros at the image border.
    """
    shifted = shift.outputs[0]
    consumer = sole_consumer(shifted, graph)
    params = _conv_params(consumer) if consumer is not None else None
    if params is None or consumer.inputs[0] is not shifted or np.linalg.cond(w_s) >= _MAX_CONDITION:
        return False
    weight_q = params[0]
    weight = np.einsum("ockl,ci->oikl", weight_q.astype(np.float64), w_s)
    consumer.inputs[1] = gs.Constant(
        f"{consumer.inputs[1].name}_meanshift_folded", weight.astype(weight_q.dtype)
    )
    dtype = constant_behind(shift.inputs[1]).dtype
    offset = np.linalg.solve(w_s, b_s).reshape(1, -1, 1, 1).astype(dtype)
    offset_input = gs.Constant(f"{shift.inputs[1].name}_offset", offset)
    shift.outputs.clear()
    add_name = f"{shift.name or shifted.name}/as_add"
    add = gs.Node("Add", add_name, inputs=[shift.inputs[0], offset_input], outputs=[shifted])
    graph.nodes.append(add)
    return True


def fold_meanshift(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold 1x1 Cin == Cout convs (RCAN MeanShift) into adjacent convs; return (model, removed).

    The backward fold (into the producing Conv) is preferred; otherwise a forward fold into the
    sole consuming Conv, done only when the 1x1 weight is well conditioned (cond < 1e6). 1x1 convs
    with neither neighbour stay. The input model is not modified.
    """
    graph = gs.import_onnx(model)
    count = 0
    for node in list(graph.nodes):
        params = _meanshift_params(node) if node.outputs else None
        if params is None:
            continue
        if _fold_backward(graph, node, *params) or _fold_forward(graph, node, *params):
            count += 1
    return export_rewritten(graph, model, count)
