"""INT8 post-training quantization of a fixed-shape SR graph, calibrated on small crops.

The scales of a fully convolutional network do not depend on the image size, so calibration runs
through a dynamic-shape copy of the fixed graph (same nodes and tensor names, symbolic H and W)
on LR crops; the resulting QDQ graph then gets its input fixed back to the deployment shape
(1x3x1080x1920 by default). Cost therefore scales with the crops, not with the frame.

Global pooling (RCAN channel attention, CBAM): the pooled statistics of a crop are not those of
a frame. For average pooling the frame value is the mean of the crop values over a partition of
the frame, so it lies inside the range the crops cover, and max calibration (a range, not a
histogram) stays valid; for max pooling the frame value can exceed every crop's, which is why
the sidecar records ``global_pooling`` and the sensitivity report measures those layers.

Targets:
- ``openvino`` (default) and ``tensorrt``: nvidia-modelopt's ONNX PTQ on ONNX Runtime CPU:
  symmetric int8 activations and per-channel int8 weights (zero points 0); ``max`` and
  ``entropy`` calibration are modelopt's own, ``percentile`` and ``mse`` keep modelopt's
  placement and replace every activation range by the 99.999th percentile of |x|, or by the
  clipping range whose int8 quantization has the least squared error on the crops. OpenVINO runs this graph with int8
  kernels on CPUs, where ``weight_bits`` "auto" gives 7-bit weights if this CPU's int8
  convolutions saturate (:mod:`rcan_deploy.quant.weight_bits`); :mod:`rcan_deploy.quant.pipeline`
  then keeps the residual stream in float and chooses per-layer precision on the target's
  runtime.
- ``ort`` (alias ``cpu``): ONNX Runtime ``quantize_static`` QDQ with uint8 asymmetric
  activations and int8 per-channel weights, the form ONNX Runtime's CPU provider fuses into
  QLinearConv; ``weight_bits`` as for ``openvino``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import onnx

from ..artifacts import process_alive
from ..data.crops import DEFAULT_CROP_SIZE, DEFAULT_N_CROPS, DEFAULT_SEED
from ..errors import UserError
from ..record import INPUT_RANGES
from ..onnx_utils import input_shape, ort_session, run
from .graph import activation_scales, dynamic_copy, fix_spatial_shape, quantized_layers
from .qat import QatOptions
from .weight_bits import (ORT_REDUCED_MAX, REDUCED_MAX, WEIGHT_BITS, choose_weight_bits,
                          max_weight_integer, reduce_weight_range)

QAT_DEFAULTS = QatOptions()

METHODS = ("max", "entropy", "percentile", "mse")
TARGETS = ("openvino", "tensorrt", "ort")
TARGET_ALIASES = {"cpu": "ort"}
HIGH_PRECISIONS = ("fp32", "fp16")
PERCENTILE = 99.999
MSE_CANDIDATES = 64  # clipping ranges tried by the mse method
MSE_SAMPLE = 1 << 20  # values per tensor it weighs


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize: the calibration set and crops, the PTQ method and target, what stays in
    higher precision (``exclude`` regexes, ``keep_float`` exact names), the held-out check."""

    dataset: str | None = None  # name or folder; None: div2k_valid when present, else samples
    data_root: str | None = None
    calib_crops: int = DEFAULT_N_CROPS
    crop_size: int = DEFAULT_CROP_SIZE
    seed: int = DEFAULT_SEED
    method: str = "max"
    target: str = "openvino"
    high_precision: str = "fp32"
    exclude: tuple[str, ...] = ()
    # per-layer precision search on whole selection images (rcan_deploy.quant.selection)
    mixed_precision: bool = True
    max_drop: float = 0.05  # mean PSNR drop budget, dB
    max_worst_drop: float = 0.2  # worst-image PSNR drop budget, dB
    min_int8_share: float = 0.8  # of the executed conv MACs
    selection_images: int | None = None  # None: the whole selection split; 0: measure nothing
    input_range: int | None = None  # of a graph without sidecar
    weight_bits: str = "auto"  # "auto" | "8" | "7" (see rcan_deploy.quant.weight_bits)
    qat_steps: int = 0  # quantization-aware fine-tuning after PTQ (see quant.qat); 0: none
    qat_learning_rate: float = QAT_DEFAULTS.learning_rate
    qat_batch: int = QAT_DEFAULTS.batch_size
    qat_learn_scales: bool = QAT_DEFAULTS.learn_scales

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", TARGET_ALIASES.get(self.target, self.target))
        if isinstance(self.weight_bits, int) and not isinstance(self.weight_bits, bool):
            object.__setattr__(self, "weight_bits", str(self.weight_bits))

    def qat(self) -> QatOptions:
        """The fine-tuning recipe of these options."""
        return replace(QAT_DEFAULTS, steps=self.qat_steps, learning_rate=self.qat_learning_rate,
                       batch_size=self.qat_batch, learn_scales=self.qat_learn_scales,
                       seed=self.seed)

    def check(self) -> None:
        for flag, value, choices in (("--method", self.method, METHODS),
                                     ("--target", self.target, TARGETS),
                                     ("--high-precision", self.high_precision, HIGH_PRECISIONS),
                                     ("--weight-bits", self.weight_bits, WEIGHT_BITS)):
            if value not in choices:
                raise UserError(f"{flag} {value!r}: expected one of {', '.join(choices)}")
        if self.method == "mse" and self.target == "ort":
            raise UserError("--method mse applies to the openvino and tensorrt targets (ONNX "
                            "Runtime's quantize_static has no such calibrator)")
        for flag, value, low in (("--calib-crops", self.calib_crops, 1),
                                 ("--crop-size", self.crop_size, 8), ("--seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{flag} {value!r}: expected an integer >= {low}")
        if self.selection_images is not None and (isinstance(self.selection_images, bool) or not
                                                  isinstance(self.selection_images, int) or
                                                  self.selection_images < 0):
            raise UserError(f"--selection-images {self.selection_images!r}: expected an integer "
                            ">= 0")
        if self.selection_images == 0 and self.mixed_precision:
            raise UserError("--selection-images 0 measures nothing, so there is no precision to "
                            "choose: add --no-mixed-precision")
        for flag, value in (("--max-drop", self.max_drop),
                            ("--max-worst-drop", self.max_worst_drop)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UserError(f"{flag} {value}: expected a positive number of dB")
        if not (isinstance(self.min_int8_share, (int, float)) and
                0 <= self.min_int8_share <= 1):
            raise UserError(f"--min-int8-share {self.min_int8_share}: expected 0..1")
        if self.input_range not in (None, *INPUT_RANGES):
            raise UserError(f"--input-range {self.input_range}: expected 1 or 255")
        if isinstance(self.qat_steps, bool) or not isinstance(self.qat_steps, int) \
                or self.qat_steps < 0:
            raise UserError(f"--qat {self.qat_steps!r}: expected an integer >= 0")
        if self.qat_steps:
            self.qat().check()
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UserError(f"--exclude {pattern!r}: not a regular expression ({exc})") from None


class _CropReader:
    """ONNX Runtime CalibrationDataReader over an (N, 3, S, S) array."""

    def __init__(self, input_name: str, crops: np.ndarray) -> None:
        self._items = iter([{input_name: crop[None]} for crop in crops])

    def get_next(self):
        return next(self._items, None)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence ONNX Runtime's calibration logging, prints and warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def excluded_nodes(model: onnx.ModelProto, options: QuantizeOptions) -> list[str]:
    """Node names matching any ``--exclude`` regex."""
    names = [node.name for node in model.graph.node]
    chosen = [n for n in names if any(re.search(p, n) for p in options.exclude)]
    for pattern in options.exclude:
        if not any(re.search(pattern, n) for n in names):
            raise UserError(f"--exclude {pattern!r} matches no node of the graph")
    return sorted(set(chosen))


def exact_name_patterns(names: list[str]) -> list[str]:
    """Regexes matching exactly ``names``: modelopt reads ``nodes_to_exclude`` as patterns
    matched at the start of a name (``re.match``), so ``/x/Conv`` alone would also exclude
    ``/x/Conv_1``."""
    return [f"^{re.escape(name)}$" for name in names]


def _modelopt(dynamic_path: str, out_path: str, crops: np.ndarray, method: str,
              high_precision: str, exclude: list[str]) -> None:
    """modelopt's PTQ in a child process (see :mod:`rcan_deploy.quant.modelopt_worker`);
    ``exclude``: exact node names."""
    folder = os.path.dirname(out_path)
    crops_path, job_path = os.path.join(folder, "crops.npy"), os.path.join(folder, "job.json")
    np.save(crops_path, crops)
    with open(job_path, "w") as handle:
        json.dump({"model": dynamic_path, "out": out_path, "crops": crops_path, "method": method,
                   "high_precision": high_precision, "exclude": exact_name_patterns(exclude)},
                  handle)
    done = subprocess.run([sys.executable, "-m", "rcan_deploy.quant.modelopt_worker", job_path],
                          capture_output=True, text=True, preexec_fn=_die_with_parent)
    if done.returncode != 0 or not os.path.isfile(out_path):
        lines = (done.stderr or "no output").strip().splitlines()
        if any("No module named 'modelopt'" in line for line in lines):
            raise UserError("--target tensorrt needs nvidia-modelopt: pip install -c "
                            "constraints.txt -e . (see README)")
        raise RuntimeError("modelopt quantization failed: " + "\n".join(lines[-15:]))


def _die_with_parent() -> None:
    """In the worker (Linux): get SIGKILL when the parent dies, so a killed quantize leaves no
    orphan running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _work_folder():
    """A temporary folder for the dynamic graph, crops and the worker's job, named with this
    process's id; folders of killed runs (their process gone) are removed first."""
    prefix = "rcan-deploy-quantize-"
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(prefix):].split("-")[0]
        if name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def _ort_static(dynamic_path: str, out_path: str, crops: np.ndarray, method: str,
                symmetric: bool, exclude: list[str], input_name: str,
                reduce_range: bool = False) -> None:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    calibrate = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with _quiet():
        quantize_static(dynamic_path, out_path, _CropReader(input_name, crops),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calibrate,
                        nodes_to_exclude=list(exclude), reduce_range=reduce_range,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                       "CalibPercentile": PERCENTILE})


