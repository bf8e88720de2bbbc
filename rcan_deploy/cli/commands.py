"""The click commands. Each parses flags and calls one function of :mod:`rcan_deploy.api`.

Choices and defaults come from the library (option classes and registries), never copied here.
Modules that load torch are imported only when a command that needs them runs.
"""

from __future__ import annotations

import json
import math

import click

from .. import api, defaults
from ..archs import SOURCES, VARIANT_HELP
from ..backends import RUNTIMES
from ..data.datasets import FETCHABLE_SETS
from ..data.fetch import LR_SCALES
from ..errors import GateFailure
from ..passes.pixel_shuffle import FORMS, PIXEL_SHUFFLE_CHOICES
from ..passes.rewrite import RewriteOptions
from ..quant.ptq import HIGH_PRECISIONS, METHODS, TARGET_ALIASES, TARGETS, QuantizeOptions
from ..quant.weight_bits import WEIGHT_BITS
from ..demo_pipeline import RUNTIME as DEMO_RUNTIME
from ..record import INPUT_RANGES
from ..training import SCHEDULES, TrainJob, TrainOptions
from .types import SEED, FiniteFloat, default

def _parse_shape(ctx, param, value):
    """HxW (e.g. 1080x1920) -> (H, W)."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 1080x1920)") from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"{value!r}: sizes must be positive")
    if max(h, w) > defaults.MAX_SIDE:
        raise click.BadParameter(f"{value!r}: a side above {defaults.MAX_SIDE} is not supported")
    return h, w


def _parse_mean(ctx, param, value):
    """R,G,B -> a tuple of three floats."""
    if value is None:
        return None
    try:
        mean = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not R,G,B (e.g. 0.4488,0.4371,0.4040)") from None
    if len(mean) != 3 or not all(math.isfinite(m) for m in mean):
        raise click.BadParameter(f"{value!r}: expected three finite numbers R,G,B")
    return mean


def _one_of(primary, alias, primary_name: str, alias_name: str):
    """The value of a flag given under its name or its hidden older alias (not both)."""
    if primary is not None and alias is not None:
        raise click.UsageError(f"{alias_name} is an older name of {primary_name}; pass one")
    return primary if primary is not None else alias


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rcan-deploy")
def cli() -> None:
    """Export, rewrite, inspect and quantize RCAN super-resolution networks for deployment."""


@cli.command()
@click.option("--source", type=click.Choice(list(SOURCES)), default=None,
              help=f"Checkpoint layout. Default: detected from --weights, else {defaults.SOURCE}.")
@click.option("--variant", default=None, metavar="NAME",
              help=f"Named architecture ({', '.join(VARIANT_HELP)}). Default: inferred from "
                   f"--weights, else {defaults.VARIANT}.")
@click.option("--scale", type=click.IntRange(2, 16), default=None,
              help=f"Upscaling factor. Default: inferred from --weights, else {defaults.SCALE}.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint (.pt/.pth/.pth.tar) of any supported layout.")
@click.option("--random-weights", is_flag=True, help="Use seeded random weights (no checkpoint).")
@click.option("--param-key", default=None,
              help="Container key to load (params_ema, params, state_dict, ema_state_dict). "
                   "Default: params_ema when present, then params, state_dict.")
@click.option("--shape", callback=_parse_shape, default="x".join(map(str, defaults.SHAPE)),
              show_default=True, metavar="HxW", help="Fixed input height x width.")
@click.option("--opset", type=click.IntRange(11, 21), default=defaults.OPSET, show_default=True,
              help="ONNX opset.")
@click.option("--pixel-shuffle", type=click.Choice(PIXEL_SHUFFLE_CHOICES),
              default="keep", show_default=True,
              help="keep DepthToSpace, or rewrite it: reshape (6-D), reshape5d (rank <= 5), "
                   "convtranspose (rank 4 only).")
@click.option("--input-range", type=click.Choice(defaults.EXPORT_INPUT_RANGES), default="native",
              show_default=True,
              help="Value range of the graph's input/output: the source's own (official 255, "
                   "basicsr and rcan-pytorch 1) or forced.")
@click.option("--fold-meanshift", is_flag=True,
              help="Fold the official MeanShift 1x1 convs into their neighbours (part of the "
                   "default optimization; useful with --no-optimize).")
@click.option("--no-optimize", "optimize", flag_value=False, default=True,
              help="Write the plain traced graph: no MeanShift folding, no upsampler fusion "
                   "(see `rcan-deploy optimize`).")
@click.option("--img-range", type=FiniteFloat(0.0, open_low=True), default=None,
              help="BasicSR img_range of the checkpoint (not stored in it). [default: 255]")
@click.option("--rgb-mean", callback=_parse_mean, default=None, metavar="R,G,B",
              help="BasicSR rgb_mean of the checkpoint. [default: the DIV2K mean]")
@click.option("--res-scale", type=FiniteFloat(float("-inf")), default=None,
              help="BasicSR res_scale of the checkpoint. [default: 1]")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of random weights and of the verification input.")
@click.option("--out", type=click.Path(dir_okay=False), default=defaults.FP32_ONNX,
              show_default=True, help="Output ONNX file (a .json sidecar is written next to it).")
def export(out, shape, **kwargs) -> None:
    """Export an RCAN checkpoint to a fixed-shape, verified, optimized ONNX graph."""
    record = api.export(out, shape=shape, **kwargs)
    weights = record["weights"]
    if weights.get("shipped"):
        converted = " (converted from the official layout)" if weights.get("converted_from") else ""
        click.echo(f"using the shipped checkpoint {weights['path']}{converted}")
    verification = record["verification"]
    click.echo(f"wrote {out}: {record['source']} {record['variant']} x{record['config']['scale']}, "
               f"input {record['input_shape']} -> output {record['output_shape']}, "
               f"range 0..{record['input_range']}")
    _echo_optimized(record)
    click.echo(f"verified against PyTorch at {verification['shape']}: max abs error "
               f"{verification['max_abs_error']:.3g} (tolerance {verification['tolerance']:.3g}); "
               f"export took {record['export']['seconds']:.1f} s")


def _echo_optimized(record: dict) -> None:
    """One line on what the optimizer changed and the MACs it saved."""
    passes = record.get("optimize", {}).get("passes") or record.get("export", {}).get("passes")
    costs, architecture = record.get("costs"), record.get("architecture")
    if not passes:
        return
    done = [f"{p['name']} x{p['sites'] if isinstance(p['sites'], int) else len(p['sites'])}"
            for p in passes]
    line = "optimized: " + ", ".join(done)
    if costs and architecture and costs["macs"] != architecture["macs"]:
        line += (f"; conv MACs {architecture['macs'] / 1e9:.1f} -> {costs['macs'] / 1e9:.1f} G "
                 f"({costs['macs'] / architecture['macs']:.0%})")
    click.echo(line)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--pixel-shuffle", type=click.Choice(PIXEL_SHUFFLE_CHOICES),
              default="keep", show_default=True,
              help="Form of the pixel shuffles after fusion (see `rewrite`).")
@click.option("--no-fold-meanshift", "fold_meanshift", flag_value=False, default=True,
              help="Leave MeanShift 1x1 convs as they are.")
@click.option("--no-fuse", "fuse_upsampler", flag_value=False, default=True,
              help="Do not fuse conv -> pixel shuffle -> conv tails.")
@click.option("--input-range", type=click.Choice(["1", "255"]), default=None,
              help="Input range for the verification input (default: from the sidecar, else 1).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Verification input seed.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output ONNX file.")
def optimize(model, out, input_range, **kwargs) -> None:
    """Fuse linear upsampler tails exactly and fold MeanShift layers, on any ONNX SR graph."""
    record = api.optimize(model, out, input_range=int(input_range) if input_range else None,
                          **kwargs)
    verification = record["optimize"]["verification"]
    click.echo(f"wrote {out}: input {record['input_shape']} -> output {record['output_shape']}")
    _echo_optimized(record)
    click.echo(f"verified against {model} at {verification['shape']}: max abs error "
               f"{verification['max_abs_error']:.3g} (tolerance {verification['tolerance']:.3g})")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--pixel-shuffle", type=click.Choice(FORMS), default=None,
              help="Replace DepthToSpace / traced pixel-shuffle patterns by this form.")
@click.option("--fold-meanshift", is_flag=True,
              help="Fold MeanShift-style 1x1 convs into the neighbouring convs.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output ONNX file.")
def rewrite(model, pixel_shuffle, fold_meanshift, out) -> None:
    """Apply accelerator graph passes to any ONNX file; the result is verified numerically."""
    record = api.rewrite(model, out, RewriteOptions(pixel_shuffle, fold_meanshift))
    verification = record["rewrite_verification"]
    checked = (f"skipped ({verification['skipped']})" if "skipped" in verification else
               f"max abs error {verification['max_abs_error']:.3g} at {verification['shape']}")
    click.echo(f"wrote {out}: {record['rewrite']['passes']} site(s) rewritten; "
               f"verification {checked}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--max-rank", type=click.IntRange(min=0), default=None,
              help="Fail when any tensor has a higher rank.")
@click.option("--forbid-ops", default="", metavar="A,B",
              help="Comma-separated ONNX op types that must not appear (e.g. DepthToSpace).")
def check(model, max_rank, forbid_ops) -> None:
    """Report ops and the largest tensor rank; exit 1 when the graph breaks the limits."""
    forbidden = [op.strip() for op in forbid_ops.split(",") if op.strip()]
    result = api.check(model, max_rank=max_rank, forbid_ops=forbidden)
    click.echo(f"{model}: {sum(result.ops.values())} nodes, largest tensor rank "
               f"{result.max_rank} ({result.max_rank_tensor})")
    for op, count in result.ops.items():
        click.echo(f"  {op:<20} {count}")
    if not result:
        raise GateFailure("; ".join(result.violations))
    click.echo("check passed" + (" (no limits given)" if max_rank is None and not forbidden else ""))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--shape", callback=_parse_shape, default=None, metavar="HxW",
              help="Input size for graphs with a dynamic input.")
def info(model, as_json, shape) -> None:
    """Params and per-layer/total conv MACs at the graph's shape, next to the reference table."""
    result = api.info(model, shape=shape)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{model}: input {result['input_shape']} -> output {result['output_shape']}")
    click.echo(f"{'layer':<44} {'op':<14} {'output':<22} {'kernel':<7} {'MMACs':>10} {'params':>9}")
    for layer in result["layers"]:
        kernel = "x".join(map(str, layer["kernel"]))
        click.echo(f"{layer['name'][:44]:<44} {layer['op']:<14} {str(layer['output_shape']):<22} "
                   f"{kernel:<7} {layer['macs'] / 1e6:>10.1f} {layer['params']:>9,}")
    click.echo(f"params            {result['params']:,}")
    click.echo(f"conv MACs         {result['macs']:,} ({result['gmacs']:.3f} GMACs); bias adds "
               f"{result['macs_bias']:,}")
    click.echo(f"FLOPs(G), reference convention 2*MACs/9e8: {result['flops_g_reference']:.3f} "
               f"(bias not counted), {result['flops_g_reference_with_bias']:.3f} (bias counted)")
    counted = result
    if result["architecture"]:
        counted = arch = result["architecture"]
        click.echo(f"architecture before optimization (sidecar): params {arch['params']:,}, conv "
                   f"MACs {arch['macs'] / 1e9:.3f} G, FLOPs(G) {arch['flops_g_reference']:.3f} "
                   f"(bias not counted), {arch['flops_g_reference_with_bias']:.3f} (bias counted); "
                   f"this graph executes {result['macs'] / arch['macs']:.0%} of its MACs")
    for row in result["reference"]:
        with_bias = row["flops_counts_bias"] == "true"
        flops = counted["flops_g_reference_with_bias" if with_bias else "flops_g_reference"]
        click.echo(f"reference table: {row['model']} ({row['source']}, {row['precision']}) "
                   f"FLOPs(G) {row['flops_g']} params {int(row['params']):,}; ours {flops:.3f} / "
                   f"{counted['params']:,} ({'bias counted' if with_bias else 'bias not counted'})")


