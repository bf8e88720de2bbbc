"""Reduced-range (7-bit) weights for CPUs whose int8 convolutions saturate int16 pair sums.

See :mod:`rcan_deploy.cpu` for why: without VNNI or AMX, x86 kernels add pairs of u8 x s8
products in saturating int16, so weights must stay within +-64 to be exact. ``weight_bits``
"auto" picks 7 for a graph meant for a CPU runtime (``openvino``, ``ort``) when the CPU that
quantizes lacks VNNI and AMX (or is unknown), else 8; "8" and "7" force it, e.g. when the graph
will run on another CPU. TensorRT sums in int32: 8 unless forced.

How the graph gets them:
- modelopt-style graphs (float weight -> QuantizeLinear -> DequantizeLinear): the weight scales
  become max|w| / 63 per channel, so QuantizeLinear yields integers within +-63;
- graphs with int8 weight initializers -> DequantizeLinear: the weights are requantized to
  +-63 (and an int32 bias DequantizeLinear of the same layer to input scale x new weight scale);
- ``ort`` target: ONNX Runtime's ``quantize_static(reduce_range=True)`` quantizes the weights to
  [-64, 64] itself (activations unchanged); 64 is still exact (255 x 128 = 32640 <= 32767).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..cpu import CpuInfo, detect_cpu

WEIGHT_BITS = ("auto", "8", "7")
CPU_TARGETS = ("openvino", "ort")
REDUCED_MAX = 63  # largest |q| of 7-bit symmetric weights
ORT_REDUCED_MAX = 64  # what ONNX Runtime's reduce_range gives int8 weights
_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def choose_weight_bits(option: str, target: str, cpu: CpuInfo | None = None) -> dict:
    """The weight bit width for ``--weight-bits option`` and ``--target target``, with the CPU
    seen and the reason, for the sidecar."""
    cpu = cpu or detect_cpu()
    if option != "auto":
        bits, why = int(option), f"--weight-bits {option}"
    elif target not in CPU_TARGETS:
        bits, why = 8, f"target {target}: the GPU sums int8 products in int32"
    else:
        bits = 7 if cpu.needs_reduced_range else 8
        why = f"target {target} on this CPU: {cpu.reason}"
    return {"bits": bits, "option": option, "why": why, "cpu": cpu.to_dict()}


def reduce_weight_range(model: onnx.ModelProto, max_q: int = REDUCED_MAX) -> int:
    """Make the weights of a QDQ graph (in place) quantize to integers within +-``max_q``;
    return how many weight tensors were changed (see the module docstring)."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in model.graph.node for out in node.output}
    changed = 0
    for form, node, axis in _weight_nodes(model, inits, producers):
        if form == "float":
            if len(node.input) > 2 and node.input[2] and \
                    numpy_helper.to_array(inits[node.input[2]]).any():
                raise ValueError(f"{node.name}: weights with a non-zero zero point")
            weight = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = _scale_for(weight, numpy_helper.to_array(inits[node.input[1]]), axis, max_q)
            for name in {node.input[1]} | {dq.input[1] for dq in consumers[node.output[0]]
                                           if dq.op_type == "DequantizeLinear"}:
                _set(inits[name], scale)
            changed += 1
        else:
            changed += _requantize_int8(node, inits, consumers, producers, axis, max_q)
    return changed


