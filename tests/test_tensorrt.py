"""TensorRT support on a machine without TensorRT: one-line errors before any work, the FP16 graph
copy on ONNX Runtime (shipped checkpoints, overflow guard), the pure parts of build and inspect
(precision plans, parser errors, sidecars, 10.x and 11.x engine-information JSON), GPU problems
and the runner's resource handling on a fake CUDA runtime. The code paths against the real
TensorRT bindings are in test_tensorrt_contract.py; engines themselves are built in tests/gpu."""

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
from rcan_deploy.trt.build import (BuildOptions, BuildResult, check_graph, default_engine_path,
                                   engine_record, network_plan, parser_failure)
from rcan_deploy.trt.device import CudaError, cuda_call, current_gpu, gpu_problem
from rcan_deploy.trt.engine import mismatch_error
from rcan_deploy.trt.fp16 import fp16_graph, fp32_nodes
from rcan_deploy.trt.inspect import summarize_layers, tensor_precision
from trt_contract.fake_cudart import FakeCuda, cudaError_t

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


def _natural_crops(count: int, size: int) -> np.ndarray:
    from rcan_deploy.data.crops import calibration_crops
    from rcan_deploy.data.datasets import get_dataset

    return calibration_crops(get_dataset("samples", 2, split="heldout"), count, size, 1).array


@pytest.mark.parametrize("variant", ["rcan-sr4k", "rcan2-sr4k", "rcan-slim"])
def test_fp16_copy_of_the_shipped_checkpoints_matches_fp32(tmp_path, variant):
    path = tmp_path / "rcan.onnx"
    rcan_deploy.export(path, source="official", variant=variant, shape=(48, 64))  # shipped weights
    model = onnx.load(str(path))
    before = model.SerializeToString()
    reference = _natural_crops(4, 48) * 255
    half = fp16_graph(model, reference)
    assert model.SerializeToString() == before  # the input is not modified
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_value for d in half.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 48, 64]
    weights = [i for i in half.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    x = np.ascontiguousarray(_natural_crops(2, 64)[:, :, :48, :64]) * 255  # not the reference
    for frame in x:
        expected, actual = run(model, frame[None])[0], run(half, frame[None])[0]
        assert actual.dtype == np.float32 and np.isfinite(actual).all()
        # fp16 keeps ~11 significant bits; the output spans 0..255.
        error = np.max(np.abs(actual - expected))
        psnr = 10 * np.log10(255 ** 2 / np.mean((actual - expected) ** 2))
        assert 0 < error <= 0.5 and psnr > 60, (variant, error, psnr)


def test_fp16_copy_keeps_nodes_that_would_overflow_in_fp32():
    """x * 1000 * 1000 overflows fp16 (max 65504) for x > 0.07: AutoCast's guard keeps the two
    Muls in FP32, while the unguarded conversion (convert_to_f16) turns the output into inf."""
    from onnx import TensorProto, helper, numpy_helper
    from modelopt.onnx.autocast import convert_to_f16

    big = numpy_helper.from_array(np.array(1000, np.float32), "big")
    small = numpy_helper.from_array(np.array(1e-6, np.float32), "small")
    weight = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "big"], ["m1"], name="scale_up"),
             helper.make_node("Mul", ["m1", "big"], ["m2"], name="scale_up_again"),
             helper.make_node("Mul", ["m2", "small"], ["output"], name="scale_down")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "output", TensorProto.FLOAT, [1, 3, 8, 8])], [big, small, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    reference = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    guarded = fp16_graph(model, reference)
    kept = fp32_nodes(guarded)
    assert {"scale_up", "scale_up_again", "scale_down"} <= set(kept) and "conv" not in kept
    x = reference[:1]
    expected = run(model, x)[0]
    np.testing.assert_allclose(run(guarded, x)[0], expected, rtol=2e-3)
    unguarded = convert_to_f16(onnx.load_from_string(model.SerializeToString()),
                               keep_io_types=True)
    assert not np.isfinite(run(unguarded, x)[0]).all()


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


def test_cpu_target_qdq_graph_is_refused_before_tensorrt(tiny, tmp_path):
    path, _ = tiny
    cpu, trt = tmp_path / "cpu.onnx", tmp_path / "trt.onnx"
    for out, target in ((cpu, "cpu"), (trt, "tensorrt")):
        rcan_deploy.quantize(path, out, dataset="samples", calib_crops=2, crop_size=32,
                             selection_images=1, mixed_precision=False, target=target, progress=False)
    for precision in ("int8", "best"):
        with pytest.raises(UserError, match="uint8 or non-zero zero points.*--target cpu.*"
                                            "quantize with --target tensorrt") as info:
            check_graph(cpu, onnx.load(str(cpu)), precision)
        assert "\n" not in str(info.value)
        check_graph(trt, onnx.load(str(trt)), precision)


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
    fp16 = {"reference": "8 crops", "data_max": 512.0, "kept_fp32": ["/x/Mul"]}
    result = BuildResult(io, ["Unfused DequantizeLinear 'dq'"], fp16)
    record = engine_record(options, network_plan("fp16", False, True), path, "10.13.3", GPU,
                           result, 12.345).to_json()
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
    assert record["build"]["graph"].startswith("fp16 copy") and record["build"]["fp16"] == fp16
    assert record["build"]["warnings"] == ["Unfused DequantizeLinear 'dq'"]
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


# Engine-information JSON of a detailed engine: TensorRT 10.x ("Format/Datatype", "Bindings")
# and 11.x (format and data type split, "I/O Tensors"; NVIDIA's 10.x -> 11.x IEngineInspector
# migration guide), the same four layers: an INT8 conv, a reformatting copy, an FP32 shuffle and
# an FP16 constant.
def _layer(name, kind, precisions, schema, parameter=None):
    v10 = {"INT8": "Thirty-two wide channel vectorized row major Int8 format",
           "FP16": "Channel major FP16 format where channel % 8 == 0",
           "FP32": "Row major linear FP32", "HALF": "Half"}
    v11 = {"INT8": ("Thirty-two wide channel vectorized row major format (kCHW32)", "Int8"),
           "FP16": ("Channel major format where channel % 8 == 0 (kHWC8)", "Half"),
           "FP32": ("Row major linear format (kLINEAR)", "Float"), "HALF": ("", "Half")}

    def tensor(p):
        if schema == 10:
            return {"Name": "t", "Location": "Device", "Format/Datatype": v10[p]}
        return {"Name": "t", "Location": "Device", "Format": v11[p][0], "DataType": v11[p][1]}

    layer = {"Name": name, "LayerType": kind,
             "Inputs": [tensor(p) for p in precisions[:-1]],
             "Outputs": [tensor(precisions[-1])]}
    return {**layer, **({"ParameterType": parameter} if parameter else {})}


def _engine_info(schema: int) -> str:
    layers = [_layer("/head/Conv + /body/Relu", "CaskConvolution", ["INT8", "FP16"], schema,
                     "Convolution"),
              _layer("Reformatting CopyNode for Input Tensor 0 to /upsample/DepthToSpace",
                     "Reformat", ["FP16", "FP32"], schema),
              _layer("/upsample/DepthToSpace", "Shuffle", ["FP32", "FP32"], schema, "Shuffle"),
              _layer("const", "Constant", ["HALF"], schema)]
    io = ({"Bindings": ["input", "output"]} if schema == 10 else
          {"I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"}]})
    return json.dumps({"Layers": layers, **io})


