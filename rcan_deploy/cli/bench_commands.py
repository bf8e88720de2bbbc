"""The ``bench`` and ``gate`` commands: thin click wrappers over :mod:`rcan_deploy.benchmark`."""

from __future__ import annotations

from pathlib import Path

import click

from .. import defaults
from ..backends import RUNTIMES
from ..benchmark import bench, gate
from ..benchmark.gate import (MAX_PSNR_DROP, MAX_RUNTIME_DEVIATION, MAX_SSIM_DROP,
                               MAX_WORST_PSNR_DROP, TOLERANCE)
from ..benchmark.report import DEFAULT_OUT
from ..benchmark.run import ENGINE_SUFFIXES, PROTOCOL_CHOICES
from ..errors import GateFailure
from ..record import INPUT_RANGES
from .types import FiniteFloat


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False), required=False,
                metavar="[MODEL.onnx|ENGINE.plan]")
@click.option("--model", "model_alias", type=click.Path(dir_okay=False), default=None,
              hidden=True)
@click.option("--engine", "engine_alias", type=click.Path(dir_okay=False), default=None,
              hidden=True)
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help=f"Runtime of an ONNX MODEL (default {RUNTIMES[0]}; torch runs the FP32 network "
                   "it came from). An engine (.plan) runs on TensorRT.")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              metavar="FP32.onnx|FP32.plan",
              help="Reference to compare with. Default: the FP32 graph found through the "
                   "sidecars; none for an FP32 candidate.")
@click.option("--dataset", default=None, metavar="NAME|DIR",
              help="div2k_valid, samples or photos (their held-out split) or a folder of "
                   "images. Default: div2k_valid when present, else samples.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder holding DIV2K/ (default $RCAN_DEPLOY_DATA, else "
                   "~/.cache/rcan_deploy/data).")
@click.option("--scale", type=click.IntRange(2, 16), default=None,
              help="Upscaling factor of a graph without sidecar (default: from its shapes).")
@click.option("--input-range", type=click.Choice([str(r) for r in INPUT_RANGES]), default=None,
              help="Input range of a graph without sidecar.")
@click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES), default="standard",
              show_default=True, help="standard (Y, border crop), vacc (the reference table's) "
                                      "or both.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N images only.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs before the latency runs.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs at the graph's fixed shape.")
@click.option("--no-conformance", "conformance", flag_value=False, default=True,
              help="Do not run the graph on ONNX Runtime beside a runtime under test (saves "
                   "ORT's fake-quant time); `gate` then fails the report.")
@click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True,
              help="Report folder (report.json, report.md, PNG figures).")
def bench_command(model, model_alias, engine_alias, out, input_range, **kwargs) -> None:
    """Quality (PSNR/SSIM vs reference and bicubic) and latency, with a report.

    MODEL is an ONNX graph or a TensorRT engine (default: rcan_int8.onnx)."""
    given = [v for v in (model, model_alias, engine_alias) if v is not None]
    if len(given) > 1:
        raise click.UsageError("pass one MODEL (--model and --engine are older names of it)")
    path = given[0] if given else defaults.INT8_ONNX
    engine = path if engine_alias is not None or Path(path).suffix in ENGINE_SUFFIXES else None
    result = bench(engine=engine, model=None if engine else path, out=out,
                   input_range=int(input_range) if input_range else None, **kwargs)
    echo_bench(result, out)


def echo_bench(result, out) -> None:
    """Print a bench result: subjects, data set, the metric table, latency, report path."""
    cand, ref = result.candidate, result.reference
    found = result.provenance["reference_found_by"]
    click.echo(f"candidate {cand['path']} ({cand['label']}); reference "
               + (f"{ref['path']} ({ref['label']}, {found})" if ref else "none"))
    data = result.dataset
    click.echo(f"data set {data['name']}{' ' + data['split'] if data['split'] else ''} "
               f"x{data['scale']}, {data['count']} images ({data['chosen']})")
    click.echo(f"{'protocol':<9} {'metric':<6} {'candidate':>10} {'reference':>10} "
               f"{'cand-ref':>9} {'bicubic':>9}")
    for protocol, entry in result.summary.items():
        for metric in ("psnr", "ssim"):
            cells = [_cell(entry, who, metric, width, sign) for who, width, sign in
                     (("candidate", 10, ""), ("reference", 10, ""), ("delta", 9, "+"),
                      ("bicubic", 9, ""))]
            click.echo(f"{protocol:<9} {metric.upper():<6} {' '.join(cells)}")
    for role, timing in result.latency.items():
        shape = "x".join(str(d) for d in timing["shape"])
        click.echo(f"latency {getattr(result, role)['label']} at {shape}: median "
                   f"{timing['median_s'] * 1e3:.1f} ms, p90 {timing['p90_s'] * 1e3:.1f} ms, "
                   f"{timing['fps']:.2f} frames/s, {timing['output_mpix_per_s']:.2f} MP/s out")
    click.echo(conformance_line(result.conformance))
    click.echo(f"report: {Path(out) / 'report.md'} (and report.json, figures)")