def _weight_nodes(model, inits, producers):
    """(form, node, axis) of every layer weight: ("float", its QuantizeLinear, axis) for a float
    initializer -> Q -> DQ, ("int8", its DequantizeLinear, axis) for an int8 initializer -> DQ;
    each weight once."""
    seen = set()
    for layer in model.graph.node:
        dq = producers.get(layer.input[1]) if layer.op_type in _LAYERS and \
            len(layer.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            continue
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[1] in inits and \
                inits.get(q.input[0]) is not None and inits[q.input[0]].data_type in _FLOATS:
            node, form = q, "float"
        elif inits.get(dq.input[0]) is not None and \
                inits[dq.input[0]].data_type == onnx.TensorProto.INT8:
            node, form = dq, "int8"
        else:
            continue
        if node.name + node.output[0] not in seen:
            seen.add(node.name + node.output[0])
            yield form, node, next((a.i for a in node.attribute if a.name == "axis"), 1)


def _scale_for(weight: np.ndarray, old: np.ndarray, axis: int, max_q: int) -> np.ndarray:
    """Per-channel (along ``axis``, when ``old`` has one scale per channel) or per-tensor
    max|w| / max_q in ``old``'s dtype and shape; channels of zeros keep their old scale."""
    if old.size > 1:
        moved = np.moveaxis(np.abs(weight), axis, 0).reshape(weight.shape[axis], -1)
        peak = moved.max(axis=1).reshape(old.shape)
    else:
        peak = np.abs(weight).max().reshape(old.shape)
    return np.where(peak > 0, peak / max_q, old).astype(old.dtype)


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def _requantize_int8(dq, inits, consumers, producers, axis: int, max_q: int) -> int:
    """Requantize an int8 weight DequantizeLinear (zero point 0) to +-max_q, and the int32 bias
    of the layers that read it; 0 when it already fits."""
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
    if np.abs(q).max() <= max_q:
        return 0
    if len(dq.input) > 2 and dq.input[2] and numpy_helper.to_array(inits[dq.input[2]]).any():
        raise ValueError(f"{dq.name}: int8 weights with a non-zero zero point")
    old = numpy_helper.to_array(inits[dq.input[1]])
    per_channel = [1] * q.ndim
    if old.size > 1:
        per_channel[axis] = -1
    weight = q * old.astype(np.float64).reshape(per_channel)
    scale = _scale_for(weight, old, axis, max_q)
    values = np.clip(np.round(weight / scale.astype(np.float64).reshape(per_channel)),
                     -max_q, max_q).astype(np.int8)
    _set(inits[dq.input[0]], values)
    _set(inits[dq.input[1]], scale)
    for layer in consumers.get(dq.output[0], []):
        if layer.op_type in _LAYERS and len(layer.input) > 2:
            _requantize_bias(layer, inits, producers, scale)
    return 1


def _requantize_bias(layer, inits, producers, weight_scale: np.ndarray) -> None:
    """An int32 bias DQ of ``layer`` gets the scale input scale x ``weight_scale`` again (the
    fused integer kernels assume it)."""
    bias_dq, input_dq = producers.get(layer.input[2]), producers.get(layer.input[0])
    if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or input_dq is None \
            or input_dq.op_type != "DequantizeLinear" or input_dq.input[1] not in inits \
            or bias_dq.input[0] not in inits or bias_dq.input[1] not in inits:
        return
    bias = (numpy_helper.to_array(inits[bias_dq.input[0]]).astype(np.float64)
            * numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float64))
    old = numpy_helper.to_array(inits[bias_dq.input[1]])
    new = (float(numpy_helper.to_array(inits[input_dq.input[1]]).reshape(-1)[0])
           * weight_scale.astype(np.float64).reshape(-1))
    _set(inits[bias_dq.input[0]], np.round(bias / new).astype(np.int32))
    _set(inits[bias_dq.input[1]], new.astype(old.dtype).reshape(old.shape if old.size == new.size
                                                                  else new.shape))


def max_weight_integer(model: onnx.ModelProto) -> int:
    """The largest |integer| any layer weight of a QDQ graph quantizes to (0 without any)."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    largest = 0
    for form, node, axis in _weight_nodes(model, inits, producers):
        values = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
        if form == "float":
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            if scale.size > 1:
                shape = [1] * values.ndim
                shape[axis] = -1
                scale = scale.reshape(shape)
            values = np.round(values / scale)
        largest = max(largest, int(np.abs(values).max()))
    return largest
