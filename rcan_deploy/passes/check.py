"""Graph statistics and deployment constraint checks (tensor rank limits, forbidden ops)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx
from onnx import numpy_helper

from ..errors import UserError

# Node names listed per forbidden op before the message is cut short.
_MAX_NAMES = 5


def _tensor_ranks(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """Rank and origin ("graph input", "initializer", "produced by Reshape 'r'") per tensor.

    Ranks come from shape inference with data propagation; a Reshape output whose rank is still
    unknown takes the length of its constant shape input. Tensors of unknown rank are left out.
    """
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    ranks: dict[str, tuple[int, str]] = {}
    for info in graph.input:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = (len(info.type.tensor_type.shape.dim), "graph input")
    constants = {init.name: init for init in graph.initializer}
    for init in graph.initializer:
        ranks[init.name] = (len(init.dims), "initializer")
    inferred = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in list(graph.value_info) + list(graph.output)
        if info.type.tensor_type.HasField("shape")
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
        origin = f"produced by {node.op_type} '{node.name}'"
        for name in node.output:
            if name in inferred:
                ranks[name] = (inferred[name], origin)
            elif node.op_type == "Reshape" and node.input[1] in constants:
                ranks[name] = (numpy_helper.to_array(constants[node.input[1]]).size, origin)
    return ranks


def graph_report(model: onnx.ModelProto) -> dict:
    """Op counts (sorted by op name), node count, and the largest tensor rank with its tensor."""
    ranks = _tensor_ranks(model)
    widest = max(ranks, key=lambda name: ranks[name][0], default=None)
    return {
        "ops": dict(sorted(Counter(node.op_type for node in model.graph.node).items())),
        "max_rank": ranks[widest][0] if widest is not None else 0,
        "max_rank_tensor": widest,
        "nodes": len(model.graph.node),
    }


def check_graph(
    model: onnx.ModelProto, max_rank: int | None = None, forbid_ops: Iterable[str] = ()
) -> list[str]:
    """Violations of a rank limit and of forbidden op types (ONNX spelling); empty means pass.

    Raises UserError for a forbidden op name that is not an ONNX op.
    """
    forbid_ops = list(forbid_ops)
    for op in forbid_ops:
        if not onnx.defs.has(op):
            raise UserError(f"'{op}' is not an ONNX op (op names are case-sensitive: DepthToSpace)")
    violations = []
    if max_rank is not None:
        for name, (rank, origin) in _tensor_ranks(model).items():
            if rank > max_rank:
                violations.append(f"tensor '{name}' has rank {rank} > {max_rank} ({origin})")
    for op in dict.fromkeys(forbid_ops):
        names = [node.name for node in model.graph.node if node.op_type == op]
        if names:
            shown = ", ".join(names[:_MAX_NAMES]) + (", ..." if len(names) > _MAX_NAMES else "")
            violations.append(f"forbidden op {op} x{len(names)} (nodes: {shown})")
    return violations