def _activation_magnitudes(dynamic: onnx.ModelProto, tensors: list[str],
                           crops: np.ndarray) -> dict[str, np.ndarray]:
    """|x| of every named tensor over all crops, flattened (float32)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(dynamic)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    values: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    session = ort_session(probe)
    for crop in crops:
        for name, out in zip(tensors, session.run(None, {session.get_inputs()[0].name: crop[None]})):
            values[name].append(np.abs(out).ravel())
    return {name: np.concatenate(v) for name, v in values.items()}


def _percentile_scale(magnitudes: np.ndarray) -> float:
    """Symmetric int8 scale from the PERCENTILE-th percentile of |x|."""
    return float(np.percentile(magnitudes, PERCENTILE)) / 127.0


def _mse_scale(magnitudes: np.ndarray, candidates: int = MSE_CANDIDATES) -> float:
    """The symmetric int8 scale whose quantization of ``magnitudes`` has the least squared error:
    clipping ranges from 30 % to 100 % of the maximum are tried (a sample of at most 2**20 values
    keeps it fast)."""
    sample = magnitudes
    if sample.size > MSE_SAMPLE:
        sample = np.random.default_rng(0).choice(sample, MSE_SAMPLE, replace=False)
    top = float(sample.max()) or 1.0
    best, best_error = top, float("inf")
    for clip in np.linspace(0.3 * top, top, candidates):
        step = clip / 127.0
        error = float(np.mean((np.minimum(np.round(sample / step), 127) * step - sample) ** 2))
        if error < best_error:
            best, best_error = clip, error
    return best / 127.0


_RANGE_METHODS = {"percentile": _percentile_scale, "mse": _mse_scale}


def _replace_activation_scales(model: onnx.ModelProto, scales: dict[str, float]) -> None:
    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in scales:
            tensor = consts[node.input[1]]
            value = np.asarray(scales[node.input[0]], onnx.helper.tensor_dtype_to_np_dtype(
                tensor.data_type)).reshape(onnx.numpy_helper.to_array(tensor).shape)
            tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))


def quantize_model(model: onnx.ModelProto, crops: np.ndarray,
                   options: QuantizeOptions = QuantizeOptions()) -> tuple[onnx.ModelProto, dict]:
    """Quantize a fixed-shape fp32 graph with LR ``crops`` (N, 3, S, S) already scaled to the
    graph's input range. Returns the fixed-shape QDQ graph and a record for the sidecar."""
    options.check()
    if crops.ndim != 4 or len(crops) == 0:
        raise UserError("the calibration set yielded no crops; refusing to calibrate on nothing")
    shape = input_shape(model)
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise UserError(f"quantize needs a fixed-shape graph, the input is {shape}")
    input_name = model.graph.input[0].name
    exclude = excluded_nodes(model, options)
    weights = choose_weight_bits(options.weight_bits, options.target)
    reduced = weights["bits"] == 7
    dynamic = dynamic_copy(model)
    try:
        run(dynamic, crops[:1])
    except Exception as exc:
        raise UserError("the graph does not run at the crop size (fixed-shape constants, e.g. a "
                        "reshape pixel-shuffle form): quantize the export with --pixel-shuffle "
                        "keep or convtranspose, then `rcan-deploy rewrite` the INT8 graph "
                        f"({type(exc).__name__})") from None
    with _work_folder() as tmp:
        dynamic_path, out_path = os.path.join(tmp, "dynamic.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(dynamic, dynamic_path)
        if options.target == "ort":
            _ort_static(dynamic_path, out_path, crops, options.method, False, exclude, input_name,
                        reduce_range=reduced)
        else:
            method = "max" if options.method in _RANGE_METHODS else options.method
            _modelopt(dynamic_path, out_path, crops, method, options.high_precision, exclude)
        quantized = onnx.load(out_path)
        if options.method in _RANGE_METHODS and options.target != "ort":
            scale_of = _RANGE_METHODS[options.method]
            magnitudes = _activation_magnitudes(dynamic, list(activation_scales(quantized)), crops)
            _replace_activation_scales(quantized, {name: scale_of(values)
                                                   for name, values in magnitudes.items()})
        if reduced and options.target != "ort":
            reduce_weight_range(quantized, REDUCED_MAX)
    fixed = fix_spatial_shape(quantized, shape[2], shape[3])
    layers = quantized_layers(fixed)
    if not layers:
        raise UserError("no layer was quantized (everything excluded?)")
    weights["how"] = ("8-bit symmetric per channel" if not reduced else
                      f"onnxruntime reduce_range (|q| <= {ORT_REDUCED_MAX})"
                      if options.target == "ort" else f"scale max|w|/{REDUCED_MAX} per channel")
    weights["max_abs_integer"] = max_weight_integer(fixed)
    record = {"method": options.method, "target": options.target,
              "high_precision": options.high_precision, "excluded_nodes": exclude,
              "quantized_layers": layers, "calibration_crop_shape": list(crops.shape),
              "weights": weights}
    return fixed, record