@cli.command()
def variants() -> None:
    """List the checkpoint layouts, named variants and shipped checkpoints (with their cards)."""
    from ..checkpoints import shipped_checkpoint
    from ..record import read_record

    click.echo("sources:")
    for source in SOURCES.values():
        click.echo(f"  {source.name:<14} {source.description}")
    click.echo("variants:")
    for name, text in VARIANT_HELP.items():
        click.echo(f"  {name:<14} {text}")
    click.echo("shipped checkpoints (official layout, trained on the samples train split):")
    for name in VARIANT_HELP:
        path = shipped_checkpoint(name, defaults.SCALE)
        if path is None:
            continue
        card = read_record(path)
        held = (card.sections.get("heldout") if card else None) or {}
        click.echo(f"  {name} x{defaults.SCALE}: {path.name}; held-out PSNR "
                   f"{held.get('psnr', float('nan')):.3f} dB vs bicubic "
                   f"{held.get('bicubic_psnr', float('nan')):.3f} dB "
                   f"({held.get('gain_db', float('nan')):+.3f}), trained "
                   f"{(card.sections.get('seconds') or 0) / 60:.0f} min")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False), default=defaults.FP32_ONNX,
                required=False)
@click.option("--dataset", default=None, metavar="NAME|DIR",
              help="Calibration set: div2k_valid, div2k_train, samples (train split), photos "
                   "(calib split), or a folder of images. Default: div2k_valid when present, "
                   "else samples.")
