"""``rcan-deploy build`` and ``rcan-deploy inspect``: thin click commands over
:mod:`rcan_deploy.trt` (TensorRT is imported only when a command runs)."""

from __future__ import annotations

import json

import click

from .. import defaults
from ..trt.build import PRECISIONS, PROFILE_VERBOSITIES, build_engine, default_engine_path
from ..trt.inspect import inspect_engine


@click.command("build")
@click.argument("model", type=click.Path(dir_okay=False), default=defaults.INT8_ONNX,
                required=False)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Engine file (a .json sidecar is written next to it). Default: MODEL's stem + "
                   ".plan for int8 (rcan_int8.onnx -> rcan_int8.plan), + _PRECISION.plan "
                   "otherwise.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="int8", show_default=True,
              help="int8: a QDQ graph as is; fp32: a float graph, TF32 off; fp16: an FP16 copy "
                   "of a float graph; best: TensorRT 10 picks per layer (FP16/INT8 flags), "
                   "TensorRT 11 builds the FP16 copy.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None,
              metavar="MB", help="Builder workspace limit. Default: TensorRT's (GPU memory).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Read this timing cache when it exists and write it back after the build.")
@click.option("--profile-verbosity", type=click.Choice(PROFILE_VERBOSITIES),
              default="layer_names_only", show_default=True,
              help="Layer information kept in the engine; detailed lets 'inspect' show each "
                   "layer's precision.")
@click.option("--show-warnings", is_flag=True,
              help="Print TensorRT's build warnings (unfused Q/DQ nodes among them) on stderr; "
                   "they are always kept in the engine's sidecar.")
def build_command(model, out, show_warnings, **kwargs) -> None:
    """Build a TensorRT engine from a fixed-shape ONNX graph (needs TensorRT and a GPU)."""
    record = build_engine(model, out, **kwargs)
    warnings = record["build"]["warnings"]
    if show_warnings:
        for warning in warnings:
            click.echo(f"TensorRT warning: {warning}", err=True)
    gpu = record["gpu"]
    click.echo(f"wrote {out or default_engine_path(model, record['precision'])}: "
               f"{record['precision']} engine, input {record['input_shape']} -> output "
               f"{record['output_shape']}; TensorRT {record['tensorrt']['version']} on "
               f"{gpu['name']} (sm {gpu['compute_capability']}), built in "
               f"{record['build']['seconds']:.1f} s")
    if warnings and not show_warnings:
        click.echo(f"TensorRT logged {len(warnings)} warning(s), kept in the sidecar "
                   "(--show-warnings prints them)")


@click.command("inspect")
@click.argument("engine", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_command(engine, as_json) -> None:
    """I/O tensors and layers of a TensorRT engine, with each layer's precision when known."""
    result = inspect_engine(engine)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    built = result["built_with"]
    origin = (f"built with TensorRT {built['tensorrt']}, precision {built['precision']}"
              if built else "no sidecar")
    click.echo(f"{engine}: TensorRT {result['tensorrt']} on {result['gpu']['name']}; {origin}")
    for tensor in result["io"]:
        click.echo(f"  {tensor['mode']:<6} {tensor['name']:<20} {str(tensor['shape']):<22} "
                   f"{tensor['dtype']}")
    counts = ", ".join(f"{p} {n}" for p, n in result["precisions"].items())
    copies = (f" ({result['copy_layers']} reformatting copies not counted)"
              if result["copy_layers"] else "")
    click.echo(f"{result['num_layers']} layers" + (f": {counts}{copies}" if counts else ""))
    if not result["detailed"]:
        click.echo(result["note"])
        return
    click.echo(f"{'layer':<60} {'type':<20} precision")
    for layer in result["layers"]:
        kind = f"{layer['type'][:13]} (copy)" if layer["copy"] else layer["type"][:20]
        click.echo(f"{layer['name'][:60]:<60} {kind:<20} {layer['precision']}")
