"""What the graph optimizer and INT8 buy at 1080p, per variant, on OpenVINO and ONNX Runtime.

For each network (SR4K RCAN x2, SR4K RCAN2 x2, rcan-slim x2 with the shipped weights; the paper
RCAN at x2 and x4 with seeded random weights, as no weights can be downloaded here) and input
1x3x1080x1920, in one run on this machine:

- naive FP32: ``rcan-deploy export --no-optimize``;
- optimized FP32: ``rcan-deploy export`` (MeanShift folding, exact upsampler fusion);
- optimized INT8: ``rcan-deploy quantize`` of the optimized graph for that runtime (OpenVINO:
  ``--target openvino``; ONNX Runtime: ``--target ort``, whose uint8 QDQ its CPU provider runs
  as integer QLinearConv), calibrated on the samples images; the precision search runs only for
  the shipped networks (random weights have no accuracy to keep).

Printed per row: executed conv GMACs, latency (median of 3 after one warm-up), the ratio to the
naive FP32 graph on the same runtime, and efficiency: achieved GMAC/s over this machine's conv
ceiling, measured first as a chain of eight 3x3 convs at the body's shape (the SR4K family at
540x960, rcan-slim at 1080x1920, the paper RCAN 64->64 at the 135x240 it is timed at) in FP32
and in INT8 as ``quantize`` makes it for that runtime (modelopt's int8 QDQ for OpenVINO, ONNX
Runtime's uint8 QDQ for ONNX Runtime).
A graph can beat the chain (over 100 %) where the runtime fuses more around its convs.

The paper RCAN (about 31 TMAC a 1080p frame, over ten minutes a run on two cores) is exported and
timed at 135x240, 1/64 of the pixels, and its GMACs and latency are scaled by 64 to 1080p (its
convs are linear in the pixel count; the table marks these rows); its INT8 graphs calibrate on 8
crops of 64 px.

Usage: ``python benchmarks/optimize_speed.py [--only NAME ...] [--out benchmarks/optimize_speed.md]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import rcan_deploy
from rcan_deploy.backends import get_runner
from rcan_deploy.costs import model_info
from rcan_deploy.quant.ptq import QuantizeOptions, quantize_model

NETWORKS = {  # name: (export keywords, shipped weights?, body shape for the ceiling)
    # networks without shipped weights are measured at FRACTION_SHAPE and scaled to 1080p
    "rcan-sr4k x2": (dict(source="official", variant="rcan-sr4k"), True, (32, 540, 960)),
    "rcan2-sr4k x2": (dict(source="official", variant="rcan2-sr4k"), True, (16, 540, 960)),
    "rcan-slim x2": (dict(source="official", variant="rcan-slim"), True, (32, 1080, 1920)),
    "rcan x2 (paper)": (dict(source="official", variant="rcan", scale=2, random_weights=True),
                        False, (64, 135, 240)),
    "rcan x4 (paper)": (dict(source="official", variant="rcan", scale=4, random_weights=True),
                        False, (64, 135, 240)),
}
RUNTIMES = {"openvino": "openvino", "ort": "ort"}  # runtime: quantize target
FRAME = (1080, 1920)
FRACTION_SHAPE = (135, 240)  # 1/64 of a 1080p frame
FRACTION = FRAME[0] * FRAME[1] // (FRACTION_SHAPE[0] * FRACTION_SHAPE[1])


def timed(model, runtime: str, repeat: int, shape: tuple[int, int] = FRAME) -> float:
    x = np.random.default_rng(0).random((1, 3, *shape)).astype(np.float32) * 255
    with get_runner(runtime, model) as runner:
        return float(np.median(runner.time(x, 1, repeat)))


def conv_chain(channels: int, height: int, width: int) -> onnx.ModelProto:
    """Eight 3x3 conv + ReLU at one shape (FP32)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(8):
        w = rng.normal(0, 0.05, (channels, channels, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}" if i < 7 else "output"])]
        x = f"r{i}"
    shape = [1, channels, height, width]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def int8_chain(model: onnx.ModelProto, target: str) -> onnx.ModelProto:
    """The chain quantized as ``rcan-deploy quantize`` quantizes for ``target`` (modelopt's int8
    QDQ for openvino, ONNX Runtime's uint8 QDQ for ort), calibrated on random crops."""
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    crops = np.random.default_rng(2).random((4, channels, 32, 32)).astype(np.float32)
    return quantize_model(model, crops, QuantizeOptions(target=target, calib_crops=4,
                                                        crop_size=32))[0]


def ceiling(shape: tuple[int, int, int], runtime: str) -> dict[str, float]:
    """GMAC/s of the conv chain at ``shape`` on ``runtime``, FP32 and INT8."""
    channels, height, width = shape
    macs = 8 * height * width * channels * channels * 9
    result = {}
    for label, int8 in (("fp32", False), ("int8", True)):
        model = conv_chain(channels, height, width)
        if int8:
            model = int8_chain(model, RUNTIMES[runtime])
        x = np.random.default_rng(1).random((1, channels, height, width)).astype(np.float32)
        with get_runner(runtime, model) as runner:
            result[label] = macs / float(np.median(runner.time(x, 1, 3))) / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="network names to run")
    parser.add_argument("--out", default=str(Path(__file__).with_name("optimize_speed.md")))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optimize-speed-"))
    names = [n for n in NETWORKS if args.only is None or n in args.only]
    ceilings = {}
    for shape in sorted({NETWORKS[n][2] for n in names}):
        for runtime in RUNTIMES:
            ceilings[shape, runtime] = ceiling(shape, runtime)
            print(f"ceiling {shape} {runtime}: {ceilings[shape, runtime]}", file=sys.stderr)
    lines = ["# Optimizer and INT8 speed at 1080p (`python benchmarks/optimize_speed.py`)", "",
             f"Input 1x3x1080x1920, this machine ({platform.processor() or platform.machine()}, "
             f"{time.strftime('%Y-%m-%d')}), one run; ratio = latency / naive FP32 latency on the "
             "same runtime; efficiency = executed GMACs / latency / the conv ceiling of that "
             "precision (a chain of eight 3x3 convs at the body's shape).", "",
             "| conv ceiling (GMAC/s) | runtime | FP32 | INT8 |", "|---|---|---|---|"]
    for (shape, runtime), value in ceilings.items():
        lines.append(f"| {shape[0]}->{shape[0]} at {shape[1]}x{shape[2]} | {runtime} | "
                     f"{value['fp32']:.0f} | {value['int8']:.0f} |")
    lines += ["", "| network | graph | runtime | conv GMACs | latency (ms) | vs naive FP32 | "
              "efficiency |", "|---|---|---|---|---|---|---|"]
    for name in names:
        keywords, shipped, body = NETWORKS[name]
        shape, factor = (FRAME, 1) if shipped else (FRACTION_SHAPE, FRACTION)
        mark = "" if shipped else f" (at {shape[0]}x{shape[1]}, x{factor})"
        stem = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        naive, optimized = Path(f"{stem}_naive.onnx"), Path(f"{stem}.onnx")
        rcan_deploy.export(naive, optimize=False, shape=shape, **keywords)
        rcan_deploy.export(optimized, shape=shape, **keywords)
        for runtime, target in RUNTIMES.items():
            int8 = Path(f"{stem}_int8_{target}.onnx")
            search = shipped and target != "ort"
            calibration = {} if shipped else dict(calib_crops=8, crop_size=64)
            rcan_deploy.quantize(optimized, int8, dataset="samples", target=target,
                                 mixed_precision=search, selection_images=None if search else 0,
                                 progress=False, **calibration)
            base = None
            for label, path, precision in (("naive FP32", naive, "fp32"),
                                           ("optimized FP32", optimized, "fp32"),
                                           ("optimized INT8", int8, "int8")):
                model = onnx.load(str(path))
                gmacs = model_info(model)["macs"] / 1e9 * factor
                seconds = timed(model, runtime, 3, shape) * factor
                base = base or seconds
                efficiency = gmacs / seconds / ceilings[body, runtime][precision]
                lines.append(f"| {name}{mark} | {label} | {runtime} | {gmacs:.1f} | "
                             f"{seconds * 1e3:.0f} | {seconds / base:.2f}x | {efficiency:.0%} |")
                print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
