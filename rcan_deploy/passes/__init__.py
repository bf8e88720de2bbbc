"""Graph passes over ONNX models: pixel-shuffle forms, MeanShift folding, op/rank checks."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def constant_behind(tensor: gs.Tensor | None) -> gs.Constant | None:
    """The constant behind ``tensor``: itself, the value of a Constant node, or the input of an
    Identity (torch's export routes weights equal to an earlier one, as sub_mean/add_mean are,
    through an Identity)."""
    if isinstance(tensor, gs.Constant):
        return tensor
    producer = tensor.inputs[0] if tensor is not None and tensor.inputs else None
    if producer is not None and producer.op == "Constant":
        value = producer.attrs.get("value")
        return value if isinstance(value, gs.Constant) else None
    if producer is not None and producer.op == "Identity":
        return producer.inputs[0] if isinstance(producer.inputs[0], gs.Constant) else None
    return None


def sole_consumer(tensor: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    """The one node reading ``tensor``, else None (also when it is a graph output)."""
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def export_rewritten(graph: gs.Graph, original: onnx.ModelProto,
                     count: int) -> tuple[onnx.ModelProto, int]:
    """(model, count) after a pass: ``graph`` cleaned and exported with the original's opsets and
    IR version, or an untouched copy of ``original`` when the pass changed nothing."""
    if count == 0:
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(original)
        return unchanged, 0
    graph.cleanup().toposort()
    rewritten = gs.export_onnx(graph, opset_imports=list(original.opset_import))
    rewritten.ir_version = original.ir_version
    return rewritten, count