@click.option("--calib", "calib_alias", default=None, hidden=True)
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder holding DIV2K/ (default $RCAN_DEPLOY_DATA, else ~/.cache/rcan_deploy/data).")
@click.option("--method", type=click.Choice(METHODS), default=default(QuantizeOptions, "method"),
              show_default=True, help="Activation range calibration.")
@click.option("--calib-crops", type=click.IntRange(min=1),
              default=default(QuantizeOptions, "calib_crops"), show_default=True,
              help="Number of LR calibration crops.")
@click.option("--crop-size", type=click.IntRange(min=8),
              default=default(QuantizeOptions, "crop_size"), show_default=True,
              help="LR crop size in pixels.")
@click.option("--seed", type=SEED, default=default(QuantizeOptions, "seed"), show_default=True,
              help="Crop selection seed.")
@click.option("--exclude", multiple=True, metavar="REGEX",
              help="Keep nodes whose name matches in higher precision (repeatable).")
@click.option("--high-precision", type=click.Choice(HIGH_PRECISIONS),
              default=default(QuantizeOptions, "high_precision"), show_default=True,
              help="Precision of the layers left unquantized (tensorrt target).")
@click.option("--target", type=click.Choice([*TARGETS, *TARGET_ALIASES]),
              default=default(QuantizeOptions, "target"), show_default=True,
              help="Where the graph will run. openvino (CPU, int8 kernels) and tensorrt: modelopt, "
                   "symmetric int8; ort (alias cpu): ONNX Runtime QDQ with uint8 activations "
                   "(ONNX Runtime's CPU provider). Whole-image figures are measured on OpenVINO "
                   "for openvino, else on ONNX Runtime.")
