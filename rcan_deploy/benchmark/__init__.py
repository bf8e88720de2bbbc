"""Benchmark harness: quality and latency against the FP32 reference, reports, CI gate.

``bench(...)`` runs a candidate (INT8 graph or engine) and its reference over a data set,
``write_report(result, out_dir)`` writes report.json / report.md / PNG figures, and
``gate(report_json)`` checks the drop budgets (truthy on pass).
"""

from .gate import GateResult, gate
from .report import write_report
from .run import BenchResult, bench

__all__ = ["BenchResult", "GateResult", "bench", "gate", "write_report"]
