"""INT8 accuracy per method on whole held-out photographs, on OpenVINO, in one run.

The shipped SR4K RCAN x2 (official layout), default export (optimized, 1x3x1080x1920). Every
method calibrates on crops of the ``photos`` calib split; the figures are measured on whole
images of its ``test`` split, which neither calibration nor precision selection sees: mean and
worst-image PSNR drop against the FP32 graph (standard protocol, OpenVINO for both), the INT8
share of the executed conv MACs, the time to make the INT8 graph, and the 1080p latency on
OpenVINO (median of 5, same run).

Rows:
- PTQ max as nvidia-modelopt places Q/DQ (the residual stream itself is quantized);
- PTQ max / percentile / entropy / mse with the residual stream in float, every conv INT8;
- mixed precision: ``rcan-deploy quantize`` defaults (max, float stream, per-layer int8 /
  int8x2 / float chosen on whole images of the val split within 0.05 dB mean, 0.2 dB worst);
- mixed precision + QAT: that graph, then fine-tuned as ``quantize --qat N`` does (learned
  activation scales);
- the defaults with 7-bit weights, without and with QAT, run by OpenVINO as on a CPU without
  VNNI (oneDNN limited to AVX-512 without VNNI), what ``--weight-bits auto`` gives on CPUs whose
  int8 sums saturate.

The naive FP32 graph (``export --no-optimize``) is timed too: the last column is each graph's
1080p latency over its latency, in the same run.

Usage: ``python benchmarks/int8_accuracy.py [--qat-steps N] [--out benchmarks/int8_accuracy.md]``
(needs the photos set: ``rcan-deploy data fetch photos``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import rcan_deploy
from rcan_deploy.backends import get_runner
from rcan_deploy.cpu import detect_cpu
from rcan_deploy.data import get_dataset
from rcan_deploy.data.crops import calibration_crops
from rcan_deploy.quant.precision import float_stream, int8_macs
from rcan_deploy.quant.pipeline import qat_finetune
from rcan_deploy.quant.ptq import QuantizeOptions, quantize_model
from rcan_deploy.quant.selection import FrameImages, FrameJudge, summarize

NO_VNNI = "avx512_core"


def latency(model, repeat: int = 5) -> float:
    x = np.random.default_rng(0).random((1, 3, 1080, 1920)).astype(np.float32) * 255
    with get_runner("openvino", model) as runner:
        return float(np.median(runner.time(x, 1, repeat)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qat-steps", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("int8_accuracy.md")))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="int8-accuracy-"))
    fp32_path, naive_path = work / "rcan.onnx", work / "rcan_naive.onnx"
    rcan_deploy.export(fp32_path, source="official", variant="rcan-sr4k")
    rcan_deploy.export(naive_path, source="official", variant="rcan-sr4k", optimize=False)
    fp32 = onnx.load(str(fp32_path))
    test = FrameImages.load(get_dataset("photos", 2, split="test"))
    judge = FrameJudge(fp32, test, "openvino", 255)
    calib = get_dataset("photos", 2, split="calib")
    crops = calibration_crops(calib, 64, 128, 0).array * 255
    rows = [{"method": "FP32, naive graph (--no-optimize)", "model": onnx.load(str(naive_path)),
             "seconds": None},
            {"method": "FP32 (optimized graph)", "model": fp32, "seconds": None}]

    for method, stream in (("max", False), ("max", True), ("percentile", True),
                           ("entropy", True), ("mse", True)):
        start = time.perf_counter()
        model, _ = quantize_model(fp32, crops, QuantizeOptions(method=method))
        if stream:
            model, _ = float_stream(model)
        label = (f"PTQ {method}, " + ("float residual stream" if stream else
                                       "modelopt placement (stream INT8)"))
        rows.append({"method": label, "model": model, "seconds": time.perf_counter() - start})

    def quantized(name: str, **options) -> dict:
        out = work / f"{name}.onnx"
        start = time.perf_counter()
        record = rcan_deploy.quantize(fp32_path, out, dataset="photos", progress=False, **options)
        return {"model": onnx.load(str(out)), "seconds": time.perf_counter() - start,
                "record": record}

    mixed = {"method": "mixed precision (quantize defaults)", **quantized("mixed")}
    rows.append(mixed)
    start = time.perf_counter()
    options = QuantizeOptions(qat_steps=args.qat_steps)
    tuned, _ = qat_finetune(fp32, mixed["model"], calib, 255, options, progress=False)
    rows.append({"method": f"mixed precision + QAT {args.qat_steps} steps (--qat "
                           f"{args.qat_steps})", "model": tuned,
                 "seconds": mixed["seconds"] + time.perf_counter() - start})
    os.environ["RCAN_DEPLOY_OPENVINO_ISA"] = NO_VNNI
    seven = quantized("seven", weight_bits="7")
    seven_judge = FrameJudge(fp32, test, "openvino", 255)
    rows.append({"method": "mixed precision, 7-bit weights, OpenVINO without VNNI", **seven,
                 "judge": seven_judge, "isa": NO_VNNI})
    start = time.perf_counter()
    seven_tuned, _ = qat_finetune(fp32, seven["model"], calib, 255, options, progress=False)
    rows.append({"method": f"the same + QAT {args.qat_steps} steps, OpenVINO without VNNI",
                 "model": seven_tuned, "judge": seven_judge, "isa": NO_VNNI,
                 "seconds": seven["seconds"] + time.perf_counter() - start})
    del os.environ["RCAN_DEPLOY_OPENVINO_ISA"]

    cpu = detect_cpu()
    lines = ["# INT8 accuracy per method (`python benchmarks/int8_accuracy.py`)", "",
             f"Shipped SR4K RCAN x2, official layout, default export (optimized) at 1x3x1080x1920; "
             f"calibration on 64 crops of 128 px of the photos calib split; figures on whole "
             f"images of the photos test split ({len(test.names)} images, never used for "
             f"calibration or selection), standard protocol (Y, border 2), OpenVINO; drops "
             f"against the FP32 graph on the same runtime. CPU: {cpu.model or platform.machine()} "
             f"({cpu.reason}). One run, "
             f"{time.strftime('%Y-%m-%d')}; latencies are medians of 5 at 1080p in this run.",
             "",
             "| method | mean drop (dB) | worst drop (dB) | worst image | INT8 share of conv "
             "MACs | executed GMACs | time to make (s) | 1080p latency (ms) | vs naive FP32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    naive_seconds = None
    for row in rows:
        model = row["model"]
        macs = int8_macs(model)
        if row["seconds"] is None:
            mean = worst = None
            image = "-"
        else:
            runner_judge = row.get("judge", judge)
            if row.get("isa"):
                os.environ["RCAN_DEPLOY_OPENVINO_ISA"] = row["isa"]
            stats = summarize(runner_judge.drops(model))
            mean, worst, image = stats["mean_drop"], stats["worst_drop"], stats["worst_image"]
        seconds = latency(model)
        naive_seconds = naive_seconds or seconds
        os.environ.pop("RCAN_DEPLOY_OPENVINO_ISA", None)
        made = "-" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(
            f"| {row['method']} | {'-' if mean is None else f'{mean:.3f}'} | "
            f"{'-' if worst is None else f'{worst:.3f}'} | {image} | "
            f"{macs['int8_share']:.1%} | {macs['total'] / 1e9:.1f} | {made} | "
            f"{seconds * 1e3:.0f} | {seconds / naive_seconds:.2f}x |")
        print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", "Per image (OpenVINO, this CPU), PSNR drop in dB:", "",
              "| image | FP32 PSNR (dB) | mixed precision (defaults) | + QAT (--qat "
              f"{args.qat_steps}) |", "|---|---|---|---|"]
    tuned_drops = summarize(judge.drops(tuned))["images"]
    for name, drop in sorted(summarize(judge.drops(mixed["model"]))["images"].items(),
                             key=lambda item: -item[1]):
        lines.append(f"| {name} | {judge.fp32_psnr[name]:.3f} | {drop:.3f} | "
                     f"{tuned_drops[name]:.3f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
