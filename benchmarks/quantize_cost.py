"""Cost of `rcan-deploy quantize` and the speed it buys, for the SR4K RCAN graph at 1080x1920.

1. Wall time and peak RSS (one fresh process each, wait4) of rcan-deploy's quantize (64 crops of
   128x128 from `samples`, calibrated through a dynamic-shape copy) against ONNX Runtime's
   `quantize_static` calibrating on full 1080x1920 frames, in the same run.
2. 1080p latency (median of --repeat runs after one warm-up) of the fp32 graph and the INT8 QDQ
   graphs (tensorrt target: symmetric int8; ort target: uint8 activations), with DepthToSpace
   kept and rewritten as a rank-4 ConvTranspose, on ONNX Runtime and OpenVINO, with ratios
   against fp32 (same form, same runtime).

The model is the shipped SR4K RCAN x2 checkpoint (models/rcan-sr4k_x2.pt).

    python benchmarks/quantize_cost.py [--frames 1,4] [--repeat 3] [--out quantize_cost.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_OURS = r"""
import sys
from rcan_deploy import api
api.quantize(sys.argv[1], sys.argv[2], dataset="samples", progress=False, target=sys.argv[3],
             mixed_precision=False, selection_images=0)  # the PTQ itself
"""

_PREPARE = r"""
import sys
import rcan_deploy
fp32, rank4 = sys.argv[1:3]
rcan_deploy.export(fp32, source="official", variant="rcan-sr4k")
rcan_deploy.rewrite(fp32, rank4, pixel_shuffle="convtranspose")
"""

_ORT_FULL_FRAMES = r"""
import sys, cv2, numpy as np
from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from rcan_deploy.data.datasets import get_dataset
model, out, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = list(get_dataset("samples", 2, split="train"))[:frames]
feeds = [{"input": (cv2.resize(p.load()[0], (1920, 1080), interpolation=cv2.INTER_LINEAR)
                    .transpose(2, 0, 1)[None] * 255).astype(np.float32)} for p in pairs]
class Reader:
    def __init__(self):
        self.items = iter(feeds)
    def get_next(self):
        return next(self.items, None)
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
"""


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; seconds, peak RSS (GB) and success.

    wait4's peak RSS also counts the parent's resident memory at fork time, so this script keeps
    its own process small until every cost is measured (graphs are made in a child too)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    error = child.stderr.read().decode(errors="replace").strip().splitlines()
    ok = os.waitstatus_to_exitcode(status) == 0
    return {"seconds": seconds, "rss_gb": usage.ru_maxrss / 2**20,
            "note": "" if ok else (error[-1] if error else "failed")}


def latency(model_path: str, runtime: str, repeat: int) -> float | str:
    """Median seconds per 1x3x1080x1920 frame after one warm-up run, or why the runtime
    refuses the graph."""
    from rcan_deploy.backends import get_runner
    from rcan_deploy.errors import UserError

    x = np.random.default_rng(0).random((1, 3, 1080, 1920), dtype=np.float32) * 255
    try:
        with get_runner(runtime, model_path) as runner:
            return float(np.median(runner.time(x, 1, repeat)))
    except UserError as exc:  # the runtime refuses the graph
        return str(exc).split(": ", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="1,4",
                        help="comma-separated full-frame counts for quantize_static rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per latency cell")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("quantize_cost.md"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "rcan.onnx")
        rank4 = os.path.join(tmp, "rcan_convtranspose.onnx")
        prepared = run_child(_PREPARE, fp32, rank4)
        if prepared["note"]:
            sys.exit(f"preparing the graphs failed: {prepared['note']}")
        graphs = {"fp32": fp32, "int8 (tensorrt target)": os.path.join(tmp, "trt.onnx"),
                  "int8 (ort target)": os.path.join(tmp, "cpu.onnx"),
                  "fp32, ConvTranspose": rank4,
                  "int8 (tensorrt target), ConvTranspose": os.path.join(tmp, "trt_ct.onnx")}
        cost = {"rcan-deploy quantize, 64 crops 128x128": run_child(
            _OURS, fp32, graphs["int8 (tensorrt target)"], "tensorrt")}
        for frames in args.frames.split(","):
            cost[f"ORT quantize_static, {frames} full 1080x1920 frame(s)"] = run_child(
                _ORT_FULL_FRAMES, fp32, os.path.join(tmp, "ort_full.onnx"), frames)
        run_child(_OURS, fp32, graphs["int8 (ort target)"], "ort")
        run_child(_OURS, rank4, graphs["int8 (tensorrt target), ConvTranspose"], "tensorrt")
        speed = {(name, runtime): latency(path, runtime, args.repeat)
                 for name, path in graphs.items() for runtime in ("ort", "openvino")}

    base = next(iter(cost.values()))
    lines = [
        "# Quantize cost and 1080p latency, SR4K RCAN x2 (official layout, 1x3x1080x1920)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}."
        " Command: `python benchmarks/quantize_cost.py`",
        "",
        "| calibration | seconds | peak RSS GB | time vs ours | RSS vs ours | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in cost.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['rss_gb']:.2f} | "
                     f"{r['seconds'] / base['seconds']:.1f}x | {r['rss_gb'] / base['rss_gb']:.1f}x "
                     f"| {r['note']} |")
    lines += ["", f"Latency per 1080p frame (median of {args.repeat} after a warm-up):", "",
              "| graph | runtime | seconds | speed-up vs fp32 (same form and runtime) |", "|---|---|---|---|"]
    for (name, runtime), seconds in speed.items():
        base_name = "fp32, ConvTranspose" if "ConvTranspose" in name else "fp32"
        if isinstance(seconds, str):
            lines.append(f"| {name} | {runtime} | - | {seconds} |")
            continue
        lines.append(f"| {name} | {runtime} | {seconds:.3f} | "
                     f"{speed[(base_name, runtime)] / seconds:.2f}x |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
