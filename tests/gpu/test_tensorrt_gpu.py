"""TensorRT engines of a small SR4K RCAN2 (64x96) against ONNX Runtime on the same graphs: fp32
close, fp16 within fp16 tolerance, INT8 (and best) within a PSNR of the fake-quant reference.
Needs TensorRT, cuda-python and an NVIDIA GPU: run inside docker/Dockerfile.gpu.

Without TensorRT the module is skipped; with TensorRT but a misconfigured machine (no
cuda-python, no GPU visible, a driver older than cuda-python's CUDA) it is skipped with that
reason, or fails with it when RCAN_DEPLOY_REQUIRE_GPU=1 (set in the GPU image, where each of
these is a broken image). Once the checks pass, any error is a failure, never a skip."""

import importlib
import json
import os

import numpy as np
import pytest
from skimage import data

import rcan_deploy
from rcan_deploy.backends import get_runner
from rcan_deploy.cli import main
from rcan_deploy.cli.commands import cli
from rcan_deploy.cli.trt_commands import build_command, inspect_command
from rcan_deploy.errors import UserError
from rcan_deploy.onnx_utils import load_model, run
from rcan_deploy.trt.build import build_engine, default_engine_path
from rcan_deploy.trt.inspect import inspect_engine

SHAPE = (64, 96)


def _unusable() -> str | None:
    """Why this machine cannot run the GPU tests (None when it can)."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"TensorRT is not installed ({exc})"
    except OSError as exc:  # the bindings are there, libnvinfer is not
        return f"TensorRT's Python bindings cannot load its libraries ({exc})"
    from rcan_deploy.trt import require_cudart
    from rcan_deploy.trt.device import gpu_problem

    try:
        cudart = require_cudart()
    except UserError:
        return "cuda-python is not installed (pip install cuda-python of the driver's CUDA major)"
    return gpu_problem(cudart)


UNUSABLE = _unusable()
if UNUSABLE and os.environ.get("RCAN_DEPLOY_REQUIRE_GPU") == "1":
    pytest.fail(f"RCAN_DEPLOY_REQUIRE_GPU=1 but {UNUSABLE}", pytrace=False)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(UNUSABLE is not None, reason=UNUSABLE or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

for command in (build_command, inspect_command):
    if command.name not in cli.commands:
        cli.add_command(command)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """rcan.onnx (official layout, 0..255), its INT8 QDQ graph, and a natural 64x96 input."""
    folder = tmp_path_factory.mktemp("trt")
    fp32, int8 = folder / "rcan.onnx", folder / "rcan_int8.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan2-sr4k", random_weights=True,
                       shape=SHAPE)
    rcan_deploy.quantize(fp32, int8, dataset="samples", calib_crops=16, crop_size=64,
                         progress=False)
    crop = data.astronaut()[100:100 + SHAPE[0], 150:150 + SHAPE[1]]
    x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
    return {"fp32": fp32, "int8": int8, "x": x}


def _psnr(expected: np.ndarray, actual: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((expected.astype(np.float64) - actual.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


# precision, source graph, minimum PSNR (dB, peak 255) against ONNX Runtime on that graph
CASES = [("fp32", "fp32", 70.0), ("fp16", "fp32", 50.0), ("int8", "int8", 40.0),
         ("best", "int8", 35.0)]


@pytest.mark.parametrize("precision, graph, min_psnr", CASES)
def test_engine_matches_onnxruntime(graphs, precision, graph, min_psnr):
    source, x = graphs[graph], graphs["x"]
    record = build_engine(source, precision=precision)
    engine = default_engine_path(source, precision)
    sidecar = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert sidecar == record and sidecar["kind"] == "tensorrt-engine"
    assert sidecar["precision"] == precision and sidecar["input_range"] == 255
    assert sidecar["input_shape"] == [1, 3, *SHAPE]
    assert sidecar["gpu"]["name"] and sidecar["tensorrt"]["version"][:2] in ("10", "11")
    expected = run(load_model(source), x)[0]
    with get_runner("tensorrt", engine) as runner:
        outputs = [runner.infer(x) for _ in range(3)]
        assert len(runner.gpu_times) == 3 and all(t > 0 for t in runner.gpu_times)
        assert all(g <= w for g, w in zip(runner.gpu_times, runner.inference_times))
    actual = outputs[-1]
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_array_equal(outputs[0], actual)
    assert _psnr(expected, actual) > min_psnr, (precision, _psnr(expected, actual))
    if precision == "fp32":
        assert np.max(np.abs(actual - expected)) <= 1e-3 * np.max(np.abs(expected))
    if precision == "fp16":
        assert np.max(np.abs(actual - expected)) <= 1e-2 * np.max(np.abs(expected))


def test_detailed_int8_engine_reports_int8_layers_and_timing_cache(graphs, tmp_path, capsys):
    engine, cache = tmp_path / "detailed.plan", tmp_path / "timing.cache"
    for _ in range(2):  # the second build starts from the cache the first one wrote
        code = main(["build", str(graphs["int8"]), "--out", str(engine), "--timing-cache",
                     str(cache), "--profile-verbosity", "detailed", "--workspace", "256"])
        assert code == 0 and "int8 engine" in capsys.readouterr().out
        assert cache.stat().st_size > 0
    report = inspect_engine(engine)
    assert report["detailed"] and report["precisions"].get("INT8", 0) > 0
    assert [t["name"] for t in report["io"]] == ["input", "output"]
    assert report["built_with"]["precision"] == "int8"
    code = main(["inspect", str(engine)])
    assert code == 0 and "INT8" in capsys.readouterr().out
    names_only = tmp_path / "names.plan"
    build_engine(graphs["int8"], names_only)
    assert not inspect_engine(names_only)["detailed"]


def test_unloadable_engines_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such TensorRT engine file"):
        get_runner("tensorrt", tmp_path / "missing.plan").activate()
    garbage = tmp_path / "garbage.plan"
    garbage.write_bytes(b"not an engine" * 64)
    garbage.with_name("garbage.plan.json").write_text(json.dumps(
        {"kind": "tensorrt-engine", "tensorrt": {"version": "9.9.9"}, "gpu": {"name": "Other GPU",
                                                   "compute_capability": "7.5"}}))
    with pytest.raises(UserError, match="cannot load this engine.*built with TensorRT 9.9.9 on "
                                        r"Other GPU \(sm 7.5\)") as info:
        get_runner("tensorrt", garbage).activate()
    assert "\n" not in str(info.value)
