"""Per-layer precision of a QDQ graph: the residual stream in float, and per conv one of

- ``int8``: the conv reads its input and weight through Q/DQ (8-bit activations);
- ``int8x2``: two INT8 convs on a two-step quantization of the input, ``x1 = DQ(Q(x, s))`` and
  ``x2 = DQ(Q(x - x1, s / 254))``, summed: the input keeps ~15 bits, every MAC stays INT8, the
  conv's MACs double;
- ``float``: the conv reads float input and weights.

Why the stream: nvidia-modelopt places one Q/DQ on a tensor that feeds a conv *and* residual
Adds, so the residual stream itself (RCAN's long skip included) is carried at 8 bits. On smooth
or dark photographs, whose FP32 error is tiny, that alone costs dB; :func:`float_stream` gives
the Adds the float tensor and keeps the Q/DQ for the conv.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..costs import layer_costs
from ..errors import UserError
from .graph import float_layers

PRECISIONS = ("int8", "int8x2", "float")
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SPLIT_FACTOR = 254  # the second step's scale: the first step's rounding error spans one step


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, opset_imports=list(like.opset_import))
    model.ir_version = like.ir_version
    return model


def _activation_qdq(tensor: gs.Tensor) -> tuple[gs.Node, gs.Node] | None:
    """(QuantizeLinear, DequantizeLinear) producing ``tensor`` from a float activation."""
    dq = tensor.inputs[0] if tensor.inputs else None
    if dq is None or dq.op != "DequantizeLinear" or isinstance(dq.inputs[0], gs.Constant):
        return None
    q = dq.inputs[0].inputs[0] if dq.inputs[0].inputs else None
    if q is None or q.op != "QuantizeLinear" or isinstance(q.inputs[0], gs.Constant):
        return None
    return q, dq


def float_stream(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Give every consumer of a dequantized activation that is not a quantized op (residual
    Adds, Concat, ...) the float tensor instead; return (model, inputs rewired)."""
    graph = gs.import_onnx(model)
    count = 0
    for node in graph.nodes:
        if node.op in QUANTIZED_OPS or node.op in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for index, tensor in enumerate(node.inputs):
            pair = _activation_qdq(tensor)
            if pair is not None:
                node.inputs[index] = pair[0].inputs[0]
                count += 1
    return (_export(graph, model) if count else model), count


def split_input(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The named convs as ``int8x2`` (see the module docstring)."""
    graph = gs.import_onnx(model)
    wanted = set(names)
    for node in [n for n in graph.nodes if n.name in wanted]:
        pair = _activation_qdq(node.inputs[0])
        if pair is None:
            raise UserError(f"layer {node.name}: its input is not quantized, cannot split it")
        q, dq = pair
        x, scale = q.inputs[0], q.inputs[1]
        if not isinstance(scale, gs.Constant) or scale.values.size != 1:
            raise UserError(f"layer {node.name}: per-tensor activation scale expected")
        base = f"{node.name}/int8x2"
        fine = gs.Constant(f"{base}/scale", np.asarray(scale.values / SPLIT_FACTOR,
                                                       dtype=scale.values.dtype))
        zero = q.inputs[2:3]
        residual = gs.Variable(f"{base}/residual")
        quantized = gs.Variable(f"{base}/residual_q")
        restored = gs.Variable(f"{base}/residual_dq")
        coarse, extra = gs.Variable(f"{base}/coarse"), gs.Variable(f"{base}/fine")
        out = node.outputs[0]
        node.outputs = [coarse]
        graph.nodes += [
            gs.Node("Sub", f"{base}/Sub", inputs=[x, dq.outputs[0]], outputs=[residual]),
            gs.Node("QuantizeLinear", f"{base}/QuantizeLinear", inputs=[residual, fine, *zero],
                    outputs=[quantized]),
            gs.Node("DequantizeLinear", f"{base}/DequantizeLinear",
                    inputs=[quantized, fine, *zero], outputs=[restored]),
            gs.Node(node.op, f"{base}/{node.op}", dict(node.attrs),
                    inputs=[restored, node.inputs[1]], outputs=[extra]),
            gs.Node("Add", f"{base}/Add", inputs=[coarse, extra], outputs=[out]),
        ]
    return _export(graph, model)


def apply_plan(model: onnx.ModelProto, plan: dict[str, str]) -> onnx.ModelProto:
    """The QDQ graph with each named layer at its precision (layers not named stay as they are)."""
    unknown = sorted(set(plan.values()) - set(PRECISIONS))
    if unknown:
        raise UserError(f"unknown layer precision(s) {', '.join(unknown)}: expected one of "
                        f"{', '.join(PRECISIONS)}")
    floats = [name for name, precision in plan.items() if precision == "float"]
    splits = [name for name, precision in plan.items() if precision == "int8x2"]
    if floats:
        model = float_layers(model, floats)
    return split_input(model, splits) if splits else model


def int8_macs(model: onnx.ModelProto) -> dict:
    """Conv MACs the fixed-shape graph executes, in total and in INT8 (input and weight both
    through DequantizeLinear), and the INT8 share."""
    graph = gs.import_onnx(model)
    int8 = set()
    for node in graph.nodes:
        if node.op in QUANTIZED_OPS and len(node.inputs) > 1:
            weight = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
            activation = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
            if (weight is not None and weight.op == "DequantizeLinear" and activation is not None
                    and activation.op == "DequantizeLinear"):
                int8.add(node.name)
    layers = layer_costs(model)
    total = sum(layer.macs for layer in layers)
    quantized = sum(layer.macs for layer in layers if layer.name in int8)
    return {"total": total, "int8": quantized, "int8_share": quantized / total if total else 0.0,
            "layers": {layer.name: layer.macs for layer in layers}}


def layer_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Conv MACs per layer name of a fixed-shape graph."""
    return {layer.name: layer.macs for layer in layer_costs(model)}


def small_layers(macs: dict[str, int], share: float, together: float) -> list[str]:
    """The smallest layers, each under ``share`` of the total MACs and all of them together at
    most ``together`` of it (cheap to keep precise: as int8x2 they add at most that share)."""
    total, taken, chosen = sum(macs.values()), 0, []
    for name, value in sorted(macs.items(), key=lambda item: item[1]):
        if value >= share * total or taken + value > together * total:
            break
        taken += value
        chosen.append(name)
    return chosen


def describe_plan(plan: dict[str, str]) -> dict[str, int]:
    """How many layers are at each precision."""
    counts = {precision: 0 for precision in PRECISIONS}
    for precision in plan.values():
        counts[precision] += 1
    return counts

