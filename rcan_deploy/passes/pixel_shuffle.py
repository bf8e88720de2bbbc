"""Rewrite pixel-shuffle sites (DepthToSpace, or a traced 6-D Reshape/Transpose/Reshape) into
forms edge compilers accept: a 6-D reshape, reshapes of rank <= 5, or a one-hot ConvTranspose."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UserError
from . import export_rewritten

FORMS = ("reshape", "reshape5d", "convtranspose")
PIXEL_SHUFFLE_CHOICES = ("keep", *FORMS)  # "keep": leave the graph's own form

# Transpose perm applied to the 6-D view (N, C, r, r, H, W) for CRD or (N, r, r, C, H, W) for DCR.
_PERMS = {"CRD": (0, 1, 4, 2, 5, 3), "DCR": (0, 3, 4, 1, 5, 2)}

# Dims of X for shape tensors: (axis of X, factor), resolved to ints when X's dim is static.
_N, _H, _W = (0, 1), (2, 1), (3, 1)


@dataclass
class ShuffleSite:
    x: gs.Tensor  # input (N, C*r*r, H, W)
    y: gs.Tensor  # output (N, C, H*r, W*r); the rewrite keeps this tensor and its name
    r: int | None  # None when it cannot be determined
    c: int | None
    mode: str  # "CRD" or "DCR"
    nodes: list[gs.Node]  # the nodes the rewrite replaces

    @property
    def traced(self) -> bool:
        """Whether the site already is the 6-D Reshape/Transpose/Reshape form."""
        return self.nodes[0].op == "Reshape"


class NodeBuilder:
    """Appends nodes and constants to ``graph`` under unique names derived from ``base``."""

    def __init__(self, graph: gs.Graph, base: str):
        self.graph = graph
        self.base = base
        self.used = {node.name for node in graph.nodes} | set(graph.tensors())

    def fresh(self, label: str) -> str:
        name, k = f"{self.base}/{label}", 1
        while name in self.used:
            name, k = f"{self.base}/{label}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, label: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh(label), values)

    def op(self, op_type: str, inputs: list, attrs: dict | None = None, output=None) -> gs.Tensor:
        name = self.fresh(op_type)
        out = output if output is not None else gs.Variable(self.fresh(f"{op_type}_output"))
        self.graph.nodes.append(gs.Node(op_type, name, attrs or {}, inputs=inputs, outputs=[out]))
        return out


def _static_dim(tensor: gs.Tensor, axis: int) -> int | None:
    dim = tensor.shape[axis] if tensor.shape is not None and len(tensor.shape) > axis else None
    return int(dim) if isinstance(dim, (int, np.integer)) and dim > 0 else None


def _reshape_dims(node: gs.Node) -> list[int | None] | None:
    """Output dims of a Reshape (None where unknown): its constant shape, else the inferred one."""
    shape_in, out = node.inputs[1], node.outputs[0]
    inferred = None if out.shape is None else [_static_dim(out, a) for a in range(len(out.shape))]
    if not isinstance(shape_in, gs.Constant):
        return inferred
    dims = [int(d) if d > 0 else None for d in shape_in.values.tolist()]
    if inferred is not None and len(inferred) == len(dims):
        dims = [d if d is not None else i for d, i in zip(dims, inferred)]
    return dims


def _sole_consumer(tensor: gs.Tensor, graph: gs.Graph, op_type: str) -> gs.Node | None:
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    node = tensor.outputs[0]
    return node if node.op == op_type and node.inputs[0] is tensor else None


def _traced_site(split: gs.Node, graph: gs.Graph) -> ShuffleSite | None:
    """Site for Reshape(4-D -> 6-D) -> Transpose -> Reshape(-> 4-D), else None."""
    x = split.inputs[0]
    dims6 = _reshape_dims(split)
    transpose = _sole_consumer(split.outputs[0], graph, "Transpose")
    if x.shape is not None and len(x.shape) != 4:
        return None
    if dims6 is None or len(dims6) != 6 or transpose is None:
        return None
    perm = tuple(transpose.attrs.get("perm", ()))
    mode = next((m for m, p in _PERMS.items() if p == perm), None)
    merge = _sole_consumer(transpose.outputs[0], graph, "Reshape")
    dims4 = _reshape_dims(merge) if merge is not None else None
    if mode is None or dims4 is None or len(dims4) != 4:
        return None
    c, r_a, r_b = dims6[1:4] if mode == "CRD" else (dims6[3], dims6[1], dims6[2])
    if dims4[1] not in (None, c):
        return None
    r = r_a if r_a == r_b else None
    return ShuffleSite(x, merge.outputs[0], r, c, mode, [split, transpose, merge])


def find_sites(graph: gs.Graph) -> list[ShuffleSite]:
    """All pixel-shuffle sites (DepthToSpace, traced 6-D reshape); those with unknown block size or channels are skipped, warning."""
    sites = []
    for node in graph.nodes:
        if node.op == "DepthToSpace":
            x, r, mode = node.inputs[0], node.attrs["blocksize"], node.attrs.get("mode", "DCR")
            channels = _static_dim(x, 1)
            c = channels // (r * r) if channels is not None else None
            site = ShuffleSite(x, node.outputs[0], r, c, mode, [node])
        elif node.op == "Reshape":
            site = _traced_site(node, graph)
        else:
            continue
        if site is None:
            continue
        if site.r is None or site.c is None:
            warnings.warn(
                f"pixel shuffle at '{node.name}': block size or channels unknown, left unchanged"
            )
            continue
        sites.append(site)
    return sites


def _shape(b: NodeBuilder, x: gs.Tensor, dims: list) -> gs.Tensor:
    """int64 shape for a Reshape from ints and (axis of x, factor) pairs.

    A constant when the referenced dims of x are static, else computed from Shape(x) at run time.
    """
    resolved = []
    for dim in dims:
        if not isinstance(dim, int) and _static_dim(x, dim[0]) is not None:
            dim = _static_dim(x, dim[0]) * dim[1]
        resolved.append(dim)
    if all(isinstance(d, int) for d in resolved):
        return b.const("shape", np.array(resolved, np.int64))
    shape_of_x = b.op("Shape", [x])
    parts = []
    for dim in resolved:
        if isinstance(dim, int):
            parts.append(b.const("dim", np.array([dim], np.int64)))
            continue
        axis, factor = dim
        index = b.const("axis", np.array([axis], np.int64))
        part = b.op("Gather", [shape_of_x, index], {"axis": 0})
        if factor != 1:
            part = b.op("Mul", [part, b.const("factor", np.array([factor], np.int64))])
        parts.append(part)
    return b.op("Concat", parts, {"axis": 0})


def _crd_channels(b: NodeBuilder, site: ShuffleSite) -> gs.Tensor:
    """X with channels in CRD order: a channel Gather for DCR sites, X itself for CRD."""
    if site.mode == "CRD":
        return site.x
    rr = site.r * site.r
    order = np.arange(site.c * rr, dtype=np.int64).reshape(rr, site.c).T.reshape(-1)
    return b.op("Gather", [site.x, b.const("crd_order", order)], {"axis": 1})


def _emit_reshape(b: NodeBuilder, site: ShuffleSite) -> None:
    x, r, c = site.x, site.r, site.c
    dims6 = [_N, c, r, r, _H, _W] if site.mode == "CRD" else [_N, r, r, c, _H, _W]
    t = b.op("Reshape", [x, _shape(b, x, dims6)])
    t = b.op("Transpose", [t], {"perm": list(_PERMS[site.mode])})
    b.op("Reshape", [t, _shape(b, x, [_N, c, (2, r), (3, r)])], output=site.y)


def _emit_reshape5d(b: NodeBuilder, site: ShuffleSite) -> None:
    x, r, c = site.x, site.r, site.c
    t = b.op("Reshape", [_crd_channels(b, site), _shape(b, x, [_N, c * r, r, _H, _W])])
    t = b.op("Transpose", [t], {"perm": [0, 1, 3, 4, 2]})
    t = b.op("Reshape", [t, _shape(b, x, [_N, c * r, _H, (3, r)])])
    t = b.op("Reshape", [t, _shape(b, x, [_N, c, r, _H, (3, r)])])
    t = b.op("Transpose", [t], {"perm": [0, 1, 3, 2, 4]})
    b.op("Reshape", [t, _shape(b, x, [_N, c, (2, r), (3, r)])], output=site.y)


def _emit_convtranspose(b: NodeBuilder, site: ShuffleSite) -> None:
    r, c = site.r, site.c
    dtype = site.x.dtype if site.x.dtype in (np.float16, np.float64) else np.float32
    one_hot = np.eye(r * r, dtype=dtype).reshape(r * r, 1, r, r)  # [i*r + j, 0, i, j] = 1
    weight = b.const("weight", np.tile(one_hot, (c, 1, 1, 1)))
    attrs = {"group": c, "kernel_shape": [r, r], "strides": [r, r], "pads": [0, 0, 0, 0]}
    b.op("ConvTranspose", [_crd_channels(b, site), weight], attrs, output=site.y)


_EMITTERS = {
    "reshape": _emit_reshape,
    "reshape5d": _emit_reshape5d,
    "convtranspose": _emit_convtranspose,
}


def rewrite_pixel_shuffle(model: onnx.ModelProto, form: str) -> tuple[onnx.ModelProto, int]:
    """Rewrite every pixel-shuffle site into ``form`` (one of FORMS); return (new model, count).

    The input model is not modified. Sites whose block size or channel count cannot be determined
    are left unchanged with a warning. With form "reshape", sites already in that form are left
    alone and not counted.
    """
    if form not in FORMS:
        raise UserError(f"unknown pixel-shuffle form '{form}' (choose from {', '.join(FORMS)})")
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model, data_prop=True))
    if form != "convtranspose" and graph.opset < 5:
        raise UserError(f"pixel-shuffle form '{form}' needs opset >= 5, model has {graph.opset}")
    count = 0
    for site in find_sites(graph):
        if form == "reshape" and site.traced:
            continue
        for node in site.nodes:
            node.outputs.clear()
        _EMITTERS[form](NodeBuilder(graph, site.nodes[0].name or site.y.name), site)
        count += 1
    return export_rewritten(graph, model, count)


def native_pixel_shuffle(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace traced Reshape/Transpose/Reshape pixel shuffles by DepthToSpace (their mode), so
    the graph no longer holds shape constants of one input size; return (model, count)."""
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model, data_prop=True))
    count = 0
    for site in find_sites(graph):
        if not site.traced:
            continue
        for node in site.nodes:
            node.outputs.clear()
        b = NodeBuilder(graph, site.nodes[0].name or site.y.name)
        b.op("DepthToSpace", [site.x], {"blocksize": site.r, "mode": site.mode}, output=site.y)
        count += 1
    return export_rewritten(graph, model, count)
