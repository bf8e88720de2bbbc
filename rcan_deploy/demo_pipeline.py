"""The one-command demo: shipped SR4K RCAN x2 -> optimized 1080p ONNX -> INT8 (per-layer precision
chosen on whole images on OpenVINO within the documented recipe's budget, ``quantize --max-drop
0.03 --max-worst-drop 0.1``) -> bench INT8 vs FP32 on held-out photographs, with runtime
conformance -> report -> gate.

Images: the ``photos`` set when it is installed (``rcan-deploy data fetch photos``; CI does),
else the ``samples`` that ship inside scikit-image, so the demo never downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import api, defaults
from .benchmark import bench, gate
from .data.datasets import set_available, split_for

VARIANT = "rcan-sr4k"
RUNTIME = "openvino"  # int8 kernels on CPU
DATASETS = ("photos", "samples")  # the first one installed
BUDGET = {"max_drop": 0.03, "max_worst_drop": 0.1}  # the recipe for a 0.1 / 0.3 dB gate


def demo_dataset(data_root=None) -> str:
    """``photos`` when installed under the data root, else ``samples``."""
    return next(name for name in DATASETS if name == DATASETS[-1]
                or set_available(name, defaults.SCALE, data_root))


def demo(out_dir: str | Path = "rcan_deploy_demo", *, runtime: str = RUNTIME,
         progress: bool | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run the whole pipeline on the bundled model and images; return paths, bench and gate."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8, report_dir = out / defaults.FP32_ONNX, out / defaults.INT8_ONNX, out / "report"
    dataset = demo_dataset()
    selection = split_for(dataset, "selection") or split_for(dataset, "heldout")
    heldout = split_for(dataset, "heldout")
    echo(f"[1/4] export shipped {VARIANT} x2 (official layout) at 1x3x1080x1920, optimized "
         f"(exact upsampler fusion) -> {fp32}")
    api.export(fp32, source="official", variant=VARIANT, scale=defaults.SCALE)
    echo(f"[2/4] INT8 for {runtime}: calibrate on {dataset} crops, choose per-layer precision on "
         f"whole {dataset} {selection} images within {BUDGET['max_drop']} dB mean, "
         f"{BUDGET['max_worst_drop']} dB worst -> {int8}")
    target = "openvino" if runtime == "openvino" else "ort"
    quantized = api.quantize(fp32, int8, dataset=dataset, target=target, progress=progress,
                             **BUDGET)
    echo(f"[3/4] bench INT8 vs FP32 on the held-out {dataset} {heldout} images ({runtime}, "
         f"conformance against ONNX Runtime) -> {report_dir}")
    result = bench(model=int8, runtime=runtime, reference=fp32, dataset=dataset,
                   protocol="both", out=report_dir, progress=progress)
    echo(f"[4/4] gate {report_dir / 'report.json'}")
    verdict = gate(report_dir / "report.json")
    return {"fp32": fp32, "int8": int8, "report": report_dir, "dataset": dataset,
            "quantize": quantized, "bench": result, "gate": verdict}