def echo_images(result) -> None:
    """Per image: FP32 and candidate PSNR (standard protocol), the drop, runtime conformance."""
    if not result.reference:
        return
    protocol = result.protocols[0]
    click.echo(f"per image ({protocol}): {'image':<32} {'FP32':>8} {'INT8':>8} {'drop':>7} "
               f"{'vs ORT':>8}")
    rows = sorted(result.images, key=lambda row: row["delta"][protocol]["psnr"])
    for row in rows:
        conformance = (row.get("conformance") or {}).get("psnr_delta", {}).get(protocol)
        click.echo(f"{'':<{len('per image (') + len(protocol) + 3}}{row['image'][:32]:<32} "
                   f"{row['reference'][protocol]['psnr']:8.3f} "
                   f"{row['candidate'][protocol]['psnr']:8.3f} "
                   f"{-row['delta'][protocol]['psnr']:7.3f} "
                   + (f"{conformance:+8.4f}" if conformance is not None else f"{'-':>8}"))


def conformance_line(entry: dict) -> str:
    """One line: how the runtime under test agrees with ONNX Runtime on the same graph."""
    runtime = entry["runtime"] + (f" ({entry['openvino_isa']})" if entry.get("openvino_isa")
                                  else "")
    worst = entry.get("worst")
    if worst is None:
        return f"conformance {runtime} vs ONNX Runtime: {entry['status']}"
    against = worst["psnr_vs_ort"]["value"]
    deltas = [f"{key[len('psnr_delta_'):]} {item['value']:+.4f} dB ({item['image']})"
              for key, item in worst.items() if key.startswith("psnr_delta_")]
    return (f"conformance {runtime} vs ONNX Runtime, worst image: max abs error "
            f"{worst['max_abs_error']['value']:.2f}/255, PSNR vs ORT "
            f"{'identical' if against is None else f'{against:.2f} dB'}; PSNR vs HR runtime - "
            f"ORT: {', '.join(deltas)}")


def _cell(entry: dict, who: str, metric: str, width: int, sign: str) -> str:
    value = (entry.get(who) or {}).get(metric)
    digits = 3 if metric == "psnr" else 4
    return f"{'-':>{width}}" if value is None else f"{value:{sign}{width}.{digits}f}"


@click.command("gate")
@click.argument("report", type=click.Path(dir_okay=False), metavar="REPORT.json")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None,
              metavar="BASELINE.json",
              help="Earlier report.json: fail when the candidate's mean PSNR is lower by more "
                   f"than {TOLERANCE} dB.")
@click.option("--max-psnr-drop", type=FiniteFloat(0.0), default=MAX_PSNR_DROP, show_default=True,
              metavar="DB", help="Largest allowed mean PSNR drop of the candidate vs reference.")
@click.option("--max-worst-psnr-drop", type=FiniteFloat(0.0), default=MAX_WORST_PSNR_DROP,
              show_default=True, metavar="DB",
              help="Largest allowed PSNR drop of the candidate vs reference on any one image.")
@click.option("--max-ssim-drop", type=FiniteFloat(0.0), default=MAX_SSIM_DROP, show_default=True,
              metavar="X", help="Largest allowed mean SSIM drop of the candidate vs reference.")
@click.option("--max-runtime-deviation", type=FiniteFloat(0.0), default=MAX_RUNTIME_DEVIATION,
              show_default=True, metavar="DB",
              help="Largest allowed |PSNR(runtime) - PSNR(ONNX Runtime)| on any image (same "
                   "graph, against HR).")
def gate_command(report, baseline, max_psnr_drop, max_worst_psnr_drop, max_ssim_drop,
                 max_runtime_deviation) -> None:
    """CI accuracy gate on a bench report: exit 0 pass, 1 fail, 2 unusable input."""
    result = gate(report, baseline, max_psnr_drop=max_psnr_drop, max_ssim_drop=max_ssim_drop,
                  max_runtime_deviation=max_runtime_deviation,
                  max_worst_psnr_drop=max_worst_psnr_drop)
    click.echo(result.table())
    if not result:
        raise GateFailure(result.summary())
    click.echo(result.summary())
