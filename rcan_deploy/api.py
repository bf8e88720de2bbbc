"""The Python API behind every CLI command: one short function per command.

Options come as the library's option classes (``ExportOptions``, ``RewriteOptions``,
``QuantizeOptions``, ...) or as keyword arguments naming their fields, which are applied to the
defaults (an unknown name is a TypeError, never silently ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import defaults
from .onnx_utils import load_model
from .record import Record, read_record


def _options(values: dict[str, Any], *objects):
    """Copies of the option ``objects`` with each of ``values`` applied to every object that has
    a field of that name."""
    used: set[str] = set()
    result = []
    for obj in objects:
        names = {f.name for f in fields(obj)}
        mine = {k: v for k, v in values.items() if k in names}
        used.update(mine)
        result.append(replace(obj, **mine))
    unknown = sorted(set(values) - used)
    if unknown:
        raise TypeError(f"unexpected option(s): {', '.join(unknown)}")
    return result


def export(out: str | Path = defaults.FP32_ONNX, spec=None, options=None, **values) -> dict:
    """Build (or load) an RCAN network (:class:`~rcan_deploy.checkpoints.ModelSpec`) and write a
    verified fixed-shape ONNX graph (:class:`~rcan_deploy.exporter.ExportOptions`) + record."""
    from .artifacts import check_destination
    from .checkpoints import ModelSpec
    from .exporter import ExportOptions
    from .exporter import export as export_to

    spec, options = _options(values, spec or ModelSpec(), options or ExportOptions())
    check_destination(out, [spec.weights])
    return export_to(spec.resolve(), out, replace(options, shape=tuple(options.shape))).record


def optimize(model_path: str | Path, out: str | Path, options=None, **values) -> dict:
    """Optimize any ONNX SR graph (:class:`~rcan_deploy.passes.optimize.OptimizeOptions`:
    MeanShift folding, exact upsampler fusion, pixel-shuffle form), verify it against the input
    graph at a small size, write it and its record."""
    from .passes.optimize import OptimizeOptions, optimize_file

    (options,) = _options(values, options or OptimizeOptions())
    return optimize_file(model_path, out, options)


def rewrite(model_path: str | Path, out: str | Path, options=None, **values) -> dict:
    """Apply graph passes (:class:`~rcan_deploy.passes.rewrite.RewriteOptions`) to any ONNX
    file, verify the result against the original, write it and its record."""
    from .passes.rewrite import RewriteOptions, rewrite_file

    (options,) = _options(values, options or RewriteOptions())
    return rewrite_file(model_path, out, options)


@dataclass
class CheckResult:
    """Ops and largest rank of a graph and the limits it breaks; truthy when it passes."""

    ops: dict
    max_rank: int
    max_rank_tensor: str | None
    violations: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.violations


def check(model_path: str | Path, *, max_rank: int | None = None,
          forbid_ops: tuple[str, ...] | list[str] = ()) -> CheckResult:
    """Report ops and largest tensor rank; list what breaks ``max_rank``/``forbid_ops``."""
    from .passes.check import check_graph, graph_report

    model = load_model(model_path)
    report = graph_report(model)
    violations = check_graph(model, max_rank=max_rank, forbid_ops=forbid_ops)
    return CheckResult(report["ops"], report["max_rank"], report["max_rank_tensor"], violations)


def info(model_path: str | Path, *, shape: tuple[int, int] | None = None) -> dict:
    """Params and conv MACs (total and per layer) that the graph executes at its shape, and, for
    an optimized graph, the architecture's own figures (from the record), which are what the
    reference table counts; with the matching reference rows."""
    from .costs import architecture_costs, model_info, reference_rows
    from .errors import UserError
    from .graph_analysis import receptive_field
    from .onnx_utils import input_shape

    model = load_model(model_path)
    if shape is not None:
        fixed = input_shape(model)[2:]
        if all(isinstance(d, int) and d > 0 for d in fixed):
            if tuple(fixed) != tuple(shape):
                raise UserError(f"--shape {shape[0]}x{shape[1]}: {model_path} has a fixed input "
                                f"of {fixed[0]}x{fixed[1]}; --shape is for graphs with a dynamic "
                                "input")
            shape = None
        else:
            stride = receptive_field(model).stride
            if shape[0] % stride or shape[1] % stride:
                raise UserError(f"--shape {shape[0]}x{shape[1]}: the graph downsamples by "
                                f"{stride}, so both sides must be multiples of {stride}")
    result = model_info(model, shape)
    record = read_record(model_path) or Record("onnx-fp32")
    result["source"], result["variant"] = record.source, record.variant
    same_shape = result["input_shape"] == [1, 3, *defaults.SHAPE]
    result["architecture"] = architecture_costs(result, record.sections.get("architecture"))
    rows = reference_rows(record.source, record.variant) if same_shape else []
    result["reference"] = [r for r in rows if record.source and r["scale"] == str(record.scale)]
    return result


def quantize(model_path: str | Path = defaults.FP32_ONNX, out: str | Path = defaults.INT8_ONNX,
             options=None, *, progress: bool | None = None, **values) -> dict:
    """INT8 PTQ of a fixed-shape graph (:class:`~rcan_deploy.quant.ptq.QuantizeOptions`);
    writes the QDQ graph and its record (see :mod:`rcan_deploy.quant.pipeline`)."""
    from .quant.pipeline import quantize_file
    from .quant.ptq import QuantizeOptions

    (options,) = _options(values, options or QuantizeOptions())
    return quantize_file(model_path, out, options, progress=progress)


def upscale(model_path: str | Path, images: list[str | Path], out_dir: str | Path, *,
            runtime: str = "ort", overlap: int | None = None) -> list[dict]:
    """Super-resolve image files of any size with a fixed-shape graph (pad or tile as needed)."""
    from .upscaling import upscale_files

    return upscale_files(model_path, images, out_dir, runtime=runtime, overlap=overlap)


def fetch(name: str, data_root: str | Path | None = None, *, lr_scales: tuple[int, ...] = (),
          mirror: str | None = None, progress: bool | None = None) -> Path:
    """Download, verify (size, sha256) and install a DIV2K set or ``photos`` under ``data_root``.

    ``lr_scales`` applies to DIV2K, ``mirror`` (a Debian archive root) to ``photos``.
    """
    from .data.fetch import fetch_div2k, fetch_photos
    from .errors import UserError

    if name == "photos":
        if lr_scales:
            raise UserError("--lr-scale applies to the DIV2K sets only (photos has HR images; "
                            "LR images are made with MATLAB bicubic)")
        return fetch_photos(data_root, mirror, progress=progress)
    if mirror is not None:
        raise UserError("--mirror applies to the photos set only (a Debian archive root)")
    return fetch_div2k(name, data_root, progress=progress, lr_scales=tuple(lr_scales))


def train(out: str | Path, options=None, job=None, *, progress: bool | None = None,
          **values) -> dict:
    """Train a registered variant (:class:`~rcan_deploy.training.TrainJob`, recipe
    :class:`~rcan_deploy.training.TrainOptions`); write the checkpoint and its model card
    (recipe, training time, held-out PSNR/SSIM vs bicubic)."""
    from .training import TrainJob, TrainOptions, train_files

    options, job = _options(values, options or TrainOptions(), job or TrainJob())
    return train_files(out, options, job, progress=progress)
