"""Build a TensorRT engine from an ONNX graph (TensorRT 10.x and 11.x) and write its sidecar.

Builder -> strongly typed network -> ONNX parser -> builder config (workspace, timing cache,
profiling verbosity) -> serialized engine, written atomically with ``X.plan.json`` beside it.
Precisions (TensorRT 11 has no FP16/INT8 builder flags, so precision lives in the graph):

- ``int8``: a QDQ graph as is (``rcan-deploy quantize``); INT8 where the graph has Q/DQ.
- ``fp32``: a float graph as is, TF32 off.
- ``fp16``: an FP16 copy of a float graph (:func:`rcan_deploy.trt.fp16.fp16_graph`: modelopt
  AutoCast, nodes whose values leave the FP16-safe range on natural-image crops stay FP32).
- ``best``: TensorRT 10: the graph as is, weakly typed, with the FP16 (and, for a QDQ graph,
  INT8) builder flags, letting TensorRT pick per layer; TensorRT 11: the FP16 copy of the graph.

TensorRT's warnings (unfused Q/DQ nodes among them) are kept in the sidecar (``build.warnings``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from .. import defaults
from ..artifacts import atomic_path, check_destination
from ..errors import UserError, short_reason
from ..onnx_utils import input_shape, load_model
from ..record import Record, derive, publish, read_record
from . import require_cudart, require_tensorrt
from .device import current_gpu
from .engine import dtype_name, trt_logger

PRECISIONS = ("int8", "fp32", "fp16", "best")
PROFILE_VERBOSITIES = ("layer_names_only", "detailed", "none")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_EXTRA_VERSIONS = ("tensorrt", "cuda-python", "cuda-bindings", "nvidia-modelopt")


@dataclass(frozen=True)
class BuildOptions:
    """How to build. ``workspace_mb`` None: TensorRT's default (the GPU's memory);
    ``timing_cache``: a file read when present and written after the build."""

    precision: str = "int8"
    workspace_mb: int | None = None
    timing_cache: str | None = None
    profile_verbosity: str = "layer_names_only"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r}: expected one of "
                            f"{', '.join(PRECISIONS)}")
        if self.profile_verbosity not in PROFILE_VERBOSITIES:
            raise UserError(f"--profile-verbosity {self.profile_verbosity!r}: expected one of "
                            f"{', '.join(PROFILE_VERBOSITIES)}")
        if self.workspace_mb is not None and self.workspace_mb <= 0:
            raise UserError(f"--workspace {self.workspace_mb}: expected a positive number of MB")


@dataclass(frozen=True)
class NetworkPlan:
    """How a precision is realised on the installed TensorRT."""

    fp16_copy: bool  # parse the FP16 copy of the graph instead of the graph itself
    strongly_typed: bool
    set_flags: tuple[str, ...] = ()  # BuilderFlag names to set
    clear_flags: tuple[str, ...] = ()  # BuilderFlag names to clear (when the enum has them)


def network_plan(precision: str, has_qdq: bool, precision_flags: bool) -> NetworkPlan:
    """The plan for ``precision``; ``precision_flags``: BuilderFlag has FP16/INT8 (TensorRT 10)."""
    if precision == "fp32":
        return NetworkPlan(fp16_copy=False, strongly_typed=True, clear_flags=("TF32",))
    if precision == "int8":
        return NetworkPlan(fp16_copy=False, strongly_typed=True)
    if precision == "best" and precision_flags:
        return NetworkPlan(fp16_copy=False, strongly_typed=False,
                           set_flags=("FP16", "INT8") if has_qdq else ("FP16",))
    return NetworkPlan(fp16_copy=True, strongly_typed=True)  # fp16; best on TensorRT 11


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the graph has QuantizeLinear/DequantizeLinear nodes (explicit INT8)."""
    return any(node.op_type in _QDQ_OPS for node in model.graph.node)


