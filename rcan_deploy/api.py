"""The Python API behind every CLI command: each command is one function here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import defaults
from .record import Record, derive, read_record, save_onnx
from .errors import UserError, VerificationError
from .onnx_utils import graph_scale, input_shape, load_model, output_shape

# Whole-graph verification of a rewrite of a fixed-shape graph runs the graph at its own shape;
# above this many conv MACs (the SR4K graphs at 1080p need ~1.6e11) it is skipped and recorded.
VERIFY_MACS_LIMIT = 2e11


def export(out: str | Path = defaults.FP32_ONNX, *, source: str | None = None,
           variant: str | None = None, scale: int | None = None, weights: str | Path | None = None,
           random_weights: bool = False, param_key: str | None = None,
           shape: tuple[int, int] = defaults.SHAPE, opset: int = defaults.OPSET,
           pixel_shuffle: str = "keep", input_range: str = "native",
           fold_meanshift: bool = False, seed: int = 0) -> dict:
    """Build (or load) an RCAN network and write a verified fixed-shape ONNX graph + sidecar."""
    from .checkpoints import resolve_model
    from .exporter import ExportOptions
    from .exporter import export as export_to

    resolved = resolve_model(source, variant, scale, weights, random_weights, param_key, seed)
    options = ExportOptions(shape=tuple(shape), opset=opset, pixel_shuffle=pixel_shuffle,
                            input_range=input_range, fold_meanshift=fold_meanshift, seed=seed)
    return export_to(resolved, out, options).record


def rewrite(model_path: str | Path, out: str | Path, *, pixel_shuffle: str | None = None,
            fold_meanshift: bool = False, seed: int = 0) -> dict:
    """Apply graph passes to any ONNX file, verify the result against the original, write it."""
    import numpy as np

    from .costs import model_info
    from .onnx_utils import max_abs_error, run, simplify
    from .passes.meanshift import fold_meanshift as fold
    from .passes.pixel_shuffle import rewrite_pixel_shuffle

    if pixel_shuffle is None and not fold_meanshift:
        raise UserError("nothing to do: pass --pixel-shuffle FORM and/or --fold-meanshift")
    original = load_model(model_path)
    model, passes = original, {}
    if pixel_shuffle is not None:
        model, passes["pixel_shuffle"] = rewrite_pixel_shuffle(model, pixel_shuffle)
    if fold_meanshift:
        model, passes["fold_meanshift"] = fold(model)
    model = simplify(model)
    shape = input_shape(original)
    dynamic = not all(isinstance(d, int) and d > 0 for d in shape)
    if dynamic:
        shape = [1, 3, *defaults.VERIFY_SHAPE]
    macs = 0 if dynamic else model_info(original)["macs"]
    parent = read_record(model_path)
    verification: dict = {"shape": shape, "seed": seed}
    if macs > VERIFY_MACS_LIMIT:
        verification["skipped"] = f"{macs / 1e9:.0f} GMACs at the fixed shape > limit"
    else:
        value_range = (parent.input_range if parent else None) or 1
        x = (np.random.default_rng(seed).random(shape) * value_range).astype(np.float32)
        expected = run(original, x)[0]
        error = max_abs_error(expected, run(model, x)[0])
        tolerance = 1e-5 * max(1.0, float(np.max(np.abs(expected))))
        verification.update(max_abs_error=error, tolerance=tolerance, against=str(model_path))
        if not error <= tolerance:
            raise VerificationError(f"rewritten graph differs from {model_path} by {error:.3g} "
                                    f"> {tolerance:.3g}; nothing written")
    record = derive(model_path, parent.kind if parent else "onnx-fp32", parent)
    record.input_shape, record.output_shape = input_shape(model), output_shape(model)
    record.sections.update(rewrite={"passes": passes, "pixel_shuffle": pixel_shuffle,
                                    "fold_meanshift": fold_meanshift},
                           rewrite_verification=verification)
    return save_onnx(model, out, record)


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
    """Params and conv MACs (total and per layer) at the graph's shape, with reference rows."""
    from .costs import model_info, reference_rows

    result = model_info(load_model(model_path), shape)
    record = read_record(model_path) or Record("onnx-fp32")
    result["source"], result["variant"] = record.source, record.variant
    same_shape = result["input_shape"] == [1, 3, *defaults.SHAPE]
    rows = reference_rows(record.source, record.variant) if same_shape else []
    result["reference"] = [r for r in rows if record.source and r["scale"] == str(record.scale)]
    return result