@pytest.mark.parametrize("schema", [10, 11])
def test_engine_information_is_summarised_per_precision(schema):
    summary = summarize_layers(_engine_info(schema))
    assert summary["detailed"]
    assert [row["precision"] for row in summary["layers"]] == ["INT8", "FP16", "FP32", "FP16"]
    assert [row["copy"] for row in summary["layers"]] == [False, True, False, False]
    assert summary["layers"][0]["type"] == "Convolution"
    assert summary["layers"][1]["type"] == "Reformat"
    # the reformatting copy is listed but not counted as a layer running in FP16
    assert summary["precisions"] == {"INT8": 1, "FP32": 1, "FP16": 1}
    assert summary["copy_layers"] == 1


def test_engine_information_without_detail():
    names_only = summarize_layers(json.dumps({"Layers": ["a", "b"], "Bindings": ["input"]}))
    assert not names_only["detailed"] and names_only["layers"] == [{"name": "a"}, {"name": "b"}]
    assert names_only["precisions"] == {} and "--profile-verbosity detailed" in names_only["note"]
    assert not summarize_layers("")["detailed"]


def test_tensor_precision_tokens():
    assert tensor_precision("Row major linear BFloat16 format") == "BF16"
    assert tensor_precision("Channel major UInt8 format") == "UINT8"
    assert tensor_precision("Float") == "FP32" and tensor_precision("Half") == "FP16"
    assert tensor_precision("Int8") == "INT8"
    assert tensor_precision("Unknown format") == "unknown"