@click.option("--weight-bits", type=click.Choice(WEIGHT_BITS),
              default=default(QuantizeOptions, "weight_bits"), show_default=True,
              help="auto: 7-bit weights for a CPU target (openvino, ort) when this CPU lacks "
                   "VNNI and AMX (its int8 convolutions saturate 16-bit sums), else 8; 8 or 7 "
                   "force it (e.g. for another CPU).")
@click.option("--mixed-precision/--no-mixed-precision", default=True, show_default=True,
              help="Choose per-layer precision (int8, int8x2, float) on whole images of the "
                   "selection split until --max-drop/--max-worst-drop hold.")
@click.option("--max-drop", type=FiniteFloat(0.0, open_low=True),
              default=default(QuantizeOptions, "max_drop"), show_default=True, metavar="DB",
              help="Budget: mean PSNR drop on the selection images.")
@click.option("--max-worst-drop", type=FiniteFloat(0.0, open_low=True),
              default=default(QuantizeOptions, "max_worst_drop"), show_default=True, metavar="DB",
              help="Budget: PSNR drop of the worst selection image.")
@click.option("--min-int8-share", type=click.FloatRange(0, 1),
              default=default(QuantizeOptions, "min_int8_share"), show_default=True,
              help="Never keep so much in float that less of the conv MACs run in INT8.")
