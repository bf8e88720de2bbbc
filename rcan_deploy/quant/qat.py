"""Quantization-aware fine-tuning (QAT) of a QDQ graph, on the graph itself.

The QDQ graph that PTQ wrote is interpreted in PyTorch (:class:`GraphModule`, a small
interpreter for the ops these SR graphs use), trained, and its initializers are written back into
a copy of the same graph: node list, op types, tensor and node names stay as they were, so the
result has exactly the structure of the PTQ graph and runs wherever it runs.

- An activation ``QuantizeLinear -> DequantizeLinear`` pair is fake quantization with a
  straight-through estimator (gradient 1 inside the integer range, 0 outside); its scale stays
  fixed, or is learned (LSQ, in log space) with ``learn_scales``.
- A weight quantized from a float initializer (modelopt's form) trains that float weight; its
  per-channel scale is recomputed from the current weight on every step with the number of levels
  of the PTQ graph (``round(max|w| / scale)``: 127, or 63 for 7-bit weights), as PTQ would.
- A weight stored as integers (ONNX Runtime ``quantize_static``) trains a float copy and is
  requantized at the end; an int32 bias whose scale is input scale x weight scale keeps that
  relation with the new scales.
- Conv weights and biases train (also those of layers left in float); other constants stay.

Loss: distillation to the FP32 graph's output (L1 or MSE, divided by the value range), on random
LR crops (with flips) of the calibration images; Adam with cosine decay; seeded, deterministic on
CPU; CUDA when present. The written graph is checked against ONNX Runtime.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ..defaults import progress_off
from ..errors import UserError, VerificationError

if TYPE_CHECKING:
    import torch

LOSSES = ("l1", "mse")
MAX_IMAGES = 64  # calibration images held in memory for the crops (evenly spaced in the set)
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
# |ONNX Runtime - interpreter| on the written graph, as a fraction of the value range (mean, max).
# Float sums in another order flip some activations by one level and the flips spread through
# 8-bit residual streams: ONNX Runtime with and without graph optimizations differs by about
# 0.002 mean / 0.014 max on the shipped SR4K RCAN x2 PTQ graph, so do the interpreter and it.
VERIFY_TOLERANCE = {"mean": 0.005, "max": 0.05}


@dataclass(frozen=True)
class QatOptions:
    """The fine-tuning recipe (recorded in the sidecar)."""

    steps: int = 1000
    learning_rate: float = 1e-5
    batch_size: int = 8
    crop_size: int = 64  # LR pixels
    loss: str = "l1"
    learn_scales: bool = True  # LSQ activation scales
    scale_learning_rate: float = 3e-3  # of the log activation scales (LSQ)
    seed: int = 0

    def check(self) -> None:
        for flag, value, low in (("--qat", self.steps, 1), ("--qat-batch", self.batch_size, 1),
                                 ("qat crop_size", self.crop_size, 8), ("--seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{flag} {value!r}: expected an integer >= {low}")
        for flag, value in (("--qat-learning-rate", self.learning_rate),
                            ("qat scale_learning_rate", self.scale_learning_rate)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UserError(f"{flag} {value}: expected a positive number")
        if self.loss not in LOSSES:
            raise UserError(f"qat loss {self.loss!r}: expected one of {', '.join(LOSSES)}")


def _round_ste(value: torch.Tensor) -> torch.Tensor:
    """Round half to even (as QuantizeLinear) with the identity as gradient."""
    return value + (value.round() - value).detach()


def _int_range(dtype: int) -> tuple[int, int]:
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    if dtype not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                     onnx.TensorProto.UINT16, onnx.TensorProto.INT32):
        raise UserError(f"QAT supports integer Q/DQ types, not {np_dtype}")
    info = np.iinfo(np_dtype)
    return int(info.min), int(info.max)


def _per_axis(tensor, ndim: int, axis: int):
    """A scale or zero point (torch or numpy) shaped to broadcast along ``axis`` of an ``ndim``
    tensor."""
    if math.prod(tensor.shape) == 1:
        return tensor.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return tensor.reshape(shape)


def _channel_amax(weight: torch.Tensor, axis: int, per_channel: bool) -> torch.Tensor:
    if not per_channel:
        return weight.detach().abs().max().reshape(1)
    moved = weight.detach().abs().movedim(axis % weight.ndim, 0)
    return moved.reshape(moved.shape[0], -1).amax(1)


@dataclass
class _WeightQuant:
    """A quantized weight: its float parameter, scale/zero-point names, axis, integer range and
    the number of levels its scale spans."""

    weight: str
    scale: str
    zero_point: str | None
    axis: int
    low: int
    high: int
    levels: int | None  # None: the scale stays as in the graph (asymmetric weights)
    stored_int: bool  # integers stored in the graph (quantize_static) vs float through Q/DQ


class GraphModule:
    """A QDQ (or float) ONNX graph of one image input, interpreted in PyTorch.

    ``trainable``: whether Conv weights and biases become parameters; ``learn_scales``: whether
    activation Q/DQ scales do (LSQ). Call it on an NCHW tensor; :meth:`initializers` gives the
    values to write back."""

    def __init__(self, model: onnx.ModelProto, device: str | torch.device = "cpu",
                 trainable: bool = True, learn_scales: bool = False) -> None:
        import torch

        self.device = torch.device(device)
        graph = model.graph
        self.nodes = [node for node in graph.node if node.op_type != "Constant"]
        for node in self.nodes:
            if node.op_type not in _OPS:
                raise UserError(f"QAT: unsupported op {node.op_type} (node {node.name or '?'}); "
                                f"supported: {', '.join(sorted(_OPS))}")
        arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.dtypes = {t.name: t.data_type for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                arrays[node.output[0]] = _constant_value(node)
                self.dtypes[node.output[0]] = onnx.helper.np_dtype_to_tensor_dtype(
                    arrays[node.output[0]].dtype)
        self.input_name = next(i.name for i in graph.input if i.name not in arrays)
        self.output_name = graph.output[0].name
        producers = {out: node for node in graph.node for out in node.output}
        self.weights: dict[str, _WeightQuant] = {}  # by the name of the tensor holding integers
        self.biases: dict[str, tuple[str, str | None, str]] = {}  # int32 bias -> x, w scale names
        train_names = self._trainable_names(graph.node, arrays, producers) if trainable else set()
        floats = self._find_weights(graph.node, arrays, producers, train_names)
        self.tensors: dict[str, torch.Tensor] = {}
        self.parameters: dict[str, torch.nn.Parameter] = {}
        for name, array in arrays.items():
            if name in train_names:
                value = floats.get(name, array).astype(np.float32)
                self.parameters[name] = torch.nn.Parameter(
                    torch.from_numpy(value).to(self.device))
            if np.issubdtype(array.dtype, np.floating):
                self.tensors[name] = torch.from_numpy(array.astype(np.float32)).to(self.device)
            else:
                self.tensors[name] = torch.from_numpy(array.astype(np.int64))
        self.log_scales: dict[str, torch.nn.Parameter] = {}
        if learn_scales:
            for node in self.nodes:
                if (node.op_type == "QuantizeLinear" and node.input[0] not in arrays
                        and node.input[1] not in self.log_scales):
                    self.log_scales[node.input[1]] = torch.nn.Parameter(
                        self.tensors[node.input[1]].log())
        self._derived = {q.scale: q for q in self.weights.values() if q.levels is not None}
        self._bias_of = {own: (x, w) for own, x, w in self.biases.values() if x is not None}
        self._scales: dict[str, torch.Tensor] = {}

    # -- structure ------------------------------------------------------------------------
    @staticmethod
    def _trainable_names(nodes, arrays, producers) -> set[str]:
        """Initializers holding Conv weights/biases (directly, through Q/DQ, or as integers);
        a ConvTranspose only when quantized (a float one is a fixed pixel-shuffle form)."""
        names = set()
        for node in nodes:
            if node.op_type not in ("Conv", "ConvTranspose"):
                continue
            for tensor in node.input[1:3]:
                quantized = False
                while tensor and tensor not in arrays and tensor in producers:
                    source = producers[tensor]
                    if source.op_type not in (*QUANT_OPS, "Cast", "Identity"):
                        break
                    quantized |= source.op_type in QUANT_OPS
                    tensor = source.input[0]
                if tensor in arrays and np.issubdtype(arrays[tensor].dtype, np.number) and (
                        node.op_type == "Conv" or quantized):
                    names.add(tensor)
        return names

    def _find_weights(self, nodes, arrays, producers,
                      train_names: set[str]) -> dict[str, np.ndarray]:
        """Record how each trained weight is quantized; return the float values of those
        stored as integers (``train_names`` loses integers it cannot train)."""
        consumers: dict[str, list] = {}
        for node in nodes:
            for tensor in node.input:
                consumers.setdefault(tensor, []).append(node)
        floats = {}
        for node in nodes:
            if node.op_type not in QUANT_OPS or node.input[0] not in train_names:
                continue
            source = node.input[0]
            stored_int = not np.issubdtype(arrays[source].dtype, np.floating)
            if stored_int != (node.op_type == "DequantizeLinear"):
                continue
            axis = _attr(node, "axis", 1)
            zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            zero = arrays[zero_name] if zero_name else np.zeros((), np.uint8)
            scale = arrays[node.input[1]].astype(np.float32)
            weight = arrays[source].astype(np.float32)
            if stored_int:
                weight = (weight - _per_axis(zero.astype(np.float32), weight.ndim, axis)) * \
                    _per_axis(scale, weight.ndim, axis)
                floats[source] = weight
            dtype = self.dtypes[zero_name] if zero_name else onnx.TensorProto.UINT8
            if stored_int and arrays[source].dtype == np.int32:
                if np.any(zero):
                    train_names.discard(source)
                else:
                    self.biases[source] = self._bias_scales(node, arrays, producers, consumers)
                continue
            low, high = _int_range(dtype)
            levels = None
            if not np.any(zero):
                amax = np.abs(weight).max(keepdims=True).reshape(-1)
                if scale.size > 1:
                    moved = np.moveaxis(np.abs(weight), axis % weight.ndim, 0)
                    amax = moved.reshape(moved.shape[0], -1).max(1)
                used = (amax > 0) & (scale.reshape(-1) > 0)
                if used.any():
                    levels = int(np.round((amax[used] / scale.reshape(-1)[used]).max()))
                if levels is not None and not 1 <= levels <= high:
                    levels = None
            self.weights[source] = _WeightQuant(source, node.input[1], zero_name, axis, low,
                                                high, levels, stored_int)
        return floats

    def _bias_scales(self, dq, arrays, producers, consumers) -> tuple[str, str | None, str]:
        """(own scale, input scale, weight scale) names of an int32 bias DQ whose scale is
        input scale x weight scale; (own scale, None, '') when it is not."""
        own = dq.input[1]
        for conv in consumers.get(dq.output[0], []):
            x_dq, w_dq = (producers.get(conv.input[i]) for i in (0, 1))
            if x_dq is None or w_dq is None or {x_dq.op_type, w_dq.op_type} != {
                    "DequantizeLinear"}:
                continue
            x_scale, w_scale = x_dq.input[1], w_dq.input[1]
            product = arrays[x_scale].astype(np.float64) * arrays[w_scale].astype(np.float64)
            if np.allclose(arrays[own], product, rtol=1e-5, atol=0):
                return own, x_scale, w_scale
        return own, None, ""

    # -- evaluation -----------------------------------------------------------------------
    def _weight_of(self, name: str) -> torch.Tensor:
        """A trained float weight (stored integers: their float copy) as the graph stores it."""
        value = self.parameters[name]
        if self.dtypes.get(name) == onnx.TensorProto.FLOAT16:
            value = value.half().float()
        return value

    def scale(self, name: str) -> torch.Tensor:
        """The value of a scale tensor in this forward pass: learned, derived from its weight
        (max|w| / levels), or as stored."""
        import torch

        if name in self._scales:
            return self._scales[name]
        value = self.tensors[name]
        if name in self.log_scales:
            value = self.log_scales[name].exp()
        elif name in self._derived:
            quant = self._derived[name]
            amax = _channel_amax(self._weight_of(quant.weight), quant.axis, value.numel() > 1)
            value = torch.where(amax > 0, amax / quant.levels, value.reshape(-1)).reshape(
                value.shape)
        elif name in self._bias_of:
            x_scale, w_scale = self._bias_of[name]
            value = (self.scale(x_scale).detach() * self.scale(w_scale)).reshape(value.shape)
        if self.dtypes.get(name) == onnx.TensorProto.FLOAT16:
            value = value.half().float()
        self._scales[name] = value
        return value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor | None] = {self.input_name: x}
        self._scales = {}
        for node in self.nodes:
            env.update(zip(node.output, self.run_node(node, env)))
        return env[self.output_name]

    def run_node(self, node: onnx.NodeProto, values: dict) -> list[torch.Tensor]:
        """The outputs of one node, its inputs taken from ``values`` or the graph's constants."""
        inputs = [None if not name else values[name] if name in values else self._constant(name)
                  for name in node.input]
        return _OPS[node.op_type](self, node, inputs)

    def _constant(self, name: str) -> torch.Tensor:
        if name in self.parameters:
            if name in self.weights and self.weights[name].stored_int:
                return self._int_weight(self.weights[name])
            if name in self.biases:
                return self._int_bias(name)
            return self._weight_of(name)
        return self.tensors[name]

    def _int_weight(self, quant: _WeightQuant) -> torch.Tensor:
        """Stored integers: the float copy fake-quantized, returned as integers (the DQ that
        reads them multiplies by the scale)."""
        weight = self._weight_of(quant.weight)
        scale = _per_axis(self.scale(quant.scale), weight.ndim, quant.axis)
        zero = (_per_axis(self.tensors[quant.zero_point].float(), weight.ndim, quant.axis)
                if quant.zero_point else 0.0)
        return (_round_ste(weight / scale) + zero).clamp(quant.low, quant.high)

    def _int_bias(self, name: str) -> torch.Tensor:
        own = self.biases[name][0]
        return _round_ste(self.parameters[name] / _per_axis(self.scale(own), 1, 0))

    # -- write back -----------------------------------------------------------------------
    def initializers(self) -> dict[str, np.ndarray]:
        """Every changed initializer, in its stored dtype: trained weights and biases (integers
        requantized), derived and learned scales."""
        import torch

        self._scales = {}
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name in self.parameters:
                if name in self.weights and self.weights[name].stored_int:
                    value = self._int_weight(self.weights[name])
                elif name in self.biases:
                    value = self._int_bias(name)
                else:
                    value = self.parameters[name]
                out[name] = value.cpu().numpy()
            for name in {*self._derived, *self._bias_of, *self.log_scales}:
                out[name] = self.scale(name).cpu().numpy()
        return {name: value.astype(onnx.helper.tensor_dtype_to_np_dtype(self.dtypes[name]))
                .reshape(self.tensors[name].shape if name in self.tensors else value.shape)
                for name, value in out.items()}


