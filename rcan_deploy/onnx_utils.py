"""Small ONNX helpers shared by export, graph passes and info: load, run, compare, shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import UserError, short_reason


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or unreadable file into a one-line user error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # protobuf raises several types for garbage input
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if model.ir_version < 3 or not model.graph.node:  # an empty file parses as an empty model
        what = "an empty file" if path.stat().st_size == 0 else "no graph nodes"
        raise UserError(f"{path}: not an ONNX model ({what})")
    return model


def input_shape(model: onnx.ModelProto) -> list[int | str]:
    """Shape of the first graph input (not an initializer): ints for fixed dims, names for
    symbolic ones."""
    constants = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in constants]
    if not inputs:
        raise UserError("the graph has no input")
    return tensor_shape(inputs[0])


def output_shape(model: onnx.ModelProto) -> list[int | str]:
    """Shape of the first graph output: ints for fixed dims, names for symbolic ones."""
    if not model.graph.output:
        raise UserError("the graph has no output")
    return tensor_shape(model.graph.output[0])


def tensor_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def ort_session(model: onnx.ModelProto | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations and quiet logging."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: warnings would add lines to stderr
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Run a model once on ONNX Runtime's CPU provider and return all outputs."""
    session = ort_session(model)
    if isinstance(feeds, np.ndarray):
        feeds = {session.get_inputs()[0].name: feeds}
    return session.run(None, feeds)


def max_abs_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference of two outputs (float64), inf when the shapes differ."""
    if expected.shape != actual.shape:
        return float("inf")
    return float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))


def simplify(model: onnx.ModelProto, shape: list[int] | None = None) -> onnx.ModelProto:
    """onnxsim: fold constants, drop dead nodes; with ``shape``, first fix the input to it (the
    Shape arithmetic of a dynamic graph then folds into constants)."""
    import onnxsim

    overwrite = {model.graph.input[0].name: list(shape)} if shape is not None else None
    try:
        simplified, _ = onnxsim.simplify(model, check_n=0, overwrite_input_shapes=overwrite)
    except Exception as exc:  # onnxsim reports shape conflicts as RuntimeError/InferenceError
        if shape is None:
            raise
        raise UserError(f"cannot fix the graph input to {list(shape)}: "
                        f"{short_reason(exc)}") from None
    return simplified


def graph_scale(model: onnx.ModelProto, record, name: str | Path) -> int:
    """Upscaling factor of an SR graph: ``scale`` of its record, else output H / input H of a
    fixed-shape graph; a UserError naming ``name`` when neither tells."""
    if record is not None and record.scale:
        return record.scale
    h_in, h_out = input_shape(model)[2], output_shape(model)[2]
    if not (isinstance(h_in, int) and isinstance(h_out, int) and h_in > 0 and h_out % h_in == 0):
        raise UserError(f"{name}: no sidecar with config.scale and the graph shape is dynamic, "
                        "so the scale is unknown")
    return h_out // h_in
