"""What is inside a TensorRT engine: I/O tensors, layers and the precision each layer runs in.

Per-layer precisions come from TensorRT's engine inspector (JSON), which has them only for
engines built with ``--profile-verbosity detailed``; other engines list layer names only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..record import read_record
from . import require_cudart, require_tensorrt
from .engine import io_tensors, load_engine

# Tokens of TensorRT's "Format/Datatype" strings ("Row major linear FP32", "Channel major FP16
# format where channel % 8 == 0", "Thirty-two wide channel vectorized row major Int8 format",
# "Half", ...) and the precision each names.
_PRECISION_TOKENS = {"int8": "INT8", "uint8": "UINT8", "fp16": "FP16", "half": "FP16",
                     "bfloat16": "BF16", "fp8": "FP8", "fp32": "FP32", "float": "FP32",
                     "int32": "INT32", "int64": "INT64", "bool": "BOOL"}
NO_DETAIL_NOTE = ("built without detailed profiling: per-layer precisions are unknown (rebuild "
                  "with rcan-deploy build --profile-verbosity detailed)")


def tensor_precision(fmt: str) -> str:
    """The precision a TensorRT "Format/Datatype" string names ("unknown" if none)."""
    for token in re.findall(r"[a-z0-9]+", fmt.lower()):
        if token in _PRECISION_TOKENS:
            return _PRECISION_TOKENS[token]
    return "unknown"


def summarize_layers(info: str) -> dict[str, Any]:
    """Parse ``IEngineInspector.get_engine_information(JSON)``: layers (name, type, precision of
    the first input, else of the first output) and a count per precision when detailed."""
    try:
        layers = json.loads(info).get("Layers", []) if info.strip() else []
    except json.JSONDecodeError:
        layers = []
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        return {"detailed": False, "layers": [{"name": str(name)} for name in layers],
                "precisions": {}, "note": NO_DETAIL_NOTE}
    rows = []
    for layer in layers:
        tensors = layer.get("Inputs") or layer.get("Outputs") or []
        fmt = tensors[0].get("Format/Datatype", "") if tensors else ""
        rows.append({"name": layer.get("Name", ""),
                     "type": layer.get("ParameterType") or layer.get("LayerType", ""),
                     "precision": tensor_precision(fmt)})
    counts = Counter(row["precision"] for row in rows)
    return {"detailed": True, "layers": rows, "precisions": dict(counts.most_common())}


def inspect_engine(engine_path: str | Path) -> dict[str, Any]:
    """Describe an engine: TensorRT and GPU here and at build time (from the sidecar), I/O
    tensors, and layers with their precisions (see :func:`summarize_layers`)."""
    trt = require_tensorrt()
    path = Path(engine_path)
    loaded = load_engine(trt, require_cudart(), path)
    engine, gpu = loaded.engine, loaded.gpu
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    record = read_record(path)
    sections = record.sections if record else {}
    built_with = ({"tensorrt": sections["tensorrt"].get("version"), "gpu": sections.get("gpu"),
                   "precision": sections.get("precision")} if "tensorrt" in sections else None)
    result = {"engine": str(path), "tensorrt": trt.__version__,
              "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
              "built_with": built_with, "io": io_tensors(trt, engine),
              "num_layers": engine.num_layers, **summarize_layers(info)}
    del inspector, engine, loaded  # inspector, engine, then runtime
    return result