@click.option("--selection-images", type=click.IntRange(min=0), default=None,
              help="Use only the first N selection images (default: all; 0: measure nothing, "
                   "with --no-mixed-precision, for networks too slow to run on whole images).")
@click.option("--input-range", type=click.Choice([str(r) for r in INPUT_RANGES]), default=None,
              help="Input range of a graph without sidecar.")
@click.option("--qat", "qat_steps", type=click.IntRange(min=0), default=0, metavar="STEPS",
              help="Then fine-tune the QDQ graph for STEPS steps (quantization-aware, distilled "
                   "from the FP32 graph on the calibration images).")
@click.option("--qat-learning-rate", type=FiniteFloat(0.0, open_low=True),
              default=default(QuantizeOptions, "qat_learning_rate"), show_default=True,
              help="Adam learning rate of --qat (cosine decay).")
@click.option("--qat-batch", type=click.IntRange(min=1),
              default=default(QuantizeOptions, "qat_batch"), show_default=True,
              help="Crops per --qat step.")
@click.option("--qat-learn-scales/--qat-fixed-scales",
              default=default(QuantizeOptions, "qat_learn_scales"), show_default=True,
              help="--qat also learns the activation scales (LSQ), or keeps PTQ's.")
@click.option("--out", type=click.Path(dir_okay=False), default=defaults.INT8_ONNX,
              show_default=True, help="Output QDQ ONNX file.")
def quantize(model, out, input_range, dataset, calib_alias, exclude, **kwargs) -> None:
    """INT8 post-training quantization (QDQ graph) calibrated on crops."""
    options = QuantizeOptions(dataset=_one_of(dataset, calib_alias, "--dataset", "--calib"),
                              input_range=int(input_range) if input_range else None,
                              exclude=tuple(exclude), **kwargs)
    record = api.quantize(model, out, options)
    echo_quantize(record, out)