def _crops(images: list[np.ndarray], size: int, count: int,
           rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``size`` crops (NCHW float32, 0..1) of uint8 HxWx3 images, each
    flipped left-right and upside down with probability 1/2."""
    batch = np.empty((count, 3, size, size), np.float32)
    for index in range(count):
        image = images[int(rng.integers(len(images)))]
        y = int(rng.integers(0, image.shape[0] - size + 1))
        x = int(rng.integers(0, image.shape[1] - size + 1))
        crop = image[y:y + size, x:x + size]
        if rng.integers(2):
            crop = crop[:, ::-1]
        if rng.integers(2):
            crop = crop[::-1]
        batch[index] = crop.transpose(2, 0, 1) / np.float32(255)
    return batch


def write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Copy of ``model`` with the named initializers (or Constant node values) replaced; names
    and graph unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    missing = set(values)
    for tensor in out.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
            missing.discard(tensor.name)
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in values:
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute(
                "value", numpy_helper.from_array(values[node.output[0]], node.output[0])))
            missing.discard(node.output[0])
    if missing:
        raise RuntimeError(f"QAT write-back: no initializer named {sorted(missing)[0]}")
    return out


def _distance(student: GraphModule, teacher: GraphModule, batch: torch.Tensor,
              loss: Callable, value_range: float) -> float:
    import torch

    with torch.no_grad():
        return float(loss(student(batch) / value_range, teacher(batch) / value_range))


def verify(written: onnx.ModelProto, student: GraphModule, crops: np.ndarray,
           value_range: float) -> dict:
    """ONNX Runtime on the written graph against the interpreter that trained it, on ``crops``
    (NCHW, 0..1); a VerificationError beyond :data:`VERIFY_TOLERANCE` of the range."""
    import torch

    from ..onnx_utils import ort_session
    from .graph import dynamic_copy

    session = ort_session(dynamic_copy(written))
    name = session.get_inputs()[0].name
    worst, total, count = 0.0, 0.0, 0
    for crop in crops:
        x = crop[None] * np.float32(value_range)
        expected = session.run(None, {name: x})[0]
        with torch.no_grad():
            actual = student(torch.from_numpy(x).to(student.device)).cpu().numpy()
        error = np.abs(expected - actual) / value_range
        worst, total, count = max(worst, float(error.max())), total + float(error.sum()), \
            count + error.size
    result = {"max_abs_error": worst, "mean_abs_error": total / count, "crops": len(crops),
              "tolerance": VERIFY_TOLERANCE, "unit": "fraction of the value range"}
    if worst > VERIFY_TOLERANCE["max"] or total / count > VERIFY_TOLERANCE["mean"]:
        raise VerificationError(f"QAT: ONNX Runtime departs from the fine-tuned graph by "
                                f"{total / count:.4f} mean, {worst:.4f} max of the value range "
                                f"(tolerance {VERIFY_TOLERANCE['mean']} / "
                                f"{VERIFY_TOLERANCE['max']})")
    return result


def finetune(qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: list[np.ndarray],
             value_range: float, options: QatOptions = QatOptions(), stride: int = 1,
             progress: bool | None = None) -> tuple[onnx.ModelProto, dict]:
    """Fine-tune the QDQ graph ``qdq`` to reproduce its FP32 parent ``fp32`` on random crops of
    ``images`` (uint8 HxWx3 LR images) at the graph's ``value_range``; return the fine-tuned copy
    (same structure and names) and its record."""
    import torch
    import torch.nn.functional as F

    options.check()
    size = -(-options.crop_size // stride) * stride
    images = [image for image in images if min(image.shape[:2]) >= size]
    if not images:
        raise UserError(f"QAT: no calibration image has an LR side of {size} px")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    student = GraphModule(qdq, device, learn_scales=options.learn_scales)
    teacher = GraphModule(fp32, device, trainable=False)
    if not student.parameters:
        raise UserError("QAT: the graph has no Conv weights to fine-tune")
    loss_fn = F.l1_loss if options.loss == "l1" else F.mse_loss
    held = torch.from_numpy(_crops(images, size, 2 * options.batch_size,
                                   np.random.default_rng(options.seed + 1))).to(device)
    held *= value_range
    before = _distance(student, teacher, held, loss_fn, value_range)
    groups = [{"params": list(student.parameters.values()), "lr": options.learning_rate}]
    if student.log_scales:
        groups.append({"params": list(student.log_scales.values()),
                       "lr": options.scale_learning_rate})
    optimizer = torch.optim.Adam(groups)
    steps = options.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    every = max(1, steps // 50)
    history, running = [], None
    started = time.perf_counter()
    bar = tqdm(range(steps), desc="QAT", disable=progress_off(progress))
    for step in bar:
        batch = torch.from_numpy(_crops(images, size, options.batch_size, rng)).to(device)
        batch *= value_range
        with torch.no_grad():
            target = teacher(batch) / value_range
        loss = loss_fn(student(batch) / value_range, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % every == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": running})
        bar.set_postfix(loss=f"{running:.3g}")
    seconds = time.perf_counter() - started
    after = _distance(student, teacher, held, loss_fn, value_range)
    written = write_back(qdq, student.initializers())
    verification = verify(written, student, held.cpu().numpy()[:2] / value_range, value_range)
    record = {"steps": steps, "recipe": {**asdict(options), "crop_size": size,
                                         "optimizer": "Adam", "schedule": "cosine",
                                         "target": "FP32 graph output (distillation)",
                                         "augment": "random crops, flips", "device": device.type},
              "seconds": seconds, "loss_history": history,
              "distillation_loss": {"before": before, "after": after,
                                    "crops": int(len(held)), "seed": options.seed + 1},
              "trained_tensors": len(student.parameters),
              "learned_scales": len(student.log_scales), "verification": verification}
    return written, record


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_int"):
            return np.asarray(onnx.helper.get_attribute_value(attribute))
        if attribute.name in ("value_floats", "value_ints"):
            return np.asarray(list(onnx.helper.get_attribute_value(attribute)))
    raise UserError(f"QAT: Constant node {node.name or '?'} without a supported value attribute")


# -- ops --------------------------------------------------------------------------------------
def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _conv(module, node, inputs):
    import torch.nn.functional as F

    x, weight, bias = (inputs + [None])[:3]
    if _attr(node, "auto_pad", "NOTSET") != "NOTSET" or x.ndim != 4:
        raise UserError(f"QAT: Conv {node.name}: only 2-D convs with explicit pads are supported")
    pads = _attr(node, "pads", [0, 0, 0, 0])
    x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
    return [F.conv2d(x, weight, bias, stride=_attr(node, "strides", [1, 1]),
                     dilation=_attr(node, "dilations", [1, 1]), groups=_attr(node, "group", 1))]


def _conv_transpose(module, node, inputs):
    import torch.nn.functional as F

    x, weight, bias = (inputs + [None])[:3]
    if (_attr(node, "auto_pad", "NOTSET") != "NOTSET" or _attr(node, "output_shape") is not None
            or x.ndim != 4):
        raise UserError(f"QAT: ConvTranspose {node.name}: only 2-D with explicit pads supported")
    y = F.conv_transpose2d(x, weight, bias, stride=_attr(node, "strides", [1, 1]),
                           output_padding=_attr(node, "output_padding", [0, 0]),
                           groups=_attr(node, "group", 1),
                           dilation=_attr(node, "dilations", [1, 1]))
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    return [y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]]


def _depth_to_space(module, node, inputs):
    x, block = inputs[0], _attr(node, "blocksize")
    n, c, h, w = x.shape
    if _attr(node, "mode", "DCR") == "CRD":
        y = x.reshape(n, c // block**2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
    return [y.reshape(n, c // block**2, h * block, w * block)]


def _reshape(module, node, inputs):
    x, shape = inputs[0], _ints(inputs[1])
    if not _attr(node, "allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _slice(module, node, inputs):
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise UserError(f"QAT: Slice {node.name}: only positive steps are supported")
        index[axis] = slice(*slice(start, end, step).indices(x.shape[axis]))
    return [x[tuple(index)]]


def _reduce_mean(module, node, inputs):
    x = inputs[0]
    axes = _attr(node, "axes")
    if axes is None and len(inputs) > 1 and inputs[1] is not None:
        axes = _ints(inputs[1])
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.ndim))
    return [x.mean(dim=tuple(axes), keepdim=bool(_attr(node, "keepdims", 1)))]


def _cast(module, node, inputs):
    import torch

    to = _attr(node, "to")
    x = inputs[0]
    if to == onnx.TensorProto.FLOAT16:
        return [x.float().half().float()]  # fp16 rounding, computed in float32
    if to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return [x.float()]
    if to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return [x.to(torch.int64)]
    raise UserError(f"QAT: Cast {node.name} to {onnx.helper.tensor_dtype_to_np_dtype(to)} "
                    "is not supported")


def _quantize(module, node, inputs):
    x = inputs[0]
    axis = _attr(node, "axis", 1)
    if _attr(node, "block_size", 0):
        raise UserError(f"QAT: blocked QuantizeLinear {node.name} is not supported")
    zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    low, high = _int_range(module.dtypes[zero_name] if zero_name else onnx.TensorProto.UINT8)
    scale = _per_axis(module.scale(node.input[1]), x.ndim, axis)
    zero = _per_axis(module.tensors[zero_name].to(x.device).float(), x.ndim, axis) \
        if zero_name else 0.0
    return [(_round_ste(x / scale) + zero).clamp(low, high)]


def _dequantize(module, node, inputs):
    q = inputs[0].float()
    axis = _attr(node, "axis", 1)
    scale = _per_axis(module.scale(node.input[1]), q.ndim, axis)
    zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    zero = _per_axis(module.tensors[zero_name].to(q.device).float(), q.ndim, axis) \
        if zero_name else 0.0
    return [(q - zero) * scale]


def _gather(module, node, inputs):
    x, indices = inputs
    axis = _attr(node, "axis", 0) % x.ndim
    flat = indices.reshape(-1).to(x.device)
    y = x.index_select(axis, flat % x.shape[axis])
    return [y.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])]


def _concat(module, node, inputs):
    import torch

    return [torch.cat(inputs, _attr(node, "axis"))]


def _elementwise(function: Callable) -> Callable:
    return lambda module, node, inputs: [function(*inputs)]


_OPS: dict[str, Callable] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Relu": _elementwise(lambda x: x.relu()),
    "Sigmoid": _elementwise(lambda x: x.sigmoid()),
    "Add": _elementwise(lambda a, b: a + b),
    "Sub": _elementwise(lambda a, b: a - b),
    "Mul": _elementwise(lambda a, b: a * b),
    "Div": _elementwise(lambda a, b: a / b),
    "Identity": _elementwise(lambda x: x),
    "GlobalAveragePool": _elementwise(lambda x: x.mean(dim=tuple(range(2, x.ndim)),
                                                       keepdim=True)),
    "ReduceMean": _reduce_mean,
    "DepthToSpace": _depth_to_space,
    "Reshape": _reshape,
    "Transpose": lambda module, node, inputs: [inputs[0].permute(
        _attr(node, "perm", list(range(inputs[0].ndim))[::-1]))],
    "Slice": _slice,
    "Concat": _concat,
    "Cast": _cast,
    "Gather": _gather,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}
