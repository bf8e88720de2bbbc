"""CI accuracy gate on a bench ``report.json``.

Checks, for every protocol in the report:

- PSNR drop = reference mean PSNR - candidate mean PSNR <= ``max_psnr_drop``. Default 0.1 dB:
  a good INT8 PTQ of these small CNNs with per-channel weights stays within about 0.1 dB of FP32
  (DESIGN.md section 6); VastModelZOO's max-calibrated INT8 rows lose 0.16 and 0.57 dB and fail.
- Worst image (standard protocol): the largest per-image PSNR drop <= ``max_worst_psnr_drop``
  (default 0.3 dB): a mean can hide one dark or smooth photograph that INT8 ruins. (The vacc
  protocol scores unrounded RGB, where the same INT8 noise weighs more; its means are gated.)
- SSIM drop, likewise, <= ``max_ssim_drop``. Default 0.005: on the shipped SR4K model a PSNR
  drop of about 0.05 dB came with SSIM drops of 0.002 (standard, Y) to 0.004 (vacc, RGB), so
  0.005 matches the 0.1 dB PSNR budget; VastModelZOO's INT8 rows lose 0.010-0.011 and fail.
- With a ``baseline`` report (same data set): candidate mean PSNR at most ``tolerance`` dB
  (default 0.05) below the baseline's candidate, so a new build cannot regress unnoticed.
- The reference is the candidate's FP32 ancestor by sha256 (``provenance.reference_link``
  ``verified``), or the candidate has no record to check it against (``unlinked``); a
  ``mismatch`` or an unknown link fails, and so does a report with no metric to check.
- Runtime conformance: on every image, |PSNR(runtime) - PSNR(ONNX Runtime)| against HR on the
  same graph <= ``max_runtime_deviation`` (default 0.02 dB) in each protocol. A runtime that
  departs from its own graph (e.g. int8 convolutions that saturate on a CPU without VNNI) fails,
  with one row per failing image. A report of a non-ORT runtime without these figures (made with
  ``--no-conformance``, or by an older version) fails too: the gate does not pass what it did
  not check. On ONNX Runtime itself the check holds by definition ("reference runtime").
- A summary value that is not a number (null, a string, missing) is a malformed report: exit 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

MAX_PSNR_DROP = 0.1
MAX_WORST_PSNR_DROP = 0.3
MAX_SSIM_DROP = 0.005
TOLERANCE = 0.05
MAX_RUNTIME_DEVIATION = 0.02
REFERENCE_RUNTIME = "ort"


@dataclass
class GateResult:
    """The checks of one gate run (rows of metric, value, limit, ok); truthy when all pass."""

    report: str
    rows: list[dict]

    def __bool__(self) -> bool:
        return all(row["ok"] for row in self.rows)

    @property
    def failures(self) -> list[dict]:
        return [row for row in self.rows if not row["ok"]]

    def summary(self) -> str:
        """One line: passed, or which checks failed by how much."""
        if self:
            return f"gate passed: {len(self.rows)} checks within limits ({self.report})"
        return "gate failed: " + "; ".join(f"{row['metric']} {row['value']:.4f} > {row['limit']}"
                                           if isinstance(row["limit"], (int, float))
                                           and not math.isnan(row["value"]) else row["metric"]
                                           for row in self.failures if not row.get("detail"))

    def table(self) -> str:
        width = max([42, *(len(row["metric"]) for row in self.rows)])
        lines = [f"{'check':<{width}} {'value':>10} {'limit':>8}  result"]
        lines += [f"{row['metric']:<{width}} {row['value']:>10.4f} {str(row['limit']):>8}  "
                  f"{'ok' if row['ok'] else 'FAIL'}" for row in self.rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": bool(self)}


def gate(report_json: str | Path, baseline: str | Path | None = None,
         max_psnr_drop: float = MAX_PSNR_DROP, max_ssim_drop: float = MAX_SSIM_DROP,
         tolerance: float = TOLERANCE,
         max_runtime_deviation: float = MAX_RUNTIME_DEVIATION,
         max_worst_psnr_drop: float = MAX_WORST_PSNR_DROP) -> GateResult:
    """Check a bench report against the drop budgets (and a baseline report); see the module
    docstring. Unusable input (missing file, not JSON, no reference) is a UserError."""
    for flag, value in (("--max-psnr-drop", max_psnr_drop), ("--max-ssim-drop", max_ssim_drop),
                        ("--max-worst-psnr-drop", max_worst_psnr_drop), ("tolerance", tolerance),
                        ("--max-runtime-deviation", max_runtime_deviation)):
        if not value >= 0:
            raise UserError(f"{flag} {value}: expected a non-negative number")
    report = _load(report_json)
    if not report.get("reference"):
        raise UserError(f"{report_json}: the report has no reference, so there is no drop to gate "
                        "(bench an INT8 graph or engine, or pass --reference)")
    rows = [_link_row(report)]
    for protocol, entry in report["summary"].items():
        for metric, limit in (("psnr", max_psnr_drop), ("ssim", max_ssim_drop)):
            drop = (_mean(entry, "reference", metric, protocol, report_json)
                    - _mean(entry, "candidate", metric, protocol, report_json))
            rows.append(_row(f"{metric.upper()} drop vs reference ({protocol})", drop, limit))
        if protocol == "standard":
            rows += _worst_image_row(report, protocol, max_worst_psnr_drop, report_json)
    if len(rows) == 1:
        rows.append({"metric": "metrics checked", "value": 0.0, "limit": ">= 1", "ok": False})
    rows += _conformance_rows(report, report_json, max_runtime_deviation)
    if baseline is not None:
        rows += _baseline_rows(report, report_json, _load(baseline), baseline, tolerance)
    return GateResult(str(report_json), rows)


_LINKS = {"verified": 1.0, "unlinked": 1.0}


def _link_row(report: dict) -> dict:
    """The reference must be the candidate's recorded FP32 ancestor (``verified``), or the
    candidate must have no record to check it against (``unlinked``)."""
    link = (report.get("provenance") or {}).get("reference_link")
    return {"metric": f"reference link to candidate ({link or 'unknown'})",
            "value": _LINKS.get(link, 0.0), "limit": "1", "ok": link in _LINKS}


def _mean(entry, who: str, metric: str, protocol: str, where) -> float:
    """A mean from a report summary; UserError (malformed report) unless it is a number."""
    value = entry.get(who, {}).get(metric) if isinstance(entry, dict) and \
        isinstance(entry.get(who), dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: summary[{protocol!r}].{who}.{metric} is "
                        f"{json.dumps(value)}, expected a number (a malformed report)")
    return float(value)


def _row(metric: str, value: float, limit: float) -> dict:
    return {"metric": metric, "value": float(value), "limit": limit,
            "ok": bool(not math.isnan(value) and value <= limit)}


def _worst_image_row(report: dict, protocol: str, limit: float, where) -> list[dict]:
    """The largest per-image PSNR drop against the reference (no row without image rows)."""
    drops = {}
    for image in report.get("images") or []:
        delta = ((image.get("delta") or {}).get(protocol) or {}).get("psnr")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise UserError(f"{where}: image {image.get('image')!r} has no PSNR delta for "
                            f"{protocol} (a malformed report)")
        drops[image["image"]] = -float(delta)
    if not drops:
        return []
    worst = max(drops, key=drops.get)
    return [_row(f"PSNR drop, worst image {worst[:24]} ({protocol})", drops[worst], limit)]


def _conformance_rows(report: dict, where, limit: float) -> list[dict]:
    """The worst |runtime - ONNX Runtime| PSNR difference per protocol, and a row per image
    beyond ``limit``; one failing row when the figures are missing."""
    runtime = (report.get("candidate") or {}).get("runtime")
    entry = report.get("conformance") or {}
    if runtime == REFERENCE_RUNTIME:
        return [{"metric": "runtime conformance (ONNX Runtime: reference runtime)",
                 "value": 0.0, "limit": limit, "ok": True}]
    if entry.get("status") != "checked" or not report.get("images"):
        status = entry.get("status") or "no figures in the report"
        return [{"metric": f"runtime conformance of {runtime} vs ONNX Runtime ({status})",
                 "value": float("nan"), "limit": limit, "ok": False}]
    rows = []
    for protocol in report["summary"]:
        deviations = {}
        for image in report["images"]:
            value = ((image.get("conformance") or {}).get("psnr_delta") or {}).get(protocol)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{where}: image {image.get('image')!r} has no runtime "
                                f"conformance figure for {protocol} (a malformed report)")
            deviations[image["image"]] = abs(float(value))
        worst = max(deviations, key=deviations.get)
        rows.append(_row(f"|PSNR {runtime} - ONNX Runtime|, worst image ({protocol})",
                         deviations[worst], limit))
        rows += [{**_row(f"  {name[:30]} ({protocol})", value, limit), "detail": True}
                 for name, value in deviations.items() if not value <= limit]
    return rows


def _baseline_rows(report: dict, report_path, base: dict, base_path, tolerance: float) -> list:
    ours, theirs = (_dataset_key(d["dataset"]) for d in (report, base))
    if ours != theirs:
        raise UserError(f"--baseline {base_path} was measured on {theirs} but {report_path} on "
                        f"{ours}; compare reports of the same images")
    shared = [p for p in report["summary"] if p in base["summary"]]
    if not shared:
        raise UserError(f"--baseline {base_path} shares no protocol with {report_path}")
    return [_row(f"PSNR below baseline ({protocol})",
                 _mean(base["summary"][protocol], "candidate", "psnr", protocol, base_path)
                 - _mean(report["summary"][protocol], "candidate", "psnr", protocol, report_path),
                 tolerance)
            for protocol in shared]


def _dataset_key(dataset: dict) -> str:
    split = f" {dataset['split']}" if dataset.get("split") else ""
    return f"{dataset.get('name')}{split} x{dataset.get('scale')} ({dataset.get('count')} images)"


def _load(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such report (run 'rcan-deploy bench' first)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected its report.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON bench report ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) \
            or not isinstance(data.get("dataset"), dict):
        raise UserError(f"{path}: not a bench report (no summary and dataset entries)")
    return data
