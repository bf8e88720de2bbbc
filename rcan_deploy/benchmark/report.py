"""Write a bench result: ``report.json``, ``report.md`` (laid out like the reference table) and
PNG figures. All files are written into a temporary folder first and moved into place together
(the folder renamed when it is new; ``report.json`` last otherwise), so a failure leaves no
partial report and no empty folder.

Figures use matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..artifacts import check_folder_creatable, io_error
from ..backends.base import import_optional
from ..costs import reference_rows
from .gate import MAX_PSNR_DROP
from .run import BenchResult

DEFAULT_OUT = "bench_report"
REFERENCE_NOTE = (
    "Reference rows are VastModelZOO's published figures (benchmarks/reference_table.csv): "
    "DIV2K valid x2, vacc protocol, 3x1080x1920 input. Our rows are measured on the data set and "
    "in the protocol named in each row; only vacc rows on div2k_valid are comparable with them, "
    "and then only roughly (they resize the LR image to 1920x1080, we run it at its own size, "
    "padded or tiled).")


def write_report(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created); return {file name: path} written."""
    out_dir = Path(out_dir)
    check_folder_creatable(out_dir)
    data = result.to_dict()
    table = _table_rows(data)
    figures = {"psnr_vs_gflops.png": lambda: _psnr_vs_gflops(data, table)}
    if data["reference"]:
        figures["int8_minus_fp32_psnr.png"] = lambda: _per_image_delta(data)
    if result.worst is not None:
        figures["worst_crop.png"] = lambda: _worst_crop(result)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp",
                                      dir=out_dir.parent))
    except OSError as exc:
        raise io_error(out_dir, "create the report folder", exc) from None
    try:
        for name, draw in figures.items():
            draw().savefig(stage / name, format="png")
        (stage / "report.md").write_text(_markdown(data, table, list(figures)))
        (stage / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        names = [*figures, "report.md", "report.json"]  # the JSON last: it marks a whole report
        if not out_dir.exists():
            os.rename(stage, out_dir)
        else:
            for name in names:
                os.replace(stage / name, out_dir / name)
    except OSError as exc:
        raise io_error(out_dir, "write the report", exc) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {name: out_dir / name for name in names}


def _matching_rows(model: dict) -> list[dict]:
    """Reference-table rows of the benchmarked network (source, variant, scale)."""
    return [r for r in reference_rows(model["source"], model["variant"])
            if model["source"] and r["scale"] == str(model["scale"])]


def _table_rows(data: dict) -> list[dict]:
    """Rows of the comparison table: the matching reference-table rows (all rows when none
    match), then ours; our FLOPs follow the matching rows' bias convention."""
    model = data["model"]
    matching = _matching_rows(model)
    rows = [{"model": r["model"], "source": r["source"], "flops_g": float(r["flops_g"]),
             "gmacs": None, "params_m": float(r["params_m"]), "psnr": float(r["psnr"]),
             "ssim": float(r["ssim"]), "shape": r["shape"], "precision": r["precision"],
             "latency": None, "protocol": r["protocol"], "dataset": r["dataset"], "role": None,
             "bias": r["flops_counts_bias"] == "true"}
            for r in (matching or reference_rows())]
    bias = matching[0]["flops_counts_bias"] == "true" if matching else False
    dataset = _dataset_label(data["dataset"])
    source = " ".join(str(v) for v in (model["source"], model["variant"]) if v) or "-"
    for protocol in data["protocols"]:
        for role in ("candidate", "reference", "bicubic"):
            if role not in data["summary"][protocol]:
                continue
            means = data["summary"][protocol][role]
            row = {"model": "ours: bicubic", "source": "-", "flops_g": None, "gmacs": None,
                   "params_m": None, "psnr": means["psnr"], "ssim": means["ssim"], "shape": "-",
                   "precision": "-", "latency": None, "protocol": protocol, "dataset": dataset,
                   "role": role, "bias": bias}
            if role != "bicubic":
                costs = data["costs"][role]
                counted = costs.get("architecture") or costs  # what the reference counts
                flops = counted["flops_g_reference_with_bias" if bias else "flops_g_reference"]
                row.update(model=f"ours: {data[role]['label']}", source=source, flops_g=flops,
                           gmacs=costs["gmacs"], params_m=counted["params"] / 1e6,
                           shape="x".join(str(d) for d in data[role]["graph_shape"][1:]),
                           precision=data[role]["precision"],
                           latency=f"{data['latency'][role]['median_s'] * 1e3:.1f} ms "
                                   f"({data[role]['runtime']})")
            rows.append(row)
    return rows


def _dataset_label(dataset: dict) -> str:
    split = f" {dataset['split']}" if dataset.get("split") else ""
    count = dataset["count"]
    return f"{dataset['name']}{split} x{dataset['scale']} ({count} image{'s' * (count != 1)})"


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _markdown(data: dict, table: list[dict], figures: list[str]) -> str:
    cand, ref, dataset = data["candidate"], data["reference"], data["dataset"]
    lines = [f"# Benchmark: {Path(cand['path']).name}", "",
             f"- candidate: `{cand['path']}` ({cand['label']}, graph {cand['graph_shape']})",
             f"- reference: `{ref['path']}` ({ref['label']}, found by "
             f"{data['provenance']['reference_found_by']})" if ref else "- reference: none",
             f"- data set: {_dataset_label(dataset)}, LR {dataset['lr_source']}; "
             f"{dataset['chosen']}",
             f"- protocols: {', '.join(data['protocols'])}; model: {data['model']['source']} "
             f"{data['model']['variant']} x{data['model']['scale']}", "",
             "## Against the reference table", "", REFERENCE_NOTE, "",
             "| model | source | FLOPs(G) | GMACs | params(M) | PSNR | SSIM | shape | precision "
             "| latency | protocol | dataset |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['model']} | {row['source']} | {_fmt(row['flops_g'], 3)} | "
                     f"{_fmt(row['gmacs'], 3)} | {_fmt(row['params_m'], 3)} | "
                     f"{_fmt(row['psnr'], 3)} | {_fmt(row['ssim'], 4)} | {row['shape']} | "
                     f"{row['precision']} | {row['latency'] or '-'} | {row['protocol']} | "
                     f"{row['dataset']} |")
    bias = "counted" if table[-1]["bias"] else "not counted"
    why = ("as in the matching reference rows" if _matching_rows(data["model"]) else
           "(no reference row matches this network, so all rows are shown)")
    lines += ["", f"FLOPs(G) = 2 x conv MACs / 9e8 at each graph's own input shape (the reference "
              f"convention); for our rows conv bias adds are {bias}, {why}. FLOPs(G) and params "
              "of our rows are those of the network as published (before graph optimizations, "
              "from the sidecars); GMACs = conv MACs / 1e9 that the graph actually executes, "
              "bias not counted.", "", "## Summary", ""]
    lines += _summary_table(data)
    lines += ["", "## Latency", "", "At the graph's fixed shape on a random input "
              "(median and 90th percentile of the timed runs after warm-up).", "",
              "| model | runtime | input | median (ms) | p90 (ms) | frames/s | output MP/s |",
              "|---|---|---|---|---|---|---|"]
    for role, timing in data["latency"].items():
        lines.append(f"| {data[role]['label']} | {timing['runtime']} | {timing['shape']} | "
                     f"{timing['median_s'] * 1e3:.2f} | {timing['p90_s'] * 1e3:.2f} | "
                     f"{timing['fps']:.2f} | {timing['output_mpix_per_s']:.2f} |")
    for protocol in data["protocols"]:
        lines += ["", f"## Per image ({protocol})", ""] + _image_table(data, protocol)
    lines += ["", "## Runtime conformance", ""] + _conformance_lines(data)
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    if data["worst"]:
        worst = data["worst"]
        top, left, height, width = worst["box"]
        lines += ["", f"Worst crop: {worst['image']}, {height}x{width} HR pixels at (y {top}, "
                      f"x {left}), where {worst['error']} is largest; candidate minus "
                      f"{worst['against']} PSNR on this image: {worst['score_db']:+.3f} dB "
                      f"({worst['protocol']})."]
    return "\n".join(lines) + "\n"


def _summary_table(data: dict) -> list[str]:
    lines = ["| protocol | metric | candidate | reference | candidate - reference | bicubic |",
             "|---|---|---|---|---|---|"]
    for protocol, entry in data["summary"].items():
        for metric, digits in (("psnr", 3), ("ssim", 4)):
            values = [_fmt((entry.get(who) or {}).get(metric), digits)
                      for who in ("candidate", "reference", "delta", "bicubic")]
            lines.append(f"| {protocol} | {metric.upper()} | {' | '.join(values)} |")
    return lines


def _conformance_lines(data: dict) -> list[str]:
    """How the candidate's runtime agrees with ONNX Runtime on the same graph, per image."""
    entry = data.get("conformance") or {}
    runtime = entry.get("runtime", data["candidate"]["runtime"])
    if entry.get("openvino_isa"):
        runtime += f" capped to {entry['openvino_isa']}"
    if entry.get("status") != "checked":
        status = entry.get("status", "not measured")
        note = (" ONNX Runtime defines what a QDQ graph computes, so its outputs conform by "
                "definition." if status == "reference runtime" else
                " The gate fails a report without conformance figures.")
        return [f"{runtime}: {status}.{note}"]
    protocols = data["protocols"]
    worst = entry.get("worst", {})
    worst_image = (worst.get(f"psnr_delta_{protocols[0]}") or {}).get("image")
    lines = [f"The candidate's graph on {runtime} against the same graph on ONNX Runtime (the "
             "QDQ reference semantics), same route (pad/tiles) per image: largest absolute "
             "output difference (0..255), PSNR of the runtime's output against ORT's (8-bit "
             "RGB, whole image), and runtime minus ORT PSNR against HR per protocol. Worst "
             f"image (largest |difference|, {protocols[0]}) in bold.", "",
             "| image | max abs error | PSNR vs ORT (dB) | "
             + " | ".join(f"runtime - ORT PSNR ({p})" for p in protocols) + " |",
             "|" + "---|" * (3 + len(protocols))]
    for row in data["images"]:
        conf = row.get("conformance") or {}
        if not conf:
            continue
        name = f"**{row['image']}**" if row["image"] == worst_image else row["image"]
        against = conf["psnr_vs_ort"]
        cells = [name, f"{conf['max_abs_error']:.3f}",
                 "identical" if against is None else f"{against:.2f}"]
        cells += [f"{conf['psnr_delta'][p]:+.4f}" for p in protocols]
        lines.append("| " + " | ".join(cells) + " |")
    if worst:
        against = worst["psnr_vs_ort"]["value"]
        lines += ["", f"Worst: max abs error {worst['max_abs_error']['value']:.3f} "
                      f"({worst['max_abs_error']['image']}); PSNR vs ORT "
                      f"{'identical' if against is None else f'{against:.2f} dB'} "
                      f"({worst['psnr_vs_ort']['image']}); "
                      + "; ".join(f"{key[len('psnr_delta_'):]} {item['value']:+.4f} dB "
                                  f"({item['image']})" for key, item in worst.items()
                                  if key.startswith("psnr_delta_"))]
    return lines


def _image_table(data: dict, protocol: str) -> list[str]:
    has_ref = data["reference"] is not None
    head = ["image", "LR HxW", "path", "tiles", "overlap", "candidate PSNR"]
    head += ["reference PSNR", "delta PSNR"] if has_ref else []
    head += ["bicubic PSNR", "candidate SSIM"] + (["delta SSIM"] if has_ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in data["images"]:
        cand = row["candidate"]
        cells = [row["image"], "x".join(map(str, row["lr_size"])), cand["path"],
                 str(cand["tiles"]), str(cand["overlap"]), f"{cand[protocol]['psnr']:.3f}"]
        if has_ref:
            cells += [f"{row['reference'][protocol]['psnr']:.3f}",
                      f"{row['delta'][protocol]['psnr']:+.3f}"]
        cells += [f"{row['bicubic'][protocol]['psnr']:.3f}", f"{cand[protocol]['ssim']:.4f}"]
        if has_ref:
            cells.append(f"{row['delta'][protocol]['ssim']:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _figure(width: float, height: float):
    figure = import_optional("matplotlib.figure", "matplotlib")
    return figure.Figure(figsize=(width, height), dpi=110, layout="constrained")


def _psnr_vs_gflops(data: dict, table: list[dict]):
    figure = _figure(9, 5.5)
    axes = figure.add_subplot()
    markers = {"fp32": "o", "int8": "^"}
    ours = {"candidate": ("*", "tab:red", 4), "reference": ("D", "tab:orange", 3)}
    rows = [r for r in table if r["flops_g"] is not None]
    placed: list[tuple[float, float]] = []
    for row in rows:
        if row["role"]:
            marker, color, zorder = ours[row["role"]]
            legend = f"ours: {row['role']}"
            style = dict(marker=marker, s=160 if marker == "*" else 70, color=color, zorder=zorder)
        else:
            legend = f"reference table ({row['source']}, {row['precision']})"
            style = dict(marker=markers.get(row["precision"], "s"), s=60, zorder=2,
                         color="tab:blue" if row["source"] == "official" else "tab:green")
        axes.scatter(row["flops_g"], row["psnr"], label=legend, **style)
        label = (f"{row['model']} [{row['protocol']}]" if row["role"] else
                 f"{row['model']} ({row['source']})")
        if row["role"]:  # ours: reference label above-left, candidate below-left of the point
            offset, align = ((-12, 6) if row["role"] == "reference" else (-12, -14)), "right"
        else:  # reference rows: right of the point, moved down when close to a labelled one
            near = sum(1 for x, y in placed if abs(x - row["flops_g"]) <= 0.02 * x
                       and abs(y - row["psnr"]) < 0.15)
            placed.append((row["flops_g"], row["psnr"]))
            offset, align = (10, 4 - 12 * near), "left"
        axes.annotate(label, (row["flops_g"], row["psnr"]), textcoords="offset points",
                      xytext=offset, ha=align, fontsize=8)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left",
                bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    flops = [r["flops_g"] for r in rows]
    wide = bool(flops) and max(flops) / min(flops) > 10
    if wide:
        axes.set_xscale("log")
    axes.margins(x=0.3 if wide else 0.6, y=0.12)
    axes.set_xlabel("FLOPs(G) = 2 x MACs / 9e8 at the graph's input shape"
                    + (" (log scale)" if wide else ""))
    axes.set_ylabel("PSNR (dB)")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(f"PSNR vs FLOPs: reference rows (DIV2K valid x2, vacc) and ours "
                   f"({_dataset_label(data['dataset'])}, {', '.join(data['protocols'])})",
                   fontsize=9)
    return figure


def _per_image_delta(data: dict):
    images = [row["image"] for row in data["images"]]
    protocols = data["protocols"]
    figure = _figure(max(6.0, 0.45 * len(images) * len(protocols) + 2), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(protocols)
    positions = np.arange(len(images))
    for index, protocol in enumerate(protocols):
        deltas = [row["delta"][protocol]["psnr"] for row in data["images"]]
        bars = axes.bar(positions + (index - (len(protocols) - 1) / 2) * width, deltas, width,
                        label=protocol)
        if len(images) <= 20:
            axes.bar_label(bars, fmt="%+.3f", fontsize=7, padding=2)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.axhline(-MAX_PSNR_DROP, color="tab:red", linestyle="--", linewidth=1,
                 label=f"-{MAX_PSNR_DROP} dB (default gate budget)")
    axes.set_xticks(positions, images, rotation=45 if len(images) > 6 else 0, ha="right"
                    if len(images) > 6 else "center", fontsize=8)
    axes.set_ylabel("PSNR difference (dB)")
    axes.set_title(f"{data['candidate']['label']} minus {data['reference']['label']} PSNR per "
                   f"image\n({_dataset_label(data['dataset'])})", fontsize=9)
    axes.margins(y=0.25)
    axes.legend(fontsize=8)
    return figure


def _worst_crop(result: BenchResult):
    worst = result.worst
    count = len(worst.panels) + 1
    figure = _figure(2.6 * count, 3.3)
    axes = figure.subplots(1, count)
    for ax, (label, crop, value) in zip(axes, worst.panels):
        ax.imshow(crop, interpolation="nearest")
        caption = f"PSNR {value:.2f} dB" if value is not None else "(ground truth)"
        ax.set_title(f"{label}\n{caption}", fontsize=9)
    image = axes[-1].imshow(worst.error, cmap="magma", interpolation="nearest")
    axes[-1].set_title(f"{worst.error_label}\n(0..255)", fontsize=9)
    figure.colorbar(image, ax=axes[-1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    top, left, height, width = worst.box
    figure.suptitle(f"{worst.image}: candidate - {worst.against} {worst.score:+.3f} dB "
                    f"({worst.protocol}, whole image); crop {height}x{width} HR px at y={top}, "
                    f"x={left}", fontsize=10)
    return figure
