"""Graph passes over ONNX models: pixel-shuffle forms, MeanShift folding, op/rank checks."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


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
