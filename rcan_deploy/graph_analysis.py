"""Graph analysis for SR graphs: receptive field, strides and global pooling of an ONNX graph.

The receptive-field radius ``m`` of a graph (:func:`receptive_field`) is how far, in input
pixels, an output pixel can see; tiling (:mod:`rcan_deploy.upscaling`) derives its overlap
from it.
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


# --- the interface of an SR graph ---------------------------------------------------------

_QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger",
              "MatMulInteger", "QLinearMatMul")
_KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


@dataclass
class SRGraph:
    """An ONNX graph checked to be a single-image SR graph: one float NCHW RGB input (batch 1;
    a symbolic batch is fixed to 1) and a float NCHW RGB first output."""

    model: onnx.ModelProto
    name: str
    input_shape: list
    output_shape: list
    quantized: bool

    @property
    def fixed(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.input_shape)

    def shape_scale(self) -> int | None:
        """Output / input size of a graph with static spatial shapes (None when unknown)."""
        (h, w), (oh, ow) = self.input_shape[2:], self.output_shape[2:]
        if not all(isinstance(d, int) and d > 0 for d in (h, w, oh, ow)):
            return None
        if oh % h or ow % w or oh // h != ow // w:
            raise UserError(f"{self.name}: maps {h}x{w} to {oh}x{ow}, not a whole upscaling "
                            "factor")
        return oh // h

    def check_scale(self, scale: int | None, where: str | object = "--scale") -> int:
        """The upscaling factor: ``scale`` (from ``where``: a sidecar or a flag), which must agree
        with the graph's shapes, else the shapes'."""
        from_shapes = self.shape_scale()
        if scale is not None and from_shapes is not None and scale != from_shapes:
            (h, w), (oh, ow) = self.input_shape[2:], self.output_shape[2:]
            raise UserError(f"{where} says x{scale}, but {self.name} maps {h}x{w} to {oh}x{ow} "
                            f"(x{from_shapes})")
        scale = scale if scale is not None else from_shapes
        if scale is None:
            raise UserError(f"{self.name}: the graph shape is dynamic and no sidecar records the "
                            "scale; pass --scale S")
        if not 2 <= scale <= 16:
            raise UserError(f"{self.name}: x{scale} is not a super-resolution graph (expected "
                            "an upscaling factor 2..16)")
        return scale


def sr_graph(path, model: onnx.ModelProto | None = None) -> SRGraph:
    """Load (unless ``model`` is given) and check an SR graph; one-line UserError naming what
    does not fit (inputs, types, ranks, channels, custom operators)."""
    from .onnx_utils import load_model, tensor_shape

    model = model if model is not None else load_model(path)
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    if not inputs:
        raise UserError(f"{path}: the graph has no input")
    if len(inputs) > 1:
        names = ", ".join(value.name for value in inputs[:4])
        raise UserError(f"{path}: the graph has {len(inputs)} inputs ({names}); expected one "
                        "image input")
    custom = sorted({f"{node.op_type} ({node.domain})" for node in graph.node
                     if node.domain not in _KNOWN_DOMAINS})
    if custom:
        raise UserError(f"{path}: uses custom operator(s) {', '.join(custom[:3])} that ONNX "
                        "Runtime does not know")
    if not graph.output:
        raise UserError(f"{path}: the graph has no output")
    for role, value in (("input", inputs[0]), ("output", graph.output[0])):
        kind = value.type.tensor_type
        dtype = onnx.TensorProto.DataType.Name(kind.elem_type).lower() if kind.elem_type else "?"
        if kind.elem_type != onnx.TensorProto.FLOAT:
            raise UserError(f"{path}: {role} {value.name!r} is {dtype}; expected float32 NCHW RGB")
        shape = tensor_shape(value) if kind.HasField("shape") else []
        if len(shape) != 4:
            raise UserError(f"{path}: {role} {value.name!r} has rank {len(shape)}; expected 4 "
                            "(NCHW)")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise UserError(f"{path}: {role} {value.name!r} has {shape[1]} channels; expected 3 "
                            "(RGB)")
        if isinstance(shape[0], int) and shape[0] > 1:
            raise UserError(f"{path}: {role} {value.name!r} has batch {shape[0]}; expected 1")
    model = _batch_one(model, inputs[0].name)
    quantized = any(node.op_type in _QUANT_OPS for node in model.graph.node)
    return SRGraph(model, str(path), tensor_shape(model.graph.input[_index(model, inputs[0].name)]),
                   tensor_shape(model.graph.output[0]), quantized)


def _index(model: onnx.ModelProto, name: str) -> int:
    return next(i for i, value in enumerate(model.graph.input) if value.name == name)


def _batch_one(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """The model with a symbolic batch dimension of its input and first output fixed to 1."""
    values = (model.graph.input[_index(model, input_name)], model.graph.output[0])
    if all(v.type.tensor_type.shape.dim[0].HasField("dim_value") for v in values):
        return model
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in (fixed.graph.input[_index(fixed, input_name)], fixed.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.Clear()
            dim.dim_value = 1
    return fixed
