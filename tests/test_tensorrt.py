"""TensorRT support on a machine without TensorRT: one-line errors before any work, the FP16 graph
copy on ONNX Runtime, and the pure parts of build and inspect (precision plans, parser errors,
sidecars, engine-information JSON). Engines themselves are built in tests/gpu."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

import rcan_deploy
from rcan_deploy.artifacts import write_json
from rcan_deploy.backends import GPU_RUNTIMES, TensorRTRunner, get_runner
from rcan_deploy.cli import main
from rcan_deploy.cli.commands import cli
from rcan_deploy.cli.trt_commands import build_command, inspect_command
from rcan_deploy.errors import UserError
from rcan_deploy.onnx_utils import run
from rcan_deploy.trt import require_cudart, require_tensorrt
from rcan_deploy.trt.build import (BuildOptions, check_graph, default_engine_path, engine_record,
                                   network_plan, parser_failure)
from rcan_deploy.trt.engine import mismatch_error
from rcan_deploy.trt.fp16 import fp16_graph
from rcan_deploy.trt.inspect import summarize_layers, tensor_precision

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

for command in (build_command, inspect_command):
    if command.name not in cli.commands:
        cli.add_command(command)

GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "index": 0}


@pytest.fixture()
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` and ``import cuda`` fail even where they are installed."""
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small official-layout SR4K RCAN2 graph (0..255 range) and its QDQ-free model."""
    path = tmp_path_factory.mktemp("tiny") / "rcan.onnx"
    rcan_deploy.export(path, source="official", variant="rcan2-sr4k", random_weights=True,
                       shape=(32, 48))
    return path, onnx.load(str(path))


def _one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args", [["build"], ["build", "rcan.onnx", "--precision", "fp16"],
                                  ["inspect", "rcan_int8.plan"]])
def test_commands_without_tensorrt_stop_first_with_one_line(tmp_path, monkeypatch, capsys,
                                                            no_tensorrt, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rcan.onnx").write_bytes(b"never read")
    code = main(args)
    _one_line_error(code, capsys.readouterr().err, "TensorRT is not installed",
                    "docker/Dockerfile.gpu", "--gpus all", "pip install tensorrt cuda-python")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rcan.onnx"]


def test_runner_without_tensorrt_is_a_user_error(no_tensorrt, tmp_path):
    assert GPU_RUNTIMES == ("tensorrt",)
    runner = get_runner("tensorrt", tmp_path / "missing.plan", threads=2)
    assert isinstance(runner, TensorRTRunner) and runner.gpu_times == []
    with pytest.raises(UserError, match="TensorRT is not installed.*docker/Dockerfile.gpu"):
        runner.activate()
    assert not runner.is_active


def test_missing_cuda_python_names_it(no_tensorrt):
    with pytest.raises(UserError, match="cuda-python is not installed"):
        require_cudart()
    with pytest.raises(UserError, match="TensorRT is not installed"):
        require_tensorrt()


def test_bad_build_options_are_user_errors():
    for options, flag in [(BuildOptions(precision="int4"), "--precision"),
                          (BuildOptions(profile_verbosity="verbose"), "--profile-verbosity"),
                          (BuildOptions(workspace_mb=0), "--workspace")]:
        with pytest.raises(UserError, match=flag):
            options.validate()


def test_fp16_graph_runs_on_onnxruntime_close_to_fp32(tiny):
    path, model = tiny
    before = model.SerializeToString()
    half = fp16_graph(model)
    assert model.SerializeToString() == before  # the input is not modified
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in half.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 32, 48)).astype(np.float32)
    expected, actual = run(model, x)[0], run(half, x)[0]
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    # fp16 keeps ~11 significant bits: allow a few ulps of the output's magnitude.
    error = np.max(np.abs(actual - expected))
    assert 0 < error <= 2e-3 * np.max(np.abs(expected)), error


def test_network_plans_for_tensorrt_10_and_11():
    for flags in (True, False):
        assert network_plan("int8", True, flags) == network_plan("int8", True, not flags)
        int8 = network_plan("int8", True, flags)
        assert int8.strongly_typed and not int8.fp16_copy and not int8.set_flags
        fp32 = network_plan("fp32", False, flags)
        assert fp32.strongly_typed and fp32.clear_flags == ("TF32",)
        fp16 = network_plan("fp16", False, flags)
        assert fp16.fp16_copy and fp16.strongly_typed and not fp16.set_flags
    best10 = network_plan("best", True, True)
    assert not best10.strongly_typed and best10.set_flags == ("FP16", "INT8")
    assert network_plan("best", False, True).set_flags == ("FP16",)
    best11 = network_plan("best", True, False)  # 11.x: no precision flags, FP16 copy of QDQ
    assert best11.fp16_copy and best11.strongly_typed and not best11.set_flags


def test_graph_must_fit_the_precision(tiny, tmp_path):
    path, model = tiny
    check_graph(path, model, "fp32")
    check_graph(path, model, "fp16")
    with pytest.raises(UserError, match="int8 needs a QDQ graph.*rcan-deploy quantize"):
        check_graph(path, model, "int8")
    qdq = onnx.ModelProto()
    qdq.CopyFrom(model)
    qdq.graph.node.add(op_type="DequantizeLinear", name="dq")
    check_graph(path, qdq, "int8")
    check_graph(path, qdq, "best")
    with pytest.raises(UserError, match="fp16 needs a float graph"):
        check_graph(path, qdq, "fp16")
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(UserError, match="dynamic shape"):
        check_graph(path, dynamic, "fp32")


def test_default_engine_names():
    assert default_engine_path("rcan_int8.onnx", "int8").name == "rcan_int8.plan"
    assert str(default_engine_path("out/rcan.onnx", "fp16")) == "out/rcan_fp16.plan"
    assert default_engine_path("rcan_int8.onnx", "best").name == "rcan_int8_best.plan"


class _ParserError:
    def __init__(self, node, name, op, desc):
        self._values = node, name, op, desc

    def node(self):
        return self._values[0]

    def node_name(self):
        return self._values[1]

    def node_operator(self):
        return self._values[2]

    def desc(self):
        return self._values[3]


def test_parser_errors_name_nodes_on_one_line(tmp_path):
    errors = [_ParserError(3, "/upsample/DepthToSpace", "DepthToSpace", "unsupported\nmode"),
              _ParserError(-1, "", "", "bad graph")]
    message = str(parser_failure(tmp_path / "m.onnx", errors))
    assert "\n" not in message
    assert "node 3 '/upsample/DepthToSpace' (DepthToSpace): unsupported mode; graph: bad graph" \
        in message
    many = str(parser_failure(tmp_path / "m.onnx", errors * 3))
    assert many.endswith("(+3 more)")


def test_engine_sidecar_record(tiny):
    path, _ = tiny
    io = {"inputs": [{"name": "input", "shape": [1, 3, 32, 48], "dtype": "float32"}],
          "outputs": [{"name": "output", "shape": [1, 3, 64, 96], "dtype": "float32"}]}
    options = BuildOptions(precision="fp16", workspace_mb=512, timing_cache="cache.bin")
    record = engine_record(options, network_plan("fp16", False, True), path, "10.13.3", GPU, io,
                           12.345).to_json()
    parent = json.loads((path.parent / "rcan.onnx.json").read_text())
    assert record["kind"] == "tensorrt-engine" and record["precision"] == "fp16"
    assert record["parent"]["path"] == str(path) and record["parent"]["kind"] == "onnx-fp32"
    assert record["parent"]["sha256"] == parent["sha256"]
    assert record["input_range"] == 255 and record["config"] == parent["config"]
    assert record["input_shape"] == [1, 3, 32, 48] and record["output_shape"] == [1, 3, 64, 96]
    assert record["tensorrt"] == {"version": "10.13.3"}
    assert record["gpu"] == {"name": GPU["name"], "compute_capability": "9.0"}
    assert record["build"]["seconds"] == 12.35 and record["build"]["workspace_mb"] == 512
    assert record["build"]["timing_cache"] == "cache.bin" and record["build"]["strongly_typed"]
    assert record["build"]["graph"].startswith("fp16 copy")
    json.dumps(record)


def test_mismatch_error_names_both_builds(tmp_path):
    engine = tmp_path / "rcan_int8.plan"
    engine.write_bytes(b"plan")
    message = str(mismatch_error(engine, "11.4.0", GPU, "version tag mismatch\nmore"))
    assert "TensorRT 11.4.0 on NVIDIA H100 80GB HBM3 (sm 9.0)" in message
    assert "no sidecar" in message and "(version tag mismatch)" in message
    write_json(tmp_path / "rcan_int8.plan.json",
               {"kind": "tensorrt-engine", "tensorrt": {"version": "10.13.3"},
                "gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}})
    message = str(mismatch_error(engine, "11.4.0", GPU, None))
    assert "built with TensorRT 10.13.3 on NVIDIA GeForce RTX 4090 (sm 8.9)" in message
    assert "\n" not in message and "rcan-deploy build" in message


# TensorRT 10 engine-information JSON: detailed (ProfilingVerbosity.DETAILED) and names only.
DETAILED_INFO = json.dumps({"Layers": [
    {"Name": "/head/Conv + /body/Relu", "LayerType": "CaskConvolution",
     "ParameterType": "Convolution",
     "Inputs": [{"Name": "input_q", "Location": "Device", "Dimensions": [1, 3, 32, 48],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "x", "Location": "Device", "Dimensions": [1, 16, 16, 24],
                  "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "Reformatting CopyNode for Input Tensor 0 to /upsample/DepthToSpace",
     "LayerType": "Reformat",
     "Inputs": [{"Name": "y", "Dimensions": [1, 48, 16, 24],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": [{"Name": "z", "Dimensions": [1, 48, 16, 24],
                  "Format/Datatype": "Row major linear FP32"}]},
    {"Name": "/upsample/DepthToSpace", "LayerType": "Shuffle", "ParameterType": "Shuffle",
     "Inputs": [{"Name": "z", "Dimensions": [1, 48, 16, 24],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "output", "Dimensions": [1, 3, 64, 96],
                  "Format/Datatype": "Row major linear FP32"}]},
    {"Name": "const", "LayerType": "Constant", "Inputs": [],
     "Outputs": [{"Name": "c", "Dimensions": [1], "Format/Datatype": "Half"}]},
], "Bindings": ["input", "output"]})


def test_engine_information_is_summarised_per_precision():
    summary = summarize_layers(DETAILED_INFO)
    assert summary["detailed"]
    assert [row["precision"] for row in summary["layers"]] == ["INT8", "FP16", "FP32", "FP16"]
    assert summary["layers"][0]["type"] == "Convolution"
    assert summary["layers"][1]["type"] == "Reformat"
    assert summary["precisions"] == {"FP16": 2, "INT8": 1, "FP32": 1}
    names_only = summarize_layers(json.dumps({"Layers": ["a", "b"], "Bindings": ["input"]}))
    assert not names_only["detailed"] and names_only["layers"] == [{"name": "a"}, {"name": "b"}]
    assert names_only["precisions"] == {} and "--profile-verbosity detailed" in names_only["note"]
    assert not summarize_layers("")["detailed"]


def test_tensor_precision_tokens():
    assert tensor_precision("Row major linear BFloat16 format") == "BF16"
    assert tensor_precision("Channel major UInt8 format") == "UINT8"
    assert tensor_precision("Float") == "FP32"
    assert tensor_precision("Unknown format") == "unknown"


def test_cuda_errors_raise_with_the_error_name():
    from rcan_deploy.trt.device import cuda_call, current_gpu

    success = SimpleNamespace(name="cudaSuccess")
    no_device = SimpleNamespace(name="cudaErrorNoDevice")
    cudart = SimpleNamespace(
        cudaError_t=SimpleNamespace(cudaSuccess=success),
        cudaGetErrorString=lambda error: (success, b"no CUDA-capable device is detected"),
        cudaGetDeviceCount=lambda: (no_device, 0))
    assert cuda_call(cudart, (success, 7)) == 7
    with pytest.raises(RuntimeError, match="cudaErrorNoDevice: no CUDA-capable device"):
        cuda_call(cudart, (no_device, None))
    with pytest.raises(UserError, match="no usable NVIDIA GPU.*--gpus all"):
        current_gpu(cudart)
