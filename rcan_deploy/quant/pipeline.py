"""``rcan-deploy quantize``: calibration crops -> INT8 QDQ graph -> held-out check (and per-layer
sensitivity, fallback) -> the QDQ graph and its record, published together."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..artifacts import check_destination
from ..errors import UserError, short_reason
from ..graph_analysis import sr_graph
from ..onnx_utils import input_shape, output_shape
from ..record import Record, derive, read_record, save_onnx
from . import sensitivity
from .ptq import QuantizeOptions, quantize_model


def quantize_file(model_path: str | Path, out: str | Path, options: QuantizeOptions,
                  progress: bool | None = None) -> dict:
    """Quantize the fixed-shape graph ``model_path`` (see :mod:`rcan_deploy.quant.ptq`), write
    ``out`` and its record; return the record."""
    from ..data.crops import calibration_crops
    from ..data.datasets import default_set_name, get_dataset, split_for
    from .graph import activation_scales, dynamic_copy, has_global_pooling, weight_scale_ranges

    options.check()
    check_destination(out, [model_path])
    graph = sr_graph(model_path)
    if graph.quantized:
        raise UserError(f"{model_path}: already quantized (it has Q/DQ or integer ops); quantize "
                        "its FP32 parent")
    model = _opset_for_quantization(graph.model, model_path)
    parent = read_record(model_path)
    value_range = _input_range(parent, options.input_range, model_path)
    scale = graph.check_scale(parent.scale if parent else None,
                              f"{model_path}.json" if parent and parent.scale else "--scale")
    name = options.dataset or default_set_name(scale, options.data_root)
    dataset = get_dataset(name, scale, options.data_root,
                          split=split_for(name, "calibration"))
    crops = calibration_crops(dataset, options.calib_crops, options.crop_size, options.seed,
                              progress=progress)
    calib = crops.array * value_range
    quantized, q_record = quantize_model(model, calib, options)
    eval_crops, eval_manifest = heldout_crops(name, scale, options)
    report: dict = {}
    if options.sensitivity or options.max_drop is not None:
        report = sensitivity.layer_sensitivity(model, quantized, eval_crops, value_range, progress)
        if options.max_drop is not None:
            report["fallback"] = sensitivity.fallback(quantized, report, eval_crops, value_range,
                                                      options.max_drop)
            kept = tuple(report["fallback"]["kept_float"])
            if kept:
                quantized, q_record = quantize_model(model, calib, replace(options,
                                                                           keep_float=kept))
    fp32_psnr = report.get("fp32_psnr")
    if fp32_psnr is None:
        fp32_psnr = sensitivity.mean_psnr(dynamic_copy(model), eval_crops, value_range)
    qat = None
    if options.qat_steps:
        quantized, qat = _finetune(model, quantized, dataset, eval_crops, value_range, fp32_psnr,
                                   options, progress)
    int8_psnr = sensitivity.mean_psnr(dynamic_copy(quantized), eval_crops, value_range)
    scales = activation_scales(quantized)
    record = derive(model_path, "onnx-int8-qdq", parent)
    record.input_range, record.scale = value_range, scale
    record.input_shape, record.output_shape = input_shape(quantized), output_shape(quantized)
    record.sections.update({
        "calibration": {"set": dataset.describe(), "crops": crops.manifest["n_crops"],
                        "crop_size": options.crop_size, "seed": options.seed,
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
    if qat is not None:
        qat["heldout_after"] = {"int8_psnr": int8_psnr, "drop": fp32_psnr - int8_psnr}
        record.sections["qat"] = qat
    return save_onnx(quantized, out, record)


def _finetune(model, quantized, dataset, eval_crops, value_range: int, fp32_psnr: float,
              options: QuantizeOptions, progress: bool | None):
    """Quantization-aware fine-tuning of the PTQ graph on the calibration images
    (:mod:`rcan_deploy.quant.qat`); returns the graph and its record with the held-out figures
    before."""
    from ..data.io import to_uint8
    from ..graph_analysis import receptive_field
    from .graph import dynamic_copy
    from .qat import MAX_IMAGES, finetune

    before = sensitivity.mean_psnr(dynamic_copy(quantized), eval_crops, value_range)
    pairs = list(dataset)[::-(-len(dataset) // MAX_IMAGES)]  # evenly spaced, in memory as uint8
    images = [to_uint8(pair.load_lr()) for pair in pairs]
    tuned, record = finetune(quantized, model, images, value_range, options.qat(),
                             stride=receptive_field(model).stride, progress=progress)
    record["train_set"] = {**dataset.describe(), "images_used": [pair.name for pair in pairs]}
    record["heldout_before"] = {"int8_psnr": before, "drop": fp32_psnr - before}
    return tuned, record


MIN_OPSET = 13  # per-channel QuantizeLinear


def _opset_for_quantization(model, model_path):
    """The graph converted to opset 13 when its opset is older (per-channel Q/DQ needs 13)."""
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ConvertError with C++ text
        raise UserError(f"{model_path}: opset {opset} graph; converting it to opset {MIN_OPSET} "
                        f"for quantization failed ({short_reason(exc)}); re-export it with "
                        f"--opset {MIN_OPSET}") from None


def _input_range(record: Record | None, flag: int | None, model_path) -> int:
    """The graph's input range: its record's, else ``--input-range``; both must agree."""
    recorded = record.input_range if record else None
    if flag is not None and recorded is not None and flag != recorded:
        raise UserError(f"--input-range {flag}, but the sidecar of {model_path} records "
                        f"{recorded}")
    if flag is None and recorded is None:
        raise UserError(f"{model_path}: no sidecar says its input range; pass --input-range 1|255")
    return flag or recorded


def heldout_crops(name: str, scale: int, options: QuantizeOptions):
    """LR/HR crop pairs not used for calibration: the held-out split of a set that has one
    (``samples``, ``photos``), else other crop positions (seed + 1) of the same set."""
    from ..data.crops import calibration_crops
    from ..data.datasets import get_dataset, split_for
    from ..data.io import to_uint8

    heldout = split_for(name, "heldout")
    if heldout is not None:
        dataset = get_dataset(name, scale, options.data_root, split=heldout)
        crop_seed = options.seed
    else:
        dataset, crop_seed = get_dataset(name, scale, options.data_root), options.seed + 1
    crops = calibration_crops(dataset, options.heldout_crops, options.crop_size, crop_seed)
    pairs = {pair.name: pair for pair in dataset}
    hr_images: dict[str, np.ndarray] = {}
    hr = []
    size = options.crop_size * scale
    for crop in crops.manifest["crops"]:
        if crop["image"] not in hr_images:
            hr_images[crop["image"]] = to_uint8(pairs[crop["image"]].load()[1])
        y, x = crop["y"] * scale, crop["x"] * scale
        hr.append(hr_images[crop["image"]][y:y + size, x:x + size])
    return sensitivity.EvalCrops(crops.array, np.stack(hr), scale), crops.manifest


def _summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "min": float(np.min(values)),
            "median": float(np.median(values)), "max": float(np.max(values))}