def test_cuda_errors_are_one_line_user_errors_naming_the_call():
    cudart = FakeCuda().module()
    assert cuda_call(cudart, (cudaError_t.cudaSuccess, 7)) == 7
    with pytest.raises(CudaError, match="^cudaMalloc failed: cudaErrorMemoryAllocation: out of "
                                        "memory$") as info:
        cuda_call(cudart, (cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    assert isinstance(info.value, UserError)


def test_gpu_problems_have_distinct_reasons():
    assert gpu_problem(FakeCuda().module()) is None
    assert current_gpu(FakeCuda().module())["name"] == "Fake GPU (CPU memory)"
    old_driver = gpu_problem(FakeCuda(driver=12020, runtime=13000).module())
    assert "driver is older than cuda-python's CUDA runtime (driver CUDA 12.2, cuda-python " \
           "runtime CUDA 13.0)" in old_driver
    no_gpu = gpu_problem(FakeCuda(devices=0).module())
    assert "no CUDA device is visible" in no_gpu and "--gpus all" in no_gpu
    failing = FakeCuda(fail={"cudaGetDeviceCount": {1: cudaError_t.cudaErrorIllegalAddress}})
    assert "cudaErrorIllegalAddress: an illegal memory access" in gpu_problem(failing.module())
    assert len({old_driver, no_gpu}) == 2
    with pytest.raises(UserError, match="driver is older"):
        current_gpu(FakeCuda(driver=12020, runtime=13000).module())


class _Engine:
    """What the runner needs of a deserialized engine, for a fake-CUDA run without TensorRT."""

    def __init__(self, cuda, context_ok=True):
        self.cuda, self.context_ok = cuda, context_ok

    def create_execution_context(self):
        if not self.context_ok:
            return None
        cuda, addresses = self.cuda, {}

        def execute(stream):
            x = np.frombuffer(cuda.read(addresses["input"], 3 * 4 * 4 * 4), np.float32)
            cuda.write(addresses["output"], (x * 2).astype(np.float32).tobytes())
            return True

        return SimpleNamespace(set_tensor_address=lambda n, p: addresses.update({n: p}) or True,
                               execute_async_v3=execute)


@pytest.fixture()
def fake_runner(monkeypatch):
    """A TensorRT runner whose engine doubles a 1x3x4x4 input, on a fake CUDA runtime."""
    import rcan_deploy.backends.tensorrt as module
    from rcan_deploy.trt.engine import LoadedEngine

    cuda = FakeCuda()
    cuda.install(monkeypatch)
    state = {"context_ok": True}
    monkeypatch.setattr(module, "require_tensorrt", lambda: SimpleNamespace())
    monkeypatch.setattr(module, "load_engine", lambda trt, cudart, path: LoadedEngine(
        _Engine(cuda, state["context_ok"]), None, {"name": "Fake GPU"}))
    monkeypatch.setattr(module, "io_tensors", lambda trt, engine: [
        {"name": "input", "mode": "input", "shape": [1, 3, 4, 4], "dtype": "float32"},
        {"name": "output", "mode": "output", "shape": [1, 3, 4, 4], "dtype": "float32"}])
    return cuda, state, lambda: TensorRTRunner("fake.plan")


def test_runner_uses_pinned_buffers_allocated_once(fake_runner):
    cuda, _, make = fake_runner
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    with make() as runner:
        outputs = [runner.infer(x + i) for i in range(3)]
        assert cuda.live() == {"device": 2, "pinned": 2, "streams": 1, "events": 2}
    for i, output in enumerate(outputs):  # each result is its own array, not the pinned buffer
        np.testing.assert_array_equal(output, 2 * (x + i))
    assert cuda.calls["cudaMallocHost"] == 2 and cuda.calls["cudaMalloc"] == 2
    assert cuda.unpinned_copies == 0 and len(runner.gpu_times) == 3
    assert cuda.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


@pytest.mark.parametrize("call", ["cudaMalloc", "cudaMallocHost", "cudaStreamCreate",
                                  "cudaEventCreate"])
def test_failed_activation_frees_what_it_allocated(fake_runner, call):
    cuda, _, make = fake_runner
    number = 1 if call == "cudaStreamCreate" else 2
    cuda.fail = {call: {number: cudaError_t.cudaErrorMemoryAllocation}}
    runner = make()
    with pytest.raises(CudaError, match=f"fake.plan: {call} failed: cudaErrorMemoryAllocation"):
        runner.activate()
    assert not runner.is_active and cuda.calls[call] == number
    assert cuda.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


def test_no_execution_context_is_a_user_error_and_frees_nothing_twice(fake_runner):
    cuda, state, make = fake_runner
    state["context_ok"] = False
    with pytest.raises(UserError, match="could not create an execution context"):
        make().activate()
    assert cuda.calls["cudaMalloc"] == 0 and cuda.live()["device"] == 0


def test_deactivation_frees_everything_past_a_failure(fake_runner):
    cuda, _, make = fake_runner
    runner = make()
    runner.activate()
    cuda.fail = {"cudaFree": {1: cudaError_t.cudaErrorIllegalAddress},
                 "cudaStreamDestroy": {1: cudaError_t.cudaErrorInvalidResourceHandle}}
    with pytest.raises(CudaError) as info:
        runner.deactivate()
    message = str(info.value)
    assert "\n" not in message and "cudaFree: cudaErrorIllegalAddress" in message
    assert "cudaStreamDestroy: cudaErrorInvalidResourceHandle" in message
    assert not runner.is_active
    # every free was attempted: only the two that failed are left
    assert cuda.calls["cudaFree"] == 2 and cuda.calls["cudaFreeHost"] == 2
    assert cuda.calls["cudaEventDestroy"] == 2
    assert cuda.live() == {"device": 1, "pinned": 0, "streams": 1, "events": 0}
