"""Parameters and conv MACs of an ONNX graph at its shape, in the thop convention.

MACs of a Conv are output elements x (Cin / group) x kh x kw; of a ConvTranspose, input elements
x (Cout / group) x kh x kw; bias additions (one per output element of a conv with bias) are
counted separately as ``macs_bias``. ReLU, PixelShuffle, adds and multiplies count zero. The
reference table's "FLOPs(G)" is 2 x MACs / 9e8 (with or without bias, see the table's column).
Weights behind a DequantizeLinear (QDQ graphs) are followed to their initializer.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
import onnx

from .errors import UserError
from .onnx_utils import input_shape, output_shape, simplify

CONV_OPS = ("Conv", "ConvTranspose")
REFERENCE_FLOPS_DIVISOR = 9e8


@dataclass
class LayerCost:
    name: str
    op: str
    input_shape: list[int]
    output_shape: list[int]
    kernel: list[int]
    macs: int
    macs_bias: int
    params: int


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    return shapes


def _weight(name: str, initializers: dict,
            producers: dict) -> tuple[str | None, np.ndarray | None]:
    """(name, array) of the initializer behind ``name``, looking through Q/DQ pairs (QDQ graph
    weights); (None, None) when there is none."""
    while name not in initializers:
        node = producers.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            return None, None
        name = node.input[0]
    return name, initializers[name]


def layer_costs(model: onnx.ModelProto) -> list[LayerCost]:
    """Cost of every Conv/ConvTranspose node, in graph order."""
    shapes = _static_shapes(model)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes hold weights in some exporters
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            initializers[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    producers = {out: node for node in model.graph.node for out in node.output}
    costs = []
    # A layer applied twice (CBAM's shared MLP: same weight and bias initializers) counts once;
    # equal weights with other biases (official MeanShift convs, deduplicated) count each.
    counted: set[tuple] = set()
    for node in model.graph.node:
        if node.op_type not in CONV_OPS:
            continue
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        weight_name, weight = _weight(node.input[1], initializers, producers)
        if x is None or y is None or weight is None:
            raise UserError(f"node {node.name or node.output[0]}: shapes or weights unknown; "
                            "info needs a fixed-shape graph (use --shape HxW)")
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        kernel = list(weight.shape[2:])
        if node.op_type == "Conv":
            macs = int(np.prod(y)) * (x[1] // group) * int(np.prod(kernel))
        else:
            macs = int(np.prod(x)) * (y[1] // group) * int(np.prod(kernel))
        bias_name, bias = None, None
        if len(node.input) > 2 and node.input[2]:
            bias_name, bias = _weight(node.input[2], initializers, producers)
        layer = (weight_name, bias_name)  # the same weights and bias: one layer applied twice
        params = 0 if layer in counted else int(weight.size) + (int(bias.size) if bias is not None
                                                                else 0)
        counted.add(layer)
        costs.append(LayerCost(node.name or node.output[0], node.op_type, x, y, kernel, macs,
                               int(np.prod(y)) if bias is not None else 0, params))
    return costs


def model_info(model: onnx.ModelProto, shape: tuple[int, int] | None = None) -> dict:
    """Totals and per-layer costs; ``shape`` (H, W) fixes a dynamic input first."""
    if shape is not None:
        model = simplify(model, [1, 3, *shape])
    layers = layer_costs(model)
    macs = sum(layer.macs for layer in layers)
    macs_bias = sum(layer.macs_bias for layer in layers)
    return {
        "params": sum(layer.params for layer in layers),
        "macs": macs,
        "macs_bias": macs_bias,
        "gmacs": macs / 1e9,
        "flops_g_reference": 2 * macs / REFERENCE_FLOPS_DIVISOR,
        "flops_g_reference_with_bias": 2 * (macs + macs_bias) / REFERENCE_FLOPS_DIVISOR,
        "input_shape": input_shape(model),
        "output_shape": output_shape(model),
        "layers": [asdict(layer) for layer in layers],
    }


def cost_totals(info: dict) -> dict:
    """The totals of :func:`model_info` that sidecars record (no per-layer list)."""
    return {key: info[key] for key in ("params", "macs", "macs_bias", "input_shape")}


def architecture_costs(info: dict, recorded: dict | None) -> dict | None:
    """The published network's params/MACs for the reference table: ``recorded`` (a sidecar's
    ``architecture``, written before graph optimizations) with its reference-convention FLOPs,
    when it is at the shape ``info`` (:func:`model_info`) was counted at and differs from it;
    else None (the graph itself is the architecture)."""
    if (not recorded or recorded.get("input_shape") != info["input_shape"]
            or recorded.get("macs") == info["macs"]):
        return None
    return {**recorded,
            "flops_g_reference": 2 * recorded["macs"] / REFERENCE_FLOPS_DIVISOR,
            "flops_g_reference_with_bias": 2 * (recorded["macs"] + recorded["macs_bias"])
            / REFERENCE_FLOPS_DIVISOR}


def reference_rows(source: str | None = None, variant: str | None = None) -> list[dict]:
    """Rows of the reference table (``benchmarks/reference_table.csv``), optionally filtered."""
    text = resources.files("rcan_deploy").joinpath("reference_table.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return [r for r in rows if (source is None or r["source"] == source)
            and (variant is None or r["variant"] == variant)]
