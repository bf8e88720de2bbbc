"""What is inside a TensorRT engine: I/O tensors, layers and the precision each layer runs in.

Per-layer precisions come from TensorRT's engine inspector (JSON), which has them only for
engines built with ``--profile-verbosity detailed``; other engines list layer names only. Each
layer tensor describes its precision in TensorRT 10.x as one "Format/Datatype" string ("Row
major linear FP32", "Thirty-two wide channel vectorized row major Int8 format", "Half"); TensorRT
11.x split it into a format field and a data-type field (NVIDIA's 10.x -> 11.x IEngineInspector
migration guide; its I/O-tensor example names them "Format" and "DataType"). The data type is
read first, then the format string, so both schemas work.
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

# Tokens of TensorRT's data-type and format strings and the precision each names.
_PRECISION_TOKENS = {"int8": "INT8", "uint8": "UINT8", "fp16": "FP16", "half": "FP16",
                     "float16": "FP16", "bf16": "BF16", "bfloat16": "BF16", "fp8": "FP8",
                     "fp4": "FP4", "int4": "INT4", "fp32": "FP32", "float": "FP32",
                     "float32": "FP32", "int32": "INT32", "int64": "INT64", "bool": "BOOL"}
# Field names of a tensor's precision: 11.x data type (spellings seen in NVIDIA's docs), then
# the 10.x combined string, then a bare format.
_TYPE_FIELDS = ("DataType", "Datatype", "Data Type")
_FORMAT_FIELDS = ("Format/Datatype", "Format/DataType", "Format")
# Layers that only copy or re-lay data (format conversions between precisions): listed, but not
# counted as layers running in a precision.
_COPY_LAYER_TYPES = ("Reformat", "NoOp")
NO_DETAIL_NOTE = ("built without detailed profiling: per-layer precisions are unknown (rebuild "
                  "with rcan-deploy build --profile-verbosity detailed)")


def tensor_precision(text: str) -> str:
    """The precision a TensorRT data-type or format string names ("unknown" if none)."""
    for token in re.findall(r"[a-z0-9]+", str(text).lower()):
        if token in _PRECISION_TOKENS:
            return _PRECISION_TOKENS[token]
    return "unknown"


def layer_tensor_precision(tensor: dict[str, Any]) -> str:
    """The precision of one layer input/output of either schema (10.x or 11.x)."""
    for field in (*_TYPE_FIELDS, *_FORMAT_FIELDS):
        if field in tensor:
            precision = tensor_precision(tensor[field])
            if precision != "unknown":
                return precision
    return "unknown"


def is_copy_layer(layer: dict[str, Any]) -> bool:
    """A reformatting copy or no-op layer (TensorRT inserts them between formats/precisions)."""
    return (layer.get("LayerType") in _COPY_LAYER_TYPES
            or str(layer.get("Name", "")).startswith("Reformatting CopyNode"))


def summarize_layers(info: str) -> dict[str, Any]:
    """Parse ``EngineInspector.get_engine_information(JSON)``: layers (name, type, precision of
    the first input, else of the first output, whether it is a copy) and, when detailed, how
    many non-copy layers run in each precision."""
    try:
        layers = json.loads(info).get("Layers", []) if info.strip() else []
    except json.JSONDecodeError:
        layers = []
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        return {"detailed": False, "layers": [{"name": str(name)} for name in layers],
                "precisions": {}, "copy_layers": 0, "note": NO_DETAIL_NOTE}
    rows = []
    for layer in layers:
        tensors = layer.get("Inputs") or layer.get("Outputs") or []
        precision = layer_tensor_precision(tensors[0]) if tensors else "unknown"
        rows.append({"name": layer.get("Name", ""),
                     "type": layer.get("ParameterType") or layer.get("LayerType", ""),
                     "precision": precision, "copy": is_copy_layer(layer)})
    counts = Counter(row["precision"] for row in rows if not row["copy"])
    return {"detailed": True, "layers": rows, "precisions": dict(counts.most_common()),
            "copy_layers": sum(row["copy"] for row in rows)}


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