def echo_quantize(record: dict, out) -> None:
    """What quantize did: calibration, precision plan, whole-image drops per image, speed."""
    calibration, heldout = record["calibration"], record["heldout"]
    q = record["quantization"]
    click.echo(f"calibrated on {calibration['crops']} crops of {calibration['crop_size']}px from "
               f"{calibration['set']['name']} ({calibration['set']['count']} images), method "
               f"{q['method']}, target {q['target']}")
    weights = q["weights"]
    click.echo(f"weights: {weights['bits']}-bit ({weights['how']}); {weights['why']}")
    plan = q.get("plan_summary") or {}
    click.echo(f"precision: {len(q['quantized_layers'])} quantized layers; "
               + ", ".join(f"{count} {name}" for name, count in plan.items() if count)
               + f" kept above int8; INT8 share of conv MACs {q['int8_macs_share']:.1%}")
    search = record.get("mixed_precision")
    if search:
        for step in search["steps"]:
            if not step["measured"]:
                continue
            moves = ", ".join(f"{layer} -> {move}" for layer, move in step["moves"].items())
            click.echo(f"  measured: mean {step['mean_drop']:.3f} dB, worst "
                       f"{step['worst_drop']:.3f} dB" + (f" after {moves}" if moves else ""))
        if not search["met"]:
            click.echo("  budget NOT met (see --max-drop, --max-worst-drop, --min-int8-share)")
    qat = record.get("qat")
    if qat:
        change = (f": selection drop mean {qat['before']['mean_drop']:.3f} -> "
                  f"{qat['after']['mean_drop']:.3f} dB, worst {qat['before']['worst_drop']:.3f} -> "
                  f"{qat['after']['worst_drop']:.3f} dB" if "after" in qat else "")
        click.echo(f"QAT: {qat['steps']} steps in {qat['seconds']:.0f} s" + change)
    if heldout.get("not_measured"):
        click.echo(f"whole images: not measured ({heldout['not_measured']})")
        click.echo(f"wrote {out}: input {record['input_shape']}")
        return
    click.echo(f"whole images of {heldout['set']['name']} {heldout['set'].get('split') or ''} "
               f"on {heldout['runtime']}, PSNR drop vs FP32 per image:")
    for name, drop in heldout["images"].items():
        click.echo(f"  {name[:40]:<40} {heldout['fp32_psnr'][name]:8.3f} dB  drop {drop:6.3f}")
    click.echo(f"mean drop {heldout['mean_drop']:.3f} dB, worst {heldout['worst_drop']:.3f} dB "
               f"({heldout['worst_image']})")
    reference = heldout.get("reference_runtime")
    if reference:
        click.echo(f"ONNX Runtime (QDQ reference): mean drop {reference['mean_drop']:.3f} dB, "
                   f"worst {reference['worst_drop']:.3f} dB; largest runtime deviation "
                   f"{reference['max_deviation_db']:.3f} dB")
    if heldout.get("warning"):
        click.echo(f"warning: {heldout['warning']}", err=True)
    latency = record["latency"]
    click.echo(f"latency at {latency['shape']} on {latency['runtime']}: INT8 "
               f"{latency['int8_median_s'] * 1e3:.0f} ms, FP32 {latency['fp32_median_s'] * 1e3:.0f}"
               f" ms ({latency['speedup']:.2f}x)")
    click.echo(f"wrote {out}: input {record['input_shape']}")


@cli.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--runtime", type=click.Choice(RUNTIMES), default=RUNTIMES[0],
              show_default=True, help="ONNX Runtime (reference; fake-quant for QDQ graphs), "
                                      "OpenVINO (int8 kernels on CPU) or torch (the FP32 network "
                                      "the graph was exported from).")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Tile overlap in input pixels (default: from the receptive field).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output folder for <stem>_x<scale>.png.")
def run_images(model, images, runtime, overlap, out_dir) -> None:
    """Upscale images of any size: pad to the graph's fixed shape, or tile with overlap."""
    for record in api.upscale(model, list(images), out_dir, runtime=runtime, overlap=overlap):
        tiles = f", {record['tiles']} tiles, overlap {record['overlap']}" if record["tiles"] > 1 else ""
        click.echo(f"{record['image']} {record['size'][1]}x{record['size'][0]} -> "
                   f"{record['output']} ({record['path']}{tiles}, {record['seconds']:.2f} s)")


@cli.group()
def data() -> None:
    """Calibration and evaluation data sets."""


@data.command("fetch")
@click.argument("name", type=click.Choice(FETCHABLE_SETS))
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where DIV2K/ or photos/ goes (default $RCAN_DEPLOY_DATA, else "
                   "~/.cache/rcan_deploy/data).")
@click.option("--lr-scale", "lr_scales", type=click.Choice([str(s) for s in LR_SCALES]),
              multiple=True,
              help="DIV2K: also fetch the official bicubic LR archive for this scale (repeatable).")
@click.option("--mirror", default=None, metavar="URL",
              help="photos: Debian archive root that holds pool/ (default "
                   "$RCAN_DEPLOY_DEBIAN_MIRROR, else the mirror apt uses).")
def data_fetch(name, data_root, lr_scales, mirror) -> None:
    """Download a set (resumable, size- and sha256-checked) and install it under the data root:
    the official DIV2K archives, or the photos set from the Debian packages that ship it."""
    root = api.fetch(name, data_root, lr_scales=tuple(int(s) for s in lr_scales), mirror=mirror)
    click.echo(f"{name} ready under {root}")


