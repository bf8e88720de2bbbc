"""Defaults shared by every command, kept in one place so commands chain through file names.

``export`` writes ``rcan.onnx``; ``quantize`` reads it and writes ``rcan_int8.onnx``; ``build``
reads that and writes ``rcan_int8.plan``; ``bench`` finds the FP32 reference of an artifact by
following the ``source`` entries of the JSON sidecars.
"""

FP32_ONNX = "rcan.onnx"
INT8_ONNX = "rcan_int8.onnx"
INT8_ENGINE = "rcan_int8.plan"

SOURCE = "basicsr"
VARIANT = "rcan-sr4k"
SCALE = 2
SHAPE = (1080, 1920)  # H x W of the fixed-shape graph input
# Opset 13: DepthToSpace CRD (>= 11) and per-channel QuantizeLinear (>= 13), and the highest
# opset that common NPU toolchains accept.
OPSET = 13
# --input-range of export: the source's own range, or forced to 0..1 or 0..255.
EXPORT_INPUT_RANGES = ("native", "1", "255")
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Largest fixed input side and output volume (elements) of an exported graph: many runtimes
# (TensorRT among them) index a tensor with 32-bit integers.
MAX_SIDE = 16384
MAX_OUTPUT_ELEMENTS = 2**31 - 1
# Small size at which a graph is traced and checked against PyTorch (H x W, not square so that
# swapped axes are caught; even so that stride-2 heads divide it).
TRACE_SHAPE = (32, 48)
VERIFY_SHAPE = (40, 56)


def progress_off(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` argument: None (the default) shows a bar only when
    stderr is a terminal, so piped and CI runs print no bar."""
    return None if progress is None else not progress
