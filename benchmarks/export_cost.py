"""Cost of `rcan-deploy export` at 1x3x1080x1920 against naive full-resolution tracing.

Each measurement runs in a fresh Python process (so peak RSS is that export's alone, read with
wait4). "ours" is rcan_deploy.api.export (small trace + verification + fixed shape); "naive" is
torch.onnx.export traced at 1x3x1080x1920, which runs the network at full size. Naive runs are
stopped past --timeout seconds or --max-rss-gb and reported as lower bounds.

    python benchmarks/export_cost.py [--variants rcan-sr4k,rcan2-sr4k] [--out export_cost.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VARIANTS = [("rcan-sr4k", "official"), ("rcan2-sr4k", "official"), ("rcan-sr4k", "basicsr"),
            ("rcan-slim", "official"), ("rcan", "official"), ("rcan-cbam", "rcan-pytorch")]

_CHILD = r"""
import sys, warnings, torch
from rcan_deploy import api
from rcan_deploy.checkpoints import resolve_model
mode, variant, source, out = sys.argv[1:5]
if mode == "ours":
    api.export(out, source=source, variant=variant, random_weights=True)
else:
    model = resolve_model(source, variant, 2, random_weights=True).model
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 1080, 1920),), out, dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["output"])
"""


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def measure(mode: str, variant: str, source: str, timeout: float, max_rss_gb: float) -> dict:
    """Run one export in a child process; return seconds, peak RSS (GB) and how it ended."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.onnx")
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, mode, variant, source, out],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stopped: list[str] = []

        def watch() -> None:
            while child.poll() is None:
                if time.perf_counter() - start > timeout:
                    stopped.append(f"stopped at {timeout:.0f} s")
                elif _rss_gb(child.pid) > max_rss_gb:
                    stopped.append(f"stopped at {max_rss_gb:.0f} GB")
                if stopped:
                    child.kill()
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
        error = child.stderr.read().decode(errors="replace").strip().splitlines()
        ok = child.returncode == 0 and os.path.getsize(out) > 0 if not stopped else False
        return {"seconds": seconds, "rss_gb": usage.ru_maxrss / 2**20, "ok": ok,
                "note": stopped[0] if stopped else ("" if ok else (error[-1] if error else "failed"))}


def _cell(result: dict, value: str) -> str:
    return (">" + value) if result["note"].startswith("stopped") else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(f"{v}:{s}" for v, s in VARIANTS),
                        help="comma-separated VARIANT:SOURCE pairs")
    parser.add_argument("--timeout", type=float, default=300.0, help="naive run limit, seconds")
    parser.add_argument("--max-rss-gb", type=float, default=18.0, help="naive run memory limit")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("export_cost.md"))
    args = parser.parse_args()
    pairs = [tuple(item.split(":")) for item in args.variants.split(",")]
    rows = []
    for variant, source in pairs:
        ours = measure("ours", variant, source, 600, 64)
        naive = measure("naive", variant, source, args.timeout, args.max_rss_gb)
        time_ratio = naive["seconds"] / ours["seconds"]
        rss_ratio = naive["rss_gb"] / ours["rss_gb"]
        cells = [variant, source, f"{ours['seconds']:.1f}", f"{ours['rss_gb']:.2f}",
                 _cell(naive, f"{naive['seconds']:.1f}"), _cell(naive, f"{naive['rss_gb']:.2f}"),
                 _cell(naive, f"{time_ratio:.1f}x"), _cell(naive, f"{rss_ratio:.1f}x"),
                 "; ".join(n for n in (ours["note"], naive["note"]) if n)]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    header = [
        "# Export cost at 1x3x1080x1920 (ours vs naive full-resolution tracing)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}."
        " Each cell is one fresh process; RSS is its peak resident set (wait4).",
        f"Naive runs are stopped after {args.timeout:.0f} s or {args.max_rss_gb:.0f} GB "
        "(shown as lower bounds with >).",
        "Command: `python benchmarks/export_cost.py`",
        "",
        "| variant | source | ours s | ours GB | naive s | naive GB | time ratio | RSS ratio | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + rows) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