@cli.command("train")
@click.option("--source", type=click.Choice(list(SOURCES)), default=default(TrainJob, "source"),
              show_default=True, help="Layout of the checkpoint to write.")
@click.option("--variant", default=default(TrainJob, "variant"), show_default=True,
              metavar="NAME", help="Registered variant to train.")
@click.option("--scale", type=click.IntRange(2, 16), default=default(TrainJob, "scale"),
              show_default=True)
@click.option("--dataset", default=default(TrainJob, "dataset"), show_default=True,
              metavar="NAME|DIR", help="Training images (samples uses its train split).")
@click.option("--val-dataset", default=None, metavar="NAME|DIR",
              help="Validation images (default: the samples held-out split).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None)
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Fine-tune from this checkpoint.")
@click.option("--resume", is_flag=True, help="Continue from OUT.state.pt.")
@click.option("--steps", type=click.IntRange(min=1), default=default(TrainOptions, "steps"),
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1),
              default=default(TrainOptions, "batch_size"), show_default=True)
@click.option("--patch-size", type=click.IntRange(min=8),
              default=default(TrainOptions, "patch_size"), show_default=True,
              help="LR patch size.")
@click.option("--learning-rate", type=FiniteFloat(0.0, open_low=True), default=None,
              metavar="LR", help=f"Adam learning rate. [default: "
                                 f"{default(TrainOptions, 'learning_rate')}]")
@click.option("--lr", "lr_alias", type=FiniteFloat(0.0, open_low=True), default=None, hidden=True)
@click.option("--schedule", type=click.Choice(SCHEDULES),
              default=default(TrainOptions, "schedule"), show_default=True)
@click.option("--val-every", type=click.IntRange(min=1),
              default=default(TrainOptions, "val_every"), show_default=True)
@click.option("--seed", type=SEED, default=default(TrainOptions, "seed"), show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint to write (model card: OUT.json).")
def train_command(out, learning_rate, lr_alias, **kwargs) -> None:
    """Train or fine-tune a variant (L1, Adam, flips/rotations, periodic validation PSNR)."""
    rate = _one_of(learning_rate, lr_alias, "--learning-rate", "--lr")
    if rate is not None:
        kwargs["learning_rate"] = rate
    card = api.train(out, **kwargs)
    held = card["heldout"]
    click.echo(f"wrote {out} and {out}.json: held-out {card['val_set']['name']} "
               f"({card['val_set']['count']} images) PSNR {held['psnr']:.3f} dB / SSIM "
               f"{held['ssim']:.4f}; bicubic {held['bicubic_psnr']:.3f} / {held['bicubic_ssim']:.4f}; "
               f"gain {held['gain_db']:+.3f} dB; {card['seconds'] / 60:.1f} min")


def _register_subcommands() -> None:
    """Commands defined in their own modules (bench/gate, TensorRT build/inspect)."""
    from .bench_commands import bench_command, gate_command
    from .trt_commands import build_command, inspect_command

    for command in (bench_command, gate_command, build_command, inspect_command):
        cli.add_command(command)


_register_subcommands()


@cli.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="rcan_deploy_demo",
              show_default=True, help="Folder for the graphs and the report.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=DEMO_RUNTIME,
              show_default=True, help="Runtime of the bench.")
def demo_command(out_dir, runtime) -> None:
    """Shipped SR4K RCAN x2 -> optimized export -> INT8 -> bench -> report -> gate."""
    from ..demo_pipeline import demo
    from .bench_commands import echo_bench, echo_images

    result = demo(out_dir, runtime=runtime, echo=click.echo)
    echo_quantize(result["quantize"], result["int8"])
    echo_bench(result["bench"], result["report"])
    echo_images(result["bench"])
    verdict = result["gate"]
    click.echo(verdict.table())
    if not verdict:
        raise GateFailure(verdict.summary())
    click.echo(verdict.summary())