def _graph_input_range(record: Record | None, override: int | None, model_path) -> int:
    if override is not None:
        if override not in (1, 255):
            raise UserError(f"--input-range {override}: expected 1 or 255")
        return override
    if record is None or record.input_range is None:
        raise UserError(f"{model_path}: no sidecar says its input range; pass --input-range 1|255")
    return record.input_range


def _heldout_crops(calib: str, scale: int, data_root, crop_size: int, seed: int, count: int):
    """LR/HR crop pairs not used for calibration: the held-out split of ``samples``, else other
    crop positions (seed + 1) of the same set."""
    import numpy as np

    from .data.crops import calibration_crops
    from .data.datasets import get_dataset
    from .data.io import to_uint8
    from .quant.sensitivity import EvalCrops

    if calib == "samples":
        dataset, crop_seed = get_dataset("samples", scale, split="heldout"), seed
    else:
        dataset, crop_seed = get_dataset(calib, scale, data_root), seed + 1
    crops = calibration_crops(dataset, count, crop_size, crop_seed)
    pairs = {pair.name: pair for pair in dataset}
    hr_images: dict[str, object] = {}
    hr = []
    for crop in crops.manifest["crops"]:
        if crop["image"] not in hr_images:
            hr_images[crop["image"]] = to_uint8(pairs[crop["image"]].load()[1])
        y, x, size = crop["y"] * scale, crop["x"] * scale, crop_size * scale
        hr.append(hr_images[crop["image"]][y:y + size, x:x + size])
    return EvalCrops(crops.array, np.stack(hr), scale), crops.manifest


def quantize(model_path: str | Path = defaults.FP32_ONNX, out: str | Path = defaults.INT8_ONNX,
             *, calib: str | None = None, data_root: str | Path | None = None,
             method: str = "max", calib_crops: int = 64, crop_size: int = 128, seed: int = 0,
             exclude: tuple[str, ...] = (), high_precision: str = "fp32",
             target: str = "tensorrt", sensitivity: bool = False, max_drop: float | None = None,
             heldout_crops: int = 16, input_range: int | None = None,
             progress: bool = True) -> dict:
    """INT8 PTQ of a fixed-shape graph on calibration crops; writes the QDQ graph + sidecar.

    With ``sensitivity`` (or ``max_drop``) a per-layer PSNR table is measured on held-out crops;
    ``max_drop`` keeps the most sensitive layers in higher precision until the drop fits.
    """
    from .data.crops import calibration_crops
    from .data.datasets import default_set_name, get_dataset
    from .quant.graph import (activation_scales, dynamic_copy, has_global_pooling,
                              weight_scale_ranges)
    from .quant.ptq import QuantizeOptions, quantize_model
    from .quant.sensitivity import fallback, layer_sensitivity, mean_psnr

    model = load_model(model_path)
    parent = read_record(model_path)
    value_range = _graph_input_range(parent, input_range, model_path)
    scale = graph_scale(model, parent, model_path)
    if max_drop is not None and max_drop < 0:
        raise UserError(f"--max-drop {max_drop}: expected a non-negative number of dB")
    calib = calib or default_set_name(scale, data_root)
    split = "train" if calib == "samples" else None
    dataset = get_dataset(calib, scale, data_root, split=split)
    crops = calibration_crops(dataset, calib_crops, crop_size, seed, progress=progress)
    options = QuantizeOptions(method=method, target=target, high_precision=high_precision,
                              exclude=tuple(exclude))
    calib_array = crops.array * value_range
    quantized, q_record = quantize_model(model, calib_array, options)
    eval_crops, eval_manifest = _heldout_crops(calib, scale, data_root, crop_size, seed,
                                               heldout_crops)
    report: dict = {}
    if sensitivity or max_drop is not None:
        report = layer_sensitivity(model, quantized, eval_crops, value_range, progress)
        if max_drop is not None:
            report["fallback"] = fallback(quantized, report, eval_crops, value_range, max_drop)
            kept = tuple(report["fallback"]["kept_float"])
            if kept:
                options = QuantizeOptions(method=method, target=target,
                                          high_precision=high_precision,
                                          exclude=tuple(exclude), keep_float=kept)
                quantized, q_record = quantize_model(model, calib_array, options)
    fp32_psnr = report.get("fp32_psnr", mean_psnr(dynamic_copy(model), eval_crops, value_range))
    int8_psnr = mean_psnr(dynamic_copy(quantized), eval_crops, value_range)
    scales = activation_scales(quantized)
    record = derive(model_path, "onnx-int8-qdq", parent)
    record.input_range, record.scale = value_range, scale
    record.input_shape, record.output_shape = input_shape(quantized), output_shape(quantized)
    record.sections.update({
        "calibration": {"set": dataset.describe(), "crops": crops.manifest["n_crops"],
                        "crop_size": crop_size, "seed": seed,
                        "crops_sha256": crops.manifest["sha256"],
                        "manifest": crops.manifest["crops"]},
        "quantization": q_record,
        "global_pooling": has_global_pooling(model),
        "scales": {"activations": scales,
                   "activation_summary": _summary(list(scales.values())),
                   "weights_per_channel_range": weight_scale_ranges(quantized)},
        "heldout": {"set": eval_manifest["dataset"], "crops": len(eval_crops.lr),
                    "fp32_psnr": fp32_psnr, "int8_psnr": int8_psnr,
                    "drop": fp32_psnr - int8_psnr,
                    "protocol": "standard (Y, border = scale) on LR/HR crop pairs"},
    })
    if report:
        record.sections["sensitivity"] = report
    return save_onnx(quantized, out, record)


