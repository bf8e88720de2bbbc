"""PyTorch -> fixed-shape ONNX without running the network at the deployment resolution.

The network is traced once at a small size with symbolic H and W, simplified, optimized
(:mod:`rcan_deploy.passes.optimize`: MeanShift folding and exact upsampler fusion, unless
``optimize`` is off), rewritten into the requested pixel-shuffle form and checked against PyTorch
on ONNX Runtime at a small verification size. Only then is the input shape fixed (default 1x3x1080x1920) and the graph simplified once
more, which folds the shape arithmetic of the dynamic graph into constants. Cost is therefore
that of a tiny trace, whatever the deployment shape.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import defaults
from .checkpoints import ResolvedModel
from .costs import cost_totals, model_info
from .errors import UserError, VerificationError
from .onnx_utils import input_shape, max_abs_error, output_shape, run, simplify
from .passes.check import graph_report
from .passes.optimize import OptimizeOptions, optimize_graph
from .record import Record, save_onnx

INPUT_RANGES = defaults.EXPORT_INPUT_RANGES


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``shape`` is H x W of the fixed graph input (batch 1, RGB)."""

    shape: tuple[int, int] = defaults.SHAPE
    opset: int = defaults.OPSET
    pixel_shuffle: str = "keep"
    input_range: str = "native"
    fold_meanshift: bool = False  # also done by ``optimize``
    optimize: bool = True  # rcan_deploy.passes.optimize: MeanShift folding, upsampler fusion
    verify_shape: tuple[int, int] = defaults.VERIFY_SHAPE
    # Largest accepted |ONNX Runtime - PyTorch| relative to the output range (255 or 1).
    tolerance: float = 1e-4
    seed: int = 0


@dataclass
class ExportResult:
    """The fixed-shape graph, the verified dynamic-shape graph and what the sidecar records."""

    model: onnx.ModelProto
    dynamic_model: onnx.ModelProto
    record: dict


class _RangeAdapter(nn.Module):
    """Run a network whose native input range differs from the graph's (x255 or /255)."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.factor) / self.factor


def graph_range(resolved: ResolvedModel, input_range: str) -> int:
    """The value range (1 or 255) of the exported graph's input and output."""
    if input_range not in INPUT_RANGES:
        raise UserError(f"--input-range {input_range!r}: expected one of {', '.join(INPUT_RANGES)}")
    return resolved.native_range if input_range == "native" else int(input_range)


def _check_options(resolved: ResolvedModel, options: ExportOptions) -> None:
    if not 11 <= options.opset <= 21:
        raise UserError(f"--opset {options.opset}: expected 11..21 (DepthToSpace CRD needs 11)")
    stride = resolved.config.head_stride
    h, w = options.shape
    if max(h, w) > defaults.MAX_SIDE or 3 * h * w * resolved.config.scale**2 > \
            defaults.MAX_OUTPUT_ELEMENTS:
        raise UserError(f"--shape {h}x{w}: the x{resolved.config.scale} output would exceed "
                        f"{defaults.MAX_OUTPUT_ELEMENTS} elements (sides up to "
                        f"{defaults.MAX_SIDE}), which runtimes with 32-bit indexing reject")
    for h, w in (options.shape, options.verify_shape):
        if h < 8 or w < 8 or h % stride or w % stride:
            raise UserError(f"--shape {h}x{w}: need at least 8x8 and multiples of the head "
                            f"stride {stride}")


def trace(module: nn.Module, opset: int, size: tuple[int, int]) -> onnx.ModelProto:
    """Trace ``module`` at 1x3xHxW with symbolic H and W (TorchScript exporter: fast, any opset)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 3, *size),), buffer, dynamo=False, opset_version=opset,
            input_names=[defaults.INPUT_NAME], output_names=[defaults.OUTPUT_NAME],
            dynamic_axes={defaults.INPUT_NAME: {2: "height", 3: "width"},
                          defaults.OUTPUT_NAME: {2: "out_height", 3: "out_width"}},
            do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def verify(model: onnx.ModelProto, module: nn.Module, size: tuple[int, int], value_range: int,
           seed: int) -> float:
    """Max |ONNX Runtime - PyTorch| on one random 1x3xHxW input in ``0..value_range``."""
    rng = np.random.default_rng(seed)
    x = (rng.random((1, 3, *size)) * value_range).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    return max_abs_error(expected, run(model, x)[0])


def export_model(resolved: ResolvedModel, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export ``resolved`` to a verified fixed-shape ONNX graph (see module docstring)."""
    _check_options(resolved, options)
    value_range = graph_range(resolved, options.input_range)
    module: nn.Module = resolved.model.eval()
    if value_range != resolved.native_range:
        module = _RangeAdapter(module, resolved.native_range / value_range).eval()
    start = time.perf_counter()
    plain = simplify(trace(module, options.opset, defaults.TRACE_SHAPE))
    dynamic, passes = optimize_graph(plain, OptimizeOptions(
        fold_meanshift=options.optimize or options.fold_meanshift,
        fuse_upsampler=options.optimize, pixel_shuffle=options.pixel_shuffle))
    changed = any(p["sites"] for p in passes)
    if changed:
        dynamic = simplify(dynamic)
    error = verify(dynamic, module, options.verify_shape, value_range, options.seed)
    tolerance = options.tolerance * value_range
    if not error <= tolerance:
        raise VerificationError(f"exported graph differs from PyTorch by {error:.3g} (max abs, "
                                f"{options.verify_shape[0]}x{options.verify_shape[1]}) > "
                                f"tolerance {tolerance:.3g}; nothing written")
    fixed = simplify(dynamic, [1, 3, *options.shape])
    scale = resolved.config.scale
    expected_out = [1, 3, options.shape[0] * scale, options.shape[1] * scale]
    if output_shape(fixed) != expected_out:
        raise RuntimeError(f"fixed graph output {output_shape(fixed)} != {expected_out}")
    report = graph_report(fixed)
    costs = cost_totals(model_info(fixed))
    record = {
        "kind": "onnx-fp32",
        **resolved.describe(),
        "input_range": value_range,
        "export": {**asdict(options), "passes": passes,
                   "seconds": round(time.perf_counter() - start, 3)},
        "input_shape": input_shape(fixed),
        "output_shape": output_shape(fixed),
        "verification": {"shape": [1, 3, *options.verify_shape], "max_abs_error": error,
                         "tolerance": tolerance, "against": "pytorch", "seed": options.seed},
        "graph": {"ops": report["ops"], "max_rank": report["max_rank"]},
        "costs": costs,
        # the network as published (no graph passes): what the reference table counts
        "architecture": (cost_totals(model_info(plain, options.shape)) if changed else costs),
    }
    return ExportResult(fixed, dynamic, record)


def export(resolved: ResolvedModel, out: str | Path = defaults.FP32_ONNX,
           options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export and write ``out`` and its JSON sidecar atomically; return the result."""
    result = export_model(resolved, options)
    result.record = save_onnx(result.model, out, Record.new(**result.record))
    return result
