"""Per-layer INT8 sensitivity on held-out crops, and greedy fallback to higher precision.

A layer's sensitivity is the PSNR (standard protocol: Y channel, border = scale) that the fully
quantized graph regains on held-out crops when only that layer reads float inputs, i.e. the part
of the INT8 drop attributable to it. ``fallback`` keeps the most sensitive layers in higher
precision, one at a time in that order, until the measured drop is within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from ..metrics import psnr
from ..backends.onnxruntime import OnnxRuntimeRunner
from .graph import dynamic_copy, float_layers, quantized_layers
from ..defaults import progress_off


@dataclass
class EvalCrops:
    """Held-out LR crops (N, 3, S, S) in 0..1 and their HR crops (N, S*scale, S*scale, 3) uint8."""

    lr: np.ndarray
    hr: np.ndarray
    scale: int


def mean_psnr(model: onnx.ModelProto, crops: EvalCrops, input_range: int) -> float:
    """Mean standard-protocol PSNR of ``model`` (any input size) over the crops."""
    values = []
    with OnnxRuntimeRunner(model) as runner:
        for lr, hr in zip(crops.lr, crops.hr):
            sr = runner.infer(lr[None] * input_range)[0] / input_range
            values.append(psnr(np.transpose(sr, (1, 2, 0)) * 255.0, hr, crop_border=crops.scale))
    return float(np.mean(values))


def layer_sensitivity(fp32: onnx.ModelProto, qdq: onnx.ModelProto, crops: EvalCrops,
                      input_range: int, progress: bool | None = None) -> dict:
    """PSNR of the fp32 and INT8 graphs and, per quantized layer, the PSNR regained when that
    layer alone runs in float; layers sorted most sensitive first."""
    fp32_dyn, qdq_dyn = dynamic_copy(fp32), dynamic_copy(qdq)
    fp32_psnr = mean_psnr(fp32_dyn, crops, input_range)
    int8_psnr = mean_psnr(qdq_dyn, crops, input_range)
    layers = []
    for name in tqdm(quantized_layers(qdq_dyn), desc="sensitivity", unit="layer",
                     disable=progress_off(progress), leave=False):
        regained = mean_psnr(float_layers(qdq_dyn, [name]), crops, input_range) - int8_psnr
        layers.append({"layer": name, "psnr_drop_attributed": regained})
    layers.sort(key=lambda row: row["psnr_drop_attributed"], reverse=True)
    return {"fp32_psnr": fp32_psnr, "int8_psnr": int8_psnr, "drop": fp32_psnr - int8_psnr,
            "crops": int(len(crops.lr)), "layers": layers}


def fallback(qdq: onnx.ModelProto, table: dict, crops: EvalCrops, input_range: int,
             max_drop: float) -> dict:
    """Greedily keep the most sensitive layers in float until the drop is <= ``max_drop`` dB."""
    qdq_dyn = dynamic_copy(qdq)
    kept: list[str] = []
    drop = table["drop"]
    steps = []
    for row in table["layers"]:
        if drop <= max_drop:
            break
        kept.append(row["layer"])
        drop = table["fp32_psnr"] - mean_psnr(float_layers(qdq_dyn, kept), crops, input_range)
        steps.append({"kept": row["layer"], "drop": drop})
    return {"max_drop": max_drop, "kept_float": kept, "steps": steps, "met": drop <= max_drop}
