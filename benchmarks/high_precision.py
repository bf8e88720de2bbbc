"""INT8 accuracy with the float layers of the QDQ graph in fp32 vs fp16 (`--high-precision`).

modelopt's default for the layers it leaves unquantized is fp16; rcan-deploy's is fp32. This
measures both on the shipped SR4K RCAN x2 (models/rcan-sr4k_x2.pt) in the two value ranges
(BasicSR layout 0..1, official layout 0..255): full 1080x1920 frames of the `samples` held-out
split (standard protocol) on ONNX Runtime CPU and, for the BasicSR layout, OpenVINO. TensorRT
itself needs a GPU.

    python benchmarks/high_precision.py [--out high_precision.md]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import rcan_deploy
from rcan_deploy.benchmark.run import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("high_precision.md")))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source, runtimes in (("basicsr", ("ort", "openvino")), ("official", ("ort",))):
            fp32 = Path(tmp) / f"{source}.onnx"
            rcan_deploy.export(fp32, source=source, variant="rcan-sr4k")
            for high in ("fp32", "fp16"):
                int8 = Path(tmp) / f"{source}_{high}.onnx"
                rcan_deploy.quantize(fp32, int8, dataset="samples", high_precision=high,
                                     target="tensorrt", mixed_precision=False,
                                     selection_images=0, progress=False)
                frames = {}
                for runtime in runtimes:
                    result = bench(model=int8, runtime=runtime, dataset="samples", warmup=0,
                                   repeat=1, progress=False)
                    frames[runtime] = result.summary["standard"]
                rows.append((source, high, frames))
    lines = ["# INT8 accuracy: float layers in fp32 vs fp16 (`quantize --high-precision`)", "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}. Command: "
             "`python benchmarks/high_precision.py`. Model: shipped SR4K RCAN x2; calibration "
             "64 crops of 128 px (`samples` training split), method max, target tensorrt.", "",
             "| layout (range) | high precision | runtime | fp32 PSNR | int8 PSNR | drop |",
             "|---|---|---|---|---|---|"]
    for source, high, frames in rows:
        for runtime, summary in frames.items():
            ref, cand = summary["reference"]["psnr"], summary["candidate"]["psnr"]
            lines.append(f"| {source} ({'0..1' if source == 'basicsr' else '0..255'}) | {high} "
                         f"| {runtime} | {ref:.3f} | {cand:.3f} | {ref - cand:.3f} |")
    lines += ["", "The held-out images of `samples`, each padded to 1080x1920 and run whole, PSNR "
              "in the standard protocol (Y, border = scale); the reference is the fp32 graph on "
              "the same runtime. Every conv INT8 (no per-layer precision search), residual "
              "stream in float."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
