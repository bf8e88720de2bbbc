"""PyTorch CUDA latency of the SR4K RCAN variants, fp32 and fp16, the baseline for TensorRT.

For rcan-sr4k and rcan2-sr4k in the official and BasicSR layouts (x2, seeded random weights:
latency does not depend on their values), one 1x3x1080x1920 frame in the layout's input range:
median of --repeat forward passes after --warmup, each timed with CUDA events and synchronised.
fp32 runs with TF32 off (true fp32 convolutions); fp16 is the network and input in half
precision. cuDNN autotuning is on (fixed shape). Needs a CUDA GPU and a CUDA build of torch
(docker/Dockerfile.gpu); without one it exits with a message and writes nothing.

    python benchmarks/torch_cuda_latency.py [--repeat 50] [--warmup 10] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

from rcan_deploy.archs import build_model, variant_config

VARIANTS = ("rcan-sr4k", "rcan2-sr4k")
SOURCES = {"official": 255.0, "basicsr": 1.0}  # layout -> input range
SHAPE = (1, 3, 1080, 1920)


def latency_ms(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeat: int) -> float:
    """Median CUDA-event time of ``model(x)`` in milliseconds."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        for _ in range(repeat):
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(source: str, variant: str, warmup: int, repeat: int) -> dict[str, float]:
    """fp32 and fp16 median latency (ms) of one layout/variant at SHAPE."""
    torch.manual_seed(0)
    model = build_model(source, variant_config(variant, 2)).cuda()
    x = torch.rand(SHAPE, device="cuda") * SOURCES[source]
    result = {"fp32": latency_ms(model, x, warmup, repeat)}
    result["fp16"] = latency_ms(model.half(), x.half(), warmup, repeat)
    del model, x
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before them")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        sys.exit(f"torch_cuda_latency: no CUDA GPU visible to torch {torch.__version__} ({build}); "
                 "run it in docker/Dockerfile.gpu with --gpus all. Nothing written.")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for variant in VARIANTS:
        for source in SOURCES:
            ms = measure(source, variant, args.warmup, args.repeat)
            rows.append(f"| {variant} | {source} | {ms['fp32']:.2f} | {ms['fp16']:.2f} | "
                        f"{ms['fp32'] / ms['fp16']:.2f}x |")
            print(rows[-1], flush=True)
    gpu = torch.cuda.get_device_properties(0)
    text = "\n".join([
        f"# PyTorch CUDA latency, SR4K RCAN x2 at {'x'.join(map(str, SHAPE))}",
        "",
        f"GPU: {gpu.name} (sm {gpu.major}.{gpu.minor}); torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, Python "
        f"{platform.python_version()}. Median of {args.repeat} runs after {args.warmup} warm-up "
        "runs, CUDA events; fp32 with TF32 off, cuDNN autotuning on. Command: "
        "`python benchmarks/torch_cuda_latency.py`",
        "",
        "| variant | layout | fp32 ms | fp16 ms | fp16 speed-up |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