def _summary(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {"count": 0}
    return {"count": len(values), "min": float(np.min(values)),
            "median": float(np.median(values)), "max": float(np.max(values))}


def upscale(model_path: str | Path, images: list[str | Path], out_dir: str | Path, *,
            runtime: str = "ort", overlap: int | None = None) -> list[dict]:
    """Super-resolve image files of any size with a fixed-shape graph (pad or tile as needed)."""
    from .tiling import upscale_files

    return upscale_files(model_path, images, out_dir, runtime=runtime, overlap=overlap)


def fetch(name: str, data_root: str | Path | None = None, *, lr_scales: tuple[int, ...] = (),
          progress: bool = True) -> Path:
    """Download, verify (size, sha256) and unpack a DIV2K set under ``data_root``."""
    from .data.fetch import fetch_div2k

    return fetch_div2k(name, data_root, progress=progress, lr_scales=tuple(lr_scales))


def train(out: str | Path, *, source: str = "official", variant: str = defaults.VARIANT,
          scale: int = defaults.SCALE, dataset: str = "samples", val_dataset: str | None = None,
          data_root: str | Path | None = None, weights: str | Path | None = None,
          resume: bool = False, progress: bool = True, **recipe) -> dict:
    """Train a registered variant on a data set; write the checkpoint and its model card
    (``out.json``: recipe, training time, held-out PSNR/SSIM against bicubic)."""
    from .archs import canonical_variant
    from .checkpoints import load_checkpoint
    from .data.datasets import get_dataset
    from .training import TrainOptions
    from .training import train as run_training

    variant = canonical_variant(variant)
    if val_dataset is None and dataset != "samples":
        raise UserError("--val-dataset is required unless --dataset samples (which has a "
                        "held-out split)")
    val_name = val_dataset or dataset
    train_set = get_dataset(dataset, scale, data_root,
                            split="train" if dataset == "samples" else None)
    val_set = get_dataset(val_name, scale, data_root,
                          split="heldout" if val_name == "samples" else None)
    init = None
    if weights is not None:
        init = load_checkpoint(weights, source, variant, scale).model
    return run_training(source, variant, scale, train_set, val_set, out, TrainOptions(**recipe),
                        init=init, init_weights=weights, resume=resume, progress=progress)