def asymmetric_qdq_nodes(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes whose zero point is uint8 or non-zero: the form ``quantize --target cpu``
    makes for ONNX Runtime's CPU provider, which TensorRT (symmetric int8 only) cannot build."""
    consts = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS and len(node.input) > 2 and node.input[2] in consts:
            zero_point = consts[node.input[2]]
            if zero_point.data_type == onnx.TensorProto.UINT8 or \
                    onnx.numpy_helper.to_array(zero_point).any():
                found.append(node.name)
    return found


def check_graph(path: Path, model: onnx.ModelProto, precision: str) -> None:
    """UserError when the graph cannot give ``precision``: int8 needs Q/DQ nodes, fp32 and fp16
    need a float graph (a QDQ graph would run INT8 layers under that label); no precision takes
    an ONNX Runtime CPU QDQ graph (uint8, non-zero zero points)."""
    qdq = has_qdq(model)
    asymmetric = asymmetric_qdq_nodes(model) if qdq else []
    if asymmetric:
        raise UserError(f"{path}: {len(asymmetric)} Q/DQ nodes (first {asymmetric[0]!r}) have "
                        "uint8 or non-zero zero points, the ONNX Runtime CPU form of quantize "
                        "--target cpu, which TensorRT cannot build: quantize with --target "
                        "tensorrt")
    if precision == "int8" and not qdq:
        raise UserError(f"{path}: --precision int8 needs a QDQ graph and this one has no "
                        "QuantizeLinear/DequantizeLinear nodes: run rcan-deploy quantize first, or "
                        "build with --precision fp16 or fp32")
    if precision in ("fp32", "fp16") and qdq:
        raise UserError(f"{path}: --precision {precision} needs a float graph and this one has "
                        "Q/DQ nodes: use --precision int8 or best, or build its float parent")
    if not all(isinstance(d, int) and d > 0 for d in input_shape(model)):
        raise UserError(f"{path}: the graph input has a dynamic shape {input_shape(model)}: build "
                        "from a fixed-shape graph (rcan-deploy export --shape HxW)")


def default_engine_path(onnx_path: str | Path, precision: str) -> Path:
    """``rcan_int8.onnx`` -> ``rcan_int8.plan`` for int8; ``rcan.onnx`` -> ``rcan_fp16.plan``."""
    path = Path(onnx_path)
    suffix = "" if precision == "int8" else f"_{precision}"
    return path.with_name(f"{path.stem}{suffix}.plan")


def parser_failure(path: Path, errors: list) -> UserError:
    """One line naming the first parser errors (node index, name and op) of a rejected graph."""
    items = []
    for error in errors:
        where = (f"node {error.node()} {error.node_name()!r} ({error.node_operator()})"
                 if error.node() >= 0 else "graph")
        items.append(f"{where}: {' '.join(error.desc().split())}")
    shown = "; ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
    return UserError(f"{path}: TensorRT's ONNX parser rejected the graph: "
                     f"{shown or 'no error reported'}")


@dataclass
class BuildResult:
    """What a build made besides the engine bytes: the network's I/O tensors, TensorRT's
    warnings and, for an FP16 copy, how it was made."""

    io: dict[str, list[dict]]
    warnings: list[str]
    fp16: dict[str, Any] | None = None


def engine_record(options: BuildOptions, plan: NetworkPlan, onnx_path: Path,
                  tensorrt_version: str, gpu: dict[str, Any], result: BuildResult,
                  seconds: float) -> Record:
    """The record of an engine built from ``onnx_path`` (derived from the graph's record)."""
    io = result.io
    record = derive(onnx_path, "tensorrt-engine", read_record(onnx_path))
    record.input_shape = io["inputs"][0]["shape"]
    record.output_shape = io["outputs"][0]["shape"]
    record.sections.update({
        "precision": options.precision,
        **io,
        "tensorrt": {"version": tensorrt_version},
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "build": {"seconds": round(seconds, 2), "workspace_mb": options.workspace_mb,
                  "timing_cache": options.timing_cache,
                  "profile_verbosity": options.profile_verbosity,
                  "strongly_typed": plan.strongly_typed, "builder_flags": list(plan.set_flags),
                  "graph": "fp16 copy (modelopt autocast)" if plan.fp16_copy else "as is",
                  **({"fp16": result.fp16} if result.fp16 else {}),
                  "warnings": result.warnings},
    })
    return record


def build_engine(onnx_path: str | Path = defaults.INT8_ONNX, out: str | Path | None = None, *,
                 precision: str = "int8", workspace_mb: int | None = None,
                 timing_cache: str | Path | None = None,
                 profile_verbosity: str = "layer_names_only") -> dict[str, Any]:
    """Build a TensorRT engine from a fixed-shape ONNX graph; write it and ``OUT.json``.

    ``out`` None: :func:`default_engine_path`. Returns the sidecar. TensorRT, cuda-python and a
    GPU are checked before anything is read."""
    options = BuildOptions(precision, workspace_mb, str(timing_cache) if timing_cache else None,
                           profile_verbosity)
    options.validate()
    check_destination(Path(out) if out else default_engine_path(onnx_path, precision),
                      [onnx_path, timing_cache])
    trt = require_tensorrt()
    gpu = current_gpu(require_cudart())
    onnx_path = Path(onnx_path)
    model = load_model(onnx_path)
    check_graph(onnx_path, model, precision)
    out = Path(out) if out else default_engine_path(onnx_path, precision)
    flags = all(hasattr(trt.BuilderFlag, name) for name in ("FP16", "INT8"))
    plan = network_plan(precision, has_qdq(model), flags)
    start = time.perf_counter()
    serialized, result = _build(trt, onnx_path, model, plan, options)
    record = engine_record(options, plan, onnx_path, trt.__version__, gpu, result,
                           time.perf_counter() - start)
    return publish(out, record, lambda tmp: tmp.write_bytes(serialized), _EXTRA_VERSIONS)


def fp16_reference(path: Path, model: onnx.ModelProto) -> tuple[Any, dict[str, Any]]:
    """Reference inputs for the FP16 conversion: 8 crops of 64 px of the ``samples`` training
    images at the graph's input range (its sidecar's; 0..255, the wider, without one)."""
    from ..data.crops import calibration_crops
    from ..data.datasets import get_dataset
    from ..onnx_utils import graph_scale

    record = read_record(path)
    recorded = record.input_range if record else None
    value_range = recorded or 255
    dataset = get_dataset("samples", graph_scale(model, record, path), split="train")
    crops = calibration_crops(dataset, 8, 64, 0)
    return crops.array * value_range, {
        "reference": f"{len(crops.array)} crops of 64 px, samples training split, range "
                     f"0..{value_range}" + ("" if recorded else " (no sidecar)")}


def _build(trt: ModuleType, path: Path, model: onnx.ModelProto, plan: NetworkPlan,
           options: BuildOptions) -> tuple[Any, BuildResult]:
    """The serialized engine and what else the build made."""
    fp16 = None
    if plan.fp16_copy:
        from .fp16 import DATA_MAX, fp16_graph, fp32_nodes

        reference, fp16 = fp16_reference(path, model)
        graph = fp16_graph(model, reference)
        fp16.update(data_max=DATA_MAX, kept_fp32=fp32_nodes(graph))
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if plan.fp16_copy:
        parsed = parser.parse(graph.SerializeToString())
    else:
        parsed = parser.parse_from_file(str(path))
    if not parsed:
        raise parser_failure(path, [parser.get_error(i) for i in range(parser.num_errors)])
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, options.profile_verbosity.upper())
    if options.timing_cache:
        _load_timing_cache(config, Path(options.timing_cache))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = f" ({short_reason(Exception(logger.errors[-1]), 200)})" if logger.errors else ""
        raise UserError(f"{path}: TensorRT could not build an engine{detail}")
    if options.timing_cache:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(config.get_timing_cache().serialize())
    tensors = {"inputs": [network.get_input(i) for i in range(network.num_inputs)],
               "outputs": [network.get_output(i) for i in range(network.num_outputs)]}
    io = {key: [{"name": t.name, "shape": list(t.shape), "dtype": dtype_name(trt, t.dtype)}
                for t in items] for key, items in tensors.items()}
    return serialized, BuildResult(io, list(dict.fromkeys(logger.warnings)), fp16)


def _network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    """STRONGLY_TYPED where the enum has it (TensorRT 10; 11 accepts and ignores it: its networks
    are always strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if strongly_typed and flag is not None else 0


def _load_timing_cache(config, path: Path) -> None:
    """Start from the cache in ``path`` (an empty one when the file does not exist yet)."""
    if path.is_dir() or not path.parent.is_dir():
        raise UserError(f"--timing-cache {path}: expected a file in an existing folder")
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise UserError(f"{path}: not a timing cache of this TensorRT version and GPU: delete it "
                        "or pass another --timing-cache")
