"""Benchmark a candidate (INT8 graph, engine, any ONNX SR graph) against its FP32 reference.

Every image of the data set is super-resolved at the graph's fixed shape through
:func:`rcan_deploy.upscaling.upscale` (fit, pad or tile, recorded per image) by the candidate, the
reference and MATLAB bicubic; PSNR/SSIM are computed in the chosen protocol(s). Latency is timed
at the graph's fixed shape on a random input. FLOPs and params come from the ONNX graph (for an
engine, the ONNX it was built from).

Runtime conformance: ONNX Runtime defines what a QDQ graph computes. When the candidate runs on
another runtime (OpenVINO, TensorRT: ORT then runs the engine's ONNX), every image is also run
through ONNX Runtime on the same graph and the same route, and the row records the largest
absolute difference of the two outputs (0..255), the PSNR of the runtime's output against ORT's
(8-bit RGB, whole image; null when identical) and, per protocol, runtime minus ORT PSNR against
HR. On ONNX Runtime itself this is exact by definition ("reference runtime"). ORT runs QDQ
graphs as fake-quant (several seconds per 1080p frame on a CPU); ``conformance=False`` skips it,
and the gate then fails the report.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from ..artifacts import (check_folder_creatable, check_not_input, command_line, sha256_file,
                         sidecar_path, tool_versions)
from ..backends import RUNTIMES, Runner, get_runner
from ..backends.openvino import openvino_isa
from ..data import get_dataset, imresize, to_uint8
from ..data.datasets import default_set_name, split_for
from ..errors import UserError
from ..metrics import PROTOCOLS, evaluate, psnr
from ..onnx_utils import load_model
from ..graph_analysis import ReceptiveField, receptive_field, sr_graph
from ..upscaling import upscale
from ..record import Link, chain_value, lineage, parent_file, read_record
from ..defaults import progress_off
from ..cpu import detect_cpu

PROTOCOL_CHOICES = (*PROTOCOLS, "both")
ENGINE_SUFFIXES = (".plan", ".engine")
METRICS = ("psnr", "ssim")
CROP_SIZE = 128  # HR pixels of the worst-crop figure
_EXTRA_VERSIONS = ("openvino", "tensorrt", "cuda-python", "matplotlib", "opencv-python-headless",
                   "opencv-python", "scikit-image")
_PRECISIONS = {"onnx-fp32": "fp32", "onnx-int8-qdq": "int8"}
REFERENCE_RUNTIME = "ort"  # whose results define a QDQ graph's semantics
CHECKED, REFERENCE, SKIPPED = "checked", "reference runtime", "skipped (--no-conformance)"


@dataclass
class Subject:
    """One model under test: its file, runtime, ONNX graph, sidecars and graph settings."""

    role: str  # candidate | reference
    path: Path
    runtime: str
    onnx_path: Path  # the graph itself, or the ONNX an engine was built from
    chain: list[Link]
    graph_hw: tuple[int, int]
    scale: int
    input_range: int
    precision: str
    field: ReceptiveField
    isa: str | None = None  # OpenVINO capped to this instruction set ($RCAN_DEPLOY_OPENVINO_ISA)

    @property
    def label(self) -> str:
        isa = f", {self.isa}" if self.isa else ""
        return f"{self.precision.upper()} ({self.runtime}{isa})"

    def describe(self) -> dict:
        record = self.chain[0].record
        return {"path": str(self.path), "runtime": self.runtime,
                "kind": record.kind if record else None,
                "precision": self.precision, "label": self.label, "onnx": str(self.onnx_path),
                "graph_shape": [1, 3, *self.graph_hw], "scale": self.scale,
                "input_range": self.input_range, "global_pooling": self.field.global_pooling,
                "openvino_isa": self.isa,
                "sha256": record.sha256 if record else None}


@dataclass
class WorstCrop:
    """Crops (HR pixels) of the image where the candidate loses most: against the reference,
    else against bicubic; ``error`` is the mean absolute difference (0..255) that placed it."""

    image: str
    box: tuple[int, int, int, int]  # top, left, height, width
    against: str  # reference | bicubic
    score: float  # candidate minus ``against`` PSNR, dB
    protocol: str
    panels: list[tuple[str, np.ndarray, float | None]]  # label, uint8 crop, image PSNR
    error: np.ndarray
    error_label: str

    def describe(self) -> dict:
        return {"image": self.image, "box": list(self.box), "against": self.against,
                "score_db": self.score,
                "protocol": self.protocol, "error": self.error_label,
                "panels": [{"label": label, "psnr": value} for label, _, value in self.panels]}


@dataclass
class BenchResult:
    """Everything a bench run measured; truthy when at least one image ran."""

    candidate: dict
    reference: dict | None
    model: dict  # source, variant, scale, input_range
    dataset: dict
    protocols: list[str]
    images: list[dict]
    summary: dict
    latency: dict
    costs: dict
    provenance: dict
    worst: WorstCrop | None = field(default=None, repr=False)
    conformance: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.images)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "worst"}
        data["worst"] = self.worst.describe() if self.worst else None
        return data


def bench(engine: str | Path | None = None, model: str | Path | None = None,
          runtime: str | None = None, reference: str | Path | None = None,
          dataset: str | None = None, scale: int | None = None,
          input_range: int | None = None, protocol: str = "standard",
          limit: int | None = None, warmup: int = 1, repeat: int = 3,
          data_root: str | Path | None = None, out: str | Path | None = None,
          progress: bool | None = None, conformance: bool = True) -> BenchResult:
    """Measure quality and latency of ``engine`` (TensorRT) or ``model`` (ONNX on ``runtime``:
    ort by default, openvino, torch) against ``reference`` (default: the FP32 graph found
    through the sidecars; none for an FP32 candidate). ``dataset`` defaults to div2k_valid when
    present, else the held-out split of samples (``samples`` always means that split here).
    ``out``: also write the report there (:func:`rcan_deploy.benchmark.write_report`). A graph
    without sidecar needs ``input_range`` (and ``scale`` unless its shapes tell); its report
    records no provenance. ``conformance``: also run the candidate's graph on ONNX Runtime and
    compare (see the module docstring)."""
    if (engine is None) == (model is None):
        raise UserError("pass exactly one MODEL: an ONNX graph or a TensorRT engine")
    if protocol not in PROTOCOL_CHOICES:
        raise UserError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOL_CHOICES)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected at least 1")
    if warmup < 0 or repeat < 1:
        raise UserError(f"--warmup {warmup} --repeat {repeat}: expected warmup >= 0, repeat >= 1")
    if engine is not None and runtime not in (None, "tensorrt"):
        raise UserError(f"--runtime {runtime}: an engine (.plan) runs on TensorRT; drop --runtime")
    candidate = _subject("candidate", engine if engine is not None else model,
                         "tensorrt" if engine is not None else runtime or RUNTIMES[0], scale,
                         input_range)
    ref, discovered, link = _reference(candidate, reference)
    data, chosen = _dataset(dataset, candidate.scale, data_root)
    pairs = data.pairs[:limit] if limit else data.pairs
    _check_sizes(pairs, candidate.scale)
    if out is not None:
        check_folder_creatable(Path(out))
        for name in ("report.json", "report.md"):
            check_not_input(Path(out) / name, [candidate.path, ref.path if ref else None])
    protocols = list(PROTOCOLS) if protocol == "both" else [protocol]
    subjects = [s for s in (candidate, ref) if s is not None]
    status = (REFERENCE if candidate.runtime == REFERENCE_RUNTIME else
              CHECKED if conformance else SKIPPED)
    with ExitStack() as stack:
        runners = [stack.enter_context(get_runner(s.runtime, s.path)) for s in subjects]
        ort = (stack.enter_context(get_runner(REFERENCE_RUNTIME, candidate.onnx_path))
               if status == CHECKED else None)
        rows, worst = _quality(subjects, runners, pairs, protocols, chosen, progress, ort)
        latency = {s.role: _latency(r, s, warmup, repeat) for s, r in zip(subjects, runners)}
    costs = {s.role: _costs(s) for s in subjects}
    artifacts = {str(link.path): link.record.to_json() if link.record else None
                 for link in [*(l for s in subjects for l in s.chain), *discovered]}
    result = BenchResult(
        candidate=candidate.describe(), reference=ref.describe() if ref else None,
        model={"source": chain_value(candidate.chain, "source"),
               "variant": chain_value(candidate.chain, "variant"),
               "scale": candidate.scale, "input_range": candidate.input_range,
               "config": chain_value(candidate.chain, "config")},
        dataset={**data.describe(), "count": len(pairs), "limit": limit, "chosen": chosen},
        protocols=protocols, images=rows, summary=summarize(rows, protocols), latency=latency,
        costs=costs,
        provenance={"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": command_line(),
                    "reference_found_by": ("--reference" if reference is not None else
                                           "sidecar chain" if ref else None),
                    "reference_link": link,
                    "candidate_provenance": ("recorded" if candidate.chain[0].record and
                                             candidate.chain[0].record.has_provenance else
                                             "none (no sidecar)" if not candidate.chain[0].record
                                             else "none (graph brought without provenance)"),
                    "artifacts": artifacts, "versions": tool_versions(_EXTRA_VERSIONS),
                    "cpu": detect_cpu().to_dict()},
        worst=worst, conformance=_conformance_summary(status, candidate, rows, protocols))
    if out is not None:
        from .report import write_report

        write_report(result, out)
    return result


def summarize(rows: list[dict], protocols: list[str]) -> dict:
    """Mean PSNR/SSIM per protocol of candidate, reference, bicubic and of the per-image
    candidate-minus-reference deltas."""
    summary = {}
    for protocol in protocols:
        entry = {}
        for who in ("candidate", "reference", "bicubic", "delta"):
            if rows and rows[0].get(who) is not None:
                entry[who] = {m: float(np.mean([row[who][protocol][m] for row in rows]))
                              for m in METRICS}
        summary[protocol] = entry
    return summary


def _subject(role: str, path: str | Path, runtime: str, scale: int | None,
             input_range: int | None) -> Subject:
    """A model under test. Scale and input range come from its record (the flags must agree),
    else from ``scale`` (or the graph's shapes) and ``input_range``: a graph brought without
    sidecar runs with no provenance."""
    path = Path(path)
    flag = ("--reference" if role == "reference" else "MODEL")
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    record = read_record(path)
    if record is None and runtime == "tensorrt":
        raise UserError(f"{flag} {path}: an engine needs its sidecar {sidecar_path(path).name}, "
                        "which names the ONNX graph it was built from")
    chain = [Link(path, record)]
    onnx_path = path
    if runtime == "tensorrt":
        if record.parent is None:
            raise UserError(f"{sidecar_path(path)}: no parent entry naming the engine's ONNX")
        onnx_path = parent_file(path, record.parent)
        chain.append(Link(onnx_path, read_record(onnx_path)))
    graph = sr_graph(onnx_path)
    recorded_shape = chain_value(chain, "input_shape") if runtime == "tensorrt" else None
    shape = recorded_shape or graph.input_shape
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise UserError(f"{flag} {path}: input shape {shape} is not fixed; bench needs a "
                        "fixed-shape graph (export --shape HxW)")
    recorded = chain_value(chain, "scale")
    if scale is not None and recorded is not None and int(recorded) != scale:
        other = "--scale" if role == "candidate" else "the candidate"
        raise UserError(f"{flag} {path}: its sidecar says x{recorded}, {other} x{scale}")
    scale = graph.check_scale(recorded or scale, sidecar_path(path) if recorded else "--scale")
    recorded_range = chain_value(chain, "input_range")
    if input_range is not None and recorded_range is not None and recorded_range != input_range:
        raise UserError(f"--input-range {input_range}, but the sidecar of {path} records "
                        f"{recorded_range}")
    input_range = recorded_range or input_range
    if input_range is None:
        raise UserError(f"{flag} {path}: no sidecar says its input range; pass --input-range 1|255")
    if record is not None:
        precision = record.sections.get("precision") or _PRECISIONS.get(record.kind, "unknown")
    else:
        precision = "int8" if graph.quantized else "fp32"
    if runtime == "torch":  # TorchRunner always runs the FP32 network behind the graph
        precision = "fp32"
    return Subject(role, path, runtime, onnx_path, chain, (shape[2], shape[3]), scale,
                   int(input_range), str(precision), receptive_field(graph.model),
                   openvino_isa() if runtime == "openvino" else None)


def _reference(candidate: Subject, reference: str | Path | None
               ) -> tuple[Subject | None, list[Link], str]:
    """The reference subject, the sidecar chain walked to find it, and how the reference is
    linked to the candidate: ``verified`` (an ancestor, by sha256), ``unlinked`` (the candidate
    has no record), ``mismatch`` (not in the candidate's recorded lineage) or ``none``."""
    onnx_runtime = candidate.runtime if candidate.runtime in ("ort", "openvino") else "ort"
    if reference is not None:
        path = Path(reference)
        runtime = "tensorrt" if path.suffix in ENGINE_SUFFIXES else onnx_runtime
        ref = _subject("reference", path, runtime, candidate.scale, candidate.input_range)
        return ref, [], _link(candidate, ref)
    if candidate.chain[0].record is None:
        return None, [], "none"
    chain = lineage(candidate.path)  # a parent replaced since: UserError, the chain is broken
    fp32 = chain[-1].path
    if fp32.resolve() == candidate.path.resolve():
        return None, [], "none"
    ref = _subject("reference", fp32, onnx_runtime, candidate.scale,
                   candidate.input_range if chain[-1].record is None else None)
    return ref, chain, "verified"


def _link(candidate: Subject, ref: Subject) -> str:
    """How an explicit --reference relates to the candidate's recorded lineage."""
    record = candidate.chain[0].record
    if record is None:
        return "unlinked"
    ancestors, path = set(), candidate.path
    while record is not None and record.parent is not None:
        ancestors.add(record.parent.get("sha256"))
        try:
            path = parent_file(path, record.parent)
            record = read_record(path)
        except UserError:
            break
    own = ref.chain[0].record
    shas = {sha256_file(ref.path), *((own.parent or {}).get("sha256") for own in [own] if own)}
    return "verified" if shas & ancestors else "mismatch"


def _dataset(name: str | None, scale: int, data_root):
    """The data set and a line saying how it was chosen."""
    if name is not None:
        split = split_for(name, "heldout")
        data = get_dataset(name, scale, data_root, split=split)
        return data, f"--dataset {name}" + (" (held-out split)" if split else "")
    name = default_set_name(scale, data_root)
    split = split_for(name, "heldout")
    why = {"div2k_valid": "found", "photos": "div2k_valid not found under the data root",
           "samples": "neither div2k_valid nor photos found under the data root"}[name]
    data = get_dataset(name, scale, data_root, split=split)
    return data, f"default: {name}" + (f" {split} split" if split else "") + f" ({why})"


SSIM_WINDOW = 11  # the Gaussian window; SSIM with 'valid' borders needs at least this many pixels


def _check_sizes(pairs, scale: int) -> None:
    """UserError naming the first image too small for the metrics (the standard protocol crops
    ``scale`` pixels on each border before the 11x11 SSIM window)."""
    least = SSIM_WINDOW + 2 * scale
    for pair in pairs:
        height, width = pair.lr_size()
        if min(height, width) * scale < least:
            raise UserError(f"{pair.lr_path or pair.hr_path}: {width}x{height} LR is too small "
                            f"for the metrics (the x{scale} output must be at least {least} "
                            "pixels on each side)")


def _quality(subjects: list[Subject], runners: list[Runner], pairs, protocols: list[str],
             chosen: str, progress: bool, ort: Runner | None = None
             ) -> tuple[list[dict], WorstCrop | None]:
    from tqdm import tqdm

    has_reference = len(subjects) > 1
    rows: list[dict] = []
    worst: WorstCrop | None = None
    bar = tqdm(pairs, desc="bench", unit="img", disable=progress_off(progress), file=sys.stderr)
    scale = subjects[0].scale
    for pair in bar:
        lr, hr = pair.load()
        hr8 = to_uint8(hr)
        row: dict = {"image": pair.name, "lr_size": list(lr.shape[:2]),
                     "hr_size": list(hr8.shape[:2])}
        outputs = {}
        for subject, runner in zip(subjects, runners):
            start = time.perf_counter()
            sr, route = upscale(runner, lr, subject.graph_hw, scale, subject.input_range,
                                field=subject.field)
            outputs[subject.role] = sr * 255.0
            row[subject.role] = {**route, "seconds": time.perf_counter() - start,
                                 **_metrics(outputs[subject.role], hr8, scale, protocols)}
        if ort is not None:
            row["conformance"] = _conformance(ort, subjects[0], lr, hr8, outputs["candidate"],
                                              row["candidate"], protocols)
        outputs["bicubic"] = imresize(lr, scale).astype(np.float32) * 255.0
        row["bicubic"] = _metrics(outputs["bicubic"], hr8, scale, protocols)
        row["delta"] = ({p: {m: row["candidate"][p][m] - row["reference"][p][m] for m in METRICS}
                         for p in protocols} if has_reference else None)
        rows.append(row)
        mean_psnr = np.mean([r["candidate"][protocols[0]]["psnr"] for r in rows])
        bar.set_postfix(psnr=f"{mean_psnr:.3f}")
        worst = _worse(worst, row, outputs, hr8, subjects, protocols[0])
    return rows, worst


def _metrics(sr: np.ndarray, hr8: np.ndarray, scale: int, protocols: list[str]) -> dict:
    return {p: evaluate(sr, hr8, scale, p) for p in protocols}


def _conformance(ort: Runner, subject: Subject, lr: np.ndarray, hr8: np.ndarray,
                 output: np.ndarray, measured: dict, protocols: list[str]) -> dict:
    """The candidate's output on its runtime against ONNX Runtime's on the same graph."""
    start = time.perf_counter()
    sr, _ = upscale(ort, lr, subject.graph_hw, subject.scale, subject.input_range,
                    field=subject.field)
    sr = sr * 255.0
    seconds = time.perf_counter() - start
    error = float(np.abs(np.clip(output, 0, 255) - np.clip(sr, 0, 255)).max())
    against = psnr(output, sr, 0, y_channel=False)
    ort_metrics = _metrics(sr, hr8, subject.scale, protocols)
    return {"max_abs_error": error, "psnr_vs_ort": against if np.isfinite(against) else None,
            "ort": ort_metrics, "seconds": seconds,
            "psnr_delta": {p: measured[p]["psnr"] - ort_metrics[p]["psnr"] for p in protocols}}


def _conformance_summary(status: str, candidate: Subject, rows: list[dict],
                         protocols: list[str]) -> dict:
    """How the runtime agrees with ONNX Runtime: the status and, when checked, the worst
    figures over the images (and which image)."""
    entry = {"status": status, "runtime": candidate.runtime, "openvino_isa": candidate.isa,
             "reference_runtime": REFERENCE_RUNTIME, "graph": str(candidate.onnx_path)}
    checked = [row for row in rows if row.get("conformance")]
    if status != CHECKED or not checked:
        return entry
    error = max(checked, key=lambda row: row["conformance"]["max_abs_error"])
    against = min(checked, key=lambda row: row["conformance"]["psnr_vs_ort"] or float("inf"))
    entry["worst"] = {
        "max_abs_error": {"image": error["image"],
                          "value": error["conformance"]["max_abs_error"]},
        "psnr_vs_ort": {"image": against["image"],
                        "value": against["conformance"]["psnr_vs_ort"]}}
    for protocol in protocols:
        row = max(checked, key=lambda r: abs(r["conformance"]["psnr_delta"][protocol]))
        entry["worst"][f"psnr_delta_{protocol}"] = {
            "image": row["image"], "value": row["conformance"]["psnr_delta"][protocol]}
    return entry


def _worse(worst: WorstCrop | None, row: dict, outputs: dict, hr8: np.ndarray,
           subjects: list[Subject], protocol: str) -> WorstCrop | None:
    """``worst``, or this image when the candidate loses more here (against the reference,
    else against bicubic); the crop is centred on the largest local mean error."""
    against = "reference" if "reference" in outputs else "bicubic"
    score = row["candidate"][protocol]["psnr"] - row[against][protocol]["psnr"]
    if worst is not None and score >= worst.score:
        return worst
    baseline = outputs["reference"] if against == "reference" else hr8.astype(np.float32)
    error = np.abs(outputs["candidate"] - baseline).mean(axis=2)
    height, width = error.shape
    size = min(CROP_SIZE, height, width)
    local = cv2.blur(error, (size, size), borderType=cv2.BORDER_CONSTANT)
    cy, cx = np.unravel_index(int(np.argmax(local)), local.shape)
    top = int(min(max(cy - size // 2, 0), height - size))
    left = int(min(max(cx - size // 2, 0), width - size))
    window = (slice(top, top + size), slice(left, left + size))
    labels = {"bicubic": "Bicubic", **{s.role: s.label for s in subjects}}
    panels = [(labels[who], to_uint8(outputs[who][window] / 255.0), row[who][protocol]["psnr"])
              for who in ("bicubic", "reference", "candidate") if who in outputs]
    panels.append(("HR", hr8[window], None))
    error_label = (f"|{labels['candidate']} - {labels['reference']}|" if against == "reference"
                   else f"|{labels['candidate']} - HR|")
    return WorstCrop(row["image"], (top, left, size, size), against, score, protocol, panels,
                     error[window], error_label)


def _latency(runner: Runner, subject: Subject, warmup: int, repeat: int) -> dict:
    """Median / p90 wall seconds (host copies included) of ``repeat`` runs after ``warmup`` at
    the graph's fixed shape; runners that time the device alone add ``gpu_median_s``."""
    height, width = subject.graph_hw
    rng = np.random.default_rng(0)
    x = (rng.random((1, 3, height, width)) * subject.input_range).astype(np.float32)
    times = runner.time(x, warmup, repeat)
    median = float(np.median(times))
    output_mpix = height * width * subject.scale**2 / 1e6
    timing = {"runtime": subject.runtime, "shape": [1, 3, height, width], "warmup": warmup,
              "repeat": repeat, "seconds": times, "median_s": median,
              "p90_s": float(np.percentile(times, 90)), "fps": 1.0 / median,
              "output_mpix_per_s": output_mpix / median}
    gpu_times = getattr(runner, "gpu_times", None)  # TensorRT: engine time without copies
    if gpu_times:
        timing["gpu_median_s"] = float(np.median(gpu_times[-repeat:]))
    return timing


def _costs(subject: Subject) -> dict:
    """What the graph executes, and the architecture's figures when an optimizer changed them."""
    from ..costs import architecture_costs, model_info

    info = model_info(load_model(subject.onnx_path))
    recorded = chain_value(subject.chain, "architecture")
    return {"onnx": str(subject.onnx_path), **info,
            "architecture": architecture_costs(info, recorded)}


