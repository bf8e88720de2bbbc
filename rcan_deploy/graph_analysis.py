"""Graph analysis for SR graphs: receptive field, strides and global pooling of an ONNX graph.

The receptive-field radius ``m`` of a graph (:func:`receptive_field`) is how far, in input
pixels, an output pixel can see; tiling (:mod:`rcan_deploy.upscale`) derives its overlap from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import onnx
from onnx import numpy_helper

from .errors import UserError

_WINDOW_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")
_GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
               "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare")


@dataclass(frozen=True)
class ReceptiveField:
    """What tiling needs to know about a graph.

    margin: receptive-field radius in input pixels (rounded up); global_pooling: some output
    depends on the whole image; stride: largest downsampling factor inside the graph."""

    margin: int
    global_pooling: bool
    stride: int


def receptive_margin(model: onnx.ModelProto) -> tuple[int, bool]:
    """(receptive-field radius in input pixels, whether the graph has global pooling)."""
    field = receptive_field(model)
    return field.margin, field.global_pooling


def receptive_field(model: onnx.ModelProto) -> ReceptiveField:
    """Walk the graph from its first input, tracking per tensor the input-pixel jump of one
    tensor pixel and the radius reached so far (max over branches).

    Conv/pool windows add their one-sided reach times the jump (plus stride - 1 for the
    sampling phase) and multiply the jump by the stride; DepthToSpace and ConvTranspose divide
    it; a Reshape with static shapes (traced pixel shuffle) takes the jump from its output size.
    Global pools and spatial reductions set ``global_pooling`` and do not add to the radius."""
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    constants.update({node.output[0]: node.attribute[0].t for node in graph.node
                      if node.op_type == "Constant" and node.attribute[0].name == "value"})
    shapes = _static_shapes(model)
    source = next(inp.name for inp in graph.input if inp.name not in constants)
    reach = {source: (Fraction(1), Fraction(0))}  # tensor -> (jump, radius) in input pixels
    global_pooling = False
    max_jump = Fraction(1)
    for node in graph.node:
        spatial = [reach[name] for name in node.input if name in reach]
        if not spatial or node.op_type in ("Shape", "Size"):  # shape arithmetic is not pixels
            continue
        jump = max(j for j, _ in spatial)
        radius = max(r for _, r in spatial)
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in _GLOBAL_POOLS or (op in _REDUCE_OPS and _reduces_space(node, attrs, constants)):
            global_pooling = True
            continue
        if op in _WINDOW_OPS:
            window, stride = _window_reach(attrs, _kernel(node, attrs, shapes))
            radius += (window + stride - 1) * jump
            jump *= stride
        elif op == "ConvTranspose":
            window, stride = _transpose_reach(attrs, _kernel(node, attrs, shapes))
            radius += window * jump
            jump /= stride
        elif op == "DepthToSpace":
            jump /= attrs["blocksize"]
        elif op == "SpaceToDepth":
            radius += (attrs["blocksize"] - 1) * jump
            jump *= attrs["blocksize"]
        elif op == "Reshape":
            jump = _jump_from_shape(shapes.get(node.output[0]), shapes.get(source), jump)
        for name in node.output:
            reach[name] = (jump, radius)
        max_jump = max(max_jump, jump)
    _, radius = reach.get(graph.output[0].name, (Fraction(1), Fraction(0)))
    return ReceptiveField(math.ceil(radius), global_pooling, math.ceil(max_jump))


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> dims (None where unknown) from ONNX shape inference, when it succeeds."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # shape inference is best effort: unknown custom ops, large models
        inferred = model.graph
    shapes = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in info.type.tensor_type.shape.dim]
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    return shapes


def _kernel(node: onnx.NodeProto, attrs: dict, shapes: dict) -> list[int]:
    if "kernel_shape" in attrs:
        return list(attrs["kernel_shape"])
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if not weight or None in weight[2:]:
        raise UserError(f"{node.op_type} node {node.name!r}: cannot tell its kernel size")
    return list(weight[2:])


def _window_reach(attrs: dict, kernel: list[int]) -> tuple[int, int]:
    """(largest one-sided reach in input-tensor pixels, largest stride) of a Conv/pool window."""
    reach, strides = [], []
    for axis, k in enumerate(kernel):
        dilation = attrs.get("dilations", [1] * len(kernel))[axis]
        stride = attrs.get("strides", [1] * len(kernel))[axis]
        extent = (k - 1) * dilation
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if auto_pad in (b"SAME_UPPER", b"SAME_LOWER"):
            total = max(extent + 1 - stride, 0)
            begin = total // 2 if auto_pad == b"SAME_UPPER" else total - total // 2
        else:
            begin = attrs.get("pads", [0] * 2 * len(kernel))[axis]
        reach.append(max(begin, extent - begin))
        strides.append(stride)
    return max(reach), max(strides)


def _transpose_reach(attrs: dict, kernel: list[int]) -> tuple[int, int]:
    """(largest one-sided reach in input-tensor pixels, largest stride) of a ConvTranspose:
    output o reads inputs i with i*s in [o + pad - (k-1)*d, o + pad], measured from o // s."""
    reach, strides = [], []
    for axis, k in enumerate(kernel):
        dilation = attrs.get("dilations", [1] * len(kernel))[axis]
        stride = attrs.get("strides", [1] * len(kernel))[axis]
        begin = attrs.get("pads", [0] * 2 * len(kernel))[axis]
        for o in range(stride):  # the pattern repeats every stride output pixels
            first = -((-(o + begin - (k - 1) * dilation)) // stride)
            last = (o + begin) // stride
            reach.append(max(o // stride - first, last - o // stride, 0))
        strides.append(stride)
    return max(reach), max(strides)


def _reduces_space(node: onnx.NodeProto, attrs: dict, constants: dict) -> bool:
    """Whether a Reduce* node reduces over H or W (axes 2, 3 of NCHW; no axes means all)."""
    if "axes" in attrs:
        axes = attrs["axes"]
    elif len(node.input) > 1 and node.input[1]:
        if node.input[1] not in constants:
            return True  # axes computed at run time: assume the worst
        axes = numpy_helper.to_array(constants[node.input[1]]).tolist()
    else:
        return not attrs.get("noop_with_empty_axes", 0)
    return any(axis % 4 in (2, 3) for axis in axes)


def _jump_from_shape(out_dims, in_dims, jump: Fraction) -> Fraction:
    """Input pixels per pixel of a 4-D output with static H, W; ``jump`` when unknown."""
    if not out_dims or not in_dims or len(out_dims) != 4 or None in (*out_dims[2:], *in_dims[2:]):
        return jump
    return max(Fraction(in_dims[2], out_dims[2]), Fraction(in_dims[3], out_dims[3]))
