"""``rcan-deploy quantize``: calibration crops -> INT8 QDQ graph -> per-layer precision chosen on
whole selection images (and optional QAT fine-tuning) -> the QDQ graph and its record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import check_destination
from ..errors import UserError, short_reason
from ..graph_analysis import sr_graph
from ..onnx_utils import input_shape, output_shape
from ..record import Record, derive, read_record, save_onnx
from . import precision
from . import selection as selection_module
from .ptq import QuantizeOptions, quantize_model


def quantize_file(model_path: str | Path, out: str | Path, options: QuantizeOptions,
                  progress: bool | None = None) -> dict:
    """Quantize the fixed-shape graph ``model_path`` (see :mod:`rcan_deploy.quant.ptq`), choose
    per-layer precision on whole selection images on the target's runtime
    (:mod:`rcan_deploy.quant.selection`), write ``out`` and its record; return the record."""
    from ..data.crops import calibration_crops
    from ..data.datasets import default_set_name, get_dataset, split_for
    from .graph import activation_scales, has_global_pooling, weight_scale_ranges

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
    # the images that choose the precision, never those that calibrate
    select_split = split_for(name, "selection") or split_for(name, "heldout")
    selection = get_dataset(name, scale, options.data_root, split=select_split)
    crops = calibration_crops(dataset, options.calib_crops, options.crop_size, options.seed,
                              progress=progress)
    quantized, q_record = quantize_model(model, crops.array * value_range, options)
    plan: dict[str, str] = {}
    if options.target != "ort":
        quantized, q_record["float_stream_inputs"] = precision.float_stream(quantized)
        macs = precision.layer_macs(quantized)
        plan = {layer: "int8x2" for layer in precision.small_layers(macs, *SMALL_LAYERS)
                if layer in q_record["quantized_layers"]}
    runtime, warning = selection_runtime(options.target)
    budget = selection_module.Budget(options.max_drop, options.max_worst_drop,
                                     options.min_int8_share)
    search = judge = qat = None
    if options.selection_images != 0:
        images = selection_module.FrameImages.load(selection, options.selection_images)
        judge = selection_module.FrameJudge(model, images, runtime, value_range, progress)
        if options.mixed_precision and options.target != "ort":
            plan, search = selection_module.search_precision(quantized, judge, budget, plan,
                                                             progress)
    final = precision.apply_plan(quantized, plan) if plan else quantized
    if options.qat_steps:
        before = selection_module.summarize(judge.drops(final)) if judge else None
        final, qat = qat_finetune(model, final, dataset, value_range, options, progress)
        if before:
            qat["before"] = {k: before[k] for k in ("mean_drop", "worst_drop", "worst_image")}
    if judge is None:
        heldout = {"set": selection.describe(), "runtime": runtime,
                   "not_measured": "--selection-images 0"}
    else:
        heldout = _frame_report(final, model, judge, budget, value_range, warning)
    macs = precision.int8_macs(final)
    q_record.update(plan=plan, plan_summary=precision.describe_plan(plan),
                    int8_macs_share=macs["int8_share"], macs={"total": macs["total"],
                                                             "int8": macs["int8"]})
    scales = activation_scales(final)
    record = derive(model_path, "onnx-int8-qdq", parent)
    record.input_range, record.scale = value_range, scale
    record.input_shape, record.output_shape = input_shape(final), output_shape(final)
    record.sections.update({
        "calibration": {"set": dataset.describe(), "crops": crops.manifest["n_crops"],
                        "crop_size": options.crop_size, "seed": options.seed,
                        "crops_sha256": crops.manifest["sha256"],
                        "manifest": crops.manifest["crops"]},
        "quantization": q_record,
        "global_pooling": has_global_pooling(model),
        "scales": {"activations": scales,
                   "activation_summary": _summary(list(scales.values())),
                   "weights_per_channel_range": weight_scale_ranges(final)},
        "heldout": heldout,
    })
    if judge is not None:
        record.sections["latency"] = _latency(final, model, runtime)
    if search is not None:
        record.sections["mixed_precision"] = search
    if qat is not None:
        if judge is not None:
            qat["after"] = {k: heldout[k] for k in ("mean_drop", "worst_drop", "worst_image")}
        record.sections["qat"] = qat
    return save_onnx(final, out, record)


def qat_finetune(fp32, quantized, dataset, value_range: int, options: QuantizeOptions,
                 progress: bool | None):
    """Quantization-aware fine-tuning of the quantized graph on the calibration images
    (:mod:`rcan_deploy.quant.qat`); returns the graph and its record."""
    from ..data.io import to_uint8
    from ..graph_analysis import receptive_field
    from .qat import MAX_IMAGES, finetune

    pairs = list(dataset)[::-(-len(dataset) // MAX_IMAGES)]  # evenly spaced, in memory as uint8
    images = [to_uint8(pair.load_lr()) for pair in pairs]
    tuned, record = finetune(quantized, fp32, images, value_range, options.qat(),
                             stride=receptive_field(fp32).stride, progress=progress)
    record["train_set"] = {**dataset.describe(), "images_used": [pair.name for pair in pairs]}
    return tuned, record


# The smallest layers start as int8x2 (nearly float, still INT8): each under 1 % of the conv MACs,
# together at most 2.5 % (so a network of many equal layers does not double them all).
SMALL_LAYERS = (0.01, 0.025)


def selection_runtime(target: str) -> tuple[str, str | None]:
    """The runtime that measures a graph for ``target``, and a warning when it is a stand-in."""
    if target == "openvino":
        return "openvino", None
    if target == "ort":
        return "ort", None
    return "ort", ("not measured on the target runtime: full-frame figures from ONNX Runtime (the "
                   "QDQ semantics TensorRT follows); bench the engine (rcan-deploy build, then "
                   "rcan-deploy bench ENGINE.plan) for TensorRT's own")


def _frame_report(final, fp32, judge, budget, value_range: int, warning: str | None) -> dict:
    """Per-image PSNR of the final graph on the target's runtime and on ONNX Runtime (the QDQ
    reference), on whole selection images."""
    drops = judge.drops(final)
    report = {"set": judge.images.description, "runtime": judge.runtime,
              "protocol": "standard (Y, border = scale) on whole images",
              "fp32_psnr": judge.fp32_psnr, **selection_module.summarize(drops),
              "within_budget": budget.excess(drops) <= 1,
              "measured_on_target": warning is None}
    if warning:
        report["warning"] = warning
    if judge.runtime != "ort":
        reference = selection_module.FrameJudge(fp32, judge.images, "ort", value_range,
                                                judge.progress)
        ort_drops = reference.drops(final)
        report["reference_runtime"] = {
            "runtime": "ort", **selection_module.summarize(ort_drops),
            "max_deviation_db": max(abs(drops[n] - ort_drops[n] - (judge.fp32_psnr[n] -
                                                                   reference.fp32_psnr[n]))
                                    for n in drops)}
    return report


def _latency(final, fp32, runtime: str, repeat: int = 3) -> dict:
    """Median seconds per frame at the graph's shape on ``runtime``, INT8 and FP32."""
    from ..backends import get_runner

    x = np.random.default_rng(0).random(input_shape(final)).astype(np.float32)
    result = {"runtime": runtime, "shape": input_shape(final)}
    for label, graph in (("int8", final), ("fp32", fp32)):
        with get_runner(runtime, graph) as runner:
            result[f"{label}_median_s"] = float(np.median(runner.time(x, 1, repeat)))
    result["speedup"] = result["fp32_median_s"] / result["int8_median_s"]
    return result


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


def _summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "min": float(np.min(values)),
            "median": float(np.median(values)), "max": float(np.max(values))}
