"""The project's TensorRT code against the real TensorRT 10.13 and 11.4 Python bindings, on a
machine with no TensorRT libraries and no GPU.

PyPI's binding wheels are fetched once (cached under the user's rcan-deploy cache), loaded with
stub libraries, and the CLI's build / inspect / bench paths and the TensorRT runner run against
stand-ins that refuse any attribute, keyword or argument type the real classes of that release
do not have (see tests/trt_contract). Skipped, with the reason, only where no package registry or
no C compiler is reachable.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import rcan_deploy
from conftest import USER_CACHE
from trt_contract import bindings

TESTS = Path(__file__).resolve().parent
PRECISIONS = ("int8", "fp32", "fp16", "best")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A small SR4K RCAN2 (official layout, 32x48), its INT8 QDQ graph for TensorRT, its ONNX
    Runtime CPU QDQ graph, and a copy with an op TensorRT's parser does not know."""
    folder = tmp_path_factory.mktemp("contract-graphs")
    paths = {name: folder / f"{name}.onnx" for name in ("fp32", "int8", "cpu_int8", "custom_op")}
    rcan_deploy.export(paths["fp32"], source="official", variant="rcan2-sr4k",
                       random_weights=True, shape=(32, 48))
    for name, target in (("int8", "tensorrt"), ("cpu_int8", "cpu")):
        rcan_deploy.quantize(paths["fp32"], paths[name], dataset="samples", calib_crops=4,
                             crop_size=32, selection_images=1, mixed_precision=False, target=target, progress=False)
    model = onnx.load(str(paths["fp32"]))
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type, node.domain = "NotAnOp", "example.custom"
    model.opset_import.add(domain="example.custom", version=1)
    onnx.save(model, str(paths["custom_op"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module", params=bindings.VERSIONS)
def report(request, graphs, tmp_path_factory):
    """The driver's report for one release (one subprocess per release)."""
    version = request.param
    work = tmp_path_factory.mktemp(f"contract-{version}")
    try:
        real = bindings.prepare(version, USER_CACHE / "trt-bindings", work)
    except bindings.Unavailable as exc:
        pytest.skip(str(exc))
    job = {**graphs, "work": str(work), "out": str(work / "report.json")}
    (work / "job.json").write_text(json.dumps(job))
    def prepend(name, *paths):
        return os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get(name)])])

    env = {**os.environ, "LD_LIBRARY_PATH": prepend("LD_LIBRARY_PATH", real.stubs),
           "PYTHONPATH": prepend("PYTHONPATH", real.site, TESTS)}
    done = subprocess.run([sys.executable, "-m", "trt_contract.driver", str(work / "job.json")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((work / "report.json").read_text())
    assert result["version"] == version
    result["major"] = int(version.split(".")[0])
    result["symbols"] = real.symbols
    return result


def _one_line(result: dict, code: int = 2) -> str:
    lines = result["err"].strip().splitlines()
    assert result["code"] == code and lines and "Traceback" not in result["err"], result
    return lines[-1]


def test_the_stubs_define_only_tensorrt_entry_points(report):
    assert "createInferBuilder_INTERNAL" in report["symbols"]
    assert "createNvOnnxParser_INTERNAL" in report["symbols"]
    assert not [s for s in report["symbols"] if s.startswith("Py")]


def test_no_attribute_or_call_is_refused(report):
    for name, result in report["results"].items():
        assert "exception" not in result, (name, result.get("exception"))
    assert report["violations"] == []


def test_the_harness_refuses_misspellings_and_bad_calls(report):
    outcome = report["results"]["self_check"]
    assert outcome and all(v.startswith("refused: ") for v in outcome.values()), outcome
    assert "create_netwrok" in outcome["misspelled method"]
    assert "IEngineInspector" in outcome["missing module name"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_builds_inspects_and_runs(report, precision):
    result = report["results"]["precisions"][precision]
    assert result["build"]["code"] == 0, result["build"]
    sidecar, engine = result["sidecar"], result["engine"]
    assert sidecar["precision"] == precision and sidecar["kind"] == "tensorrt-engine"
    assert sidecar["tensorrt"]["version"] == report["version"] == engine["version"]
    assert sidecar["gpu"]["name"].startswith("Fake GPU")
    assert engine["pools"] == {"WORKSPACE": 64 << 20} and engine["verbosity"] == "DETAILED"
    weak = precision == "best" and report["major"] == 10
    assert engine["strongly_typed"] is (not weak) and sidecar["build"]["strongly_typed"] is \
        (not weak)
    precision_flags = sorted(set(engine["flags"]) & {"FP16", "INT8"})
    assert precision_flags == (["FP16", "INT8"] if weak else [])
    assert ("TF32" in engine["flags"]) is (precision != "fp32")
    fp16_copy = precision == "fp16" or (precision == "best" and report["major"] == 11)
    assert sidecar["build"]["graph"].startswith("fp16 copy") is fp16_copy
    if fp16_copy:
        assert sidecar["build"]["fp16"]["data_max"] == 512
        assert "range 0..255" in sidecar["build"]["fp16"]["reference"]

    inspected = result["inspect"]
    assert inspected["detailed"] and inspected["built_with"]["precision"] == precision
    counted = sum(inspected["precisions"].values())
    assert counted + inspected["copy_layers"] == inspected["num_layers"]
    expected = {"int8": {"INT8", "FP32"}, "fp32": {"FP32"}, "fp16": {"FP16"},
                "best": {"INT8", "FP16"}}[precision]
    assert set(inspected["precisions"]) == expected, inspected["precisions"]
    table = result["inspect_table"]
    assert table["code"] == 0 and f"{counted + inspected['copy_layers']} layers" in table["out"]
    if inspected["copy_layers"]:
        assert f"({inspected['copy_layers']} reformatting copies not counted)" in table["out"]

    run = result["run"]
    assert run["shape"] == [1, 3, 64, 96] and run["dtype"] == "float32" and run["repeatable"]
    tolerance = {"int8": 0, "fp32": 0, "fp16": 2e-3, "best": 2e-2}[precision]
    assert run["max_abs_error"] <= tolerance * run["scale"], run
    assert len(run["gpu_times"]) == 3 and all(t > 0 for t in run["gpu_times"])
    assert run["pinned_allocations"] == 2 and run["unpinned_copies"] == 0
    assert run["live_while_active"] == {"device": 2, "pinned": 2, "streams": 1, "events": 2}
    assert run["live_after"] == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


def test_build_warnings_reach_the_sidecar_and_stderr_on_request(report):
    results = report["results"]["precisions"]
    warnings = results["int8"]["sidecar"]["build"]["warnings"]
    assert warnings and all("Unfused DequantizeLinear" in w for w in warnings)
    printed = results["int8"]["build"]["err"].splitlines()
    assert printed == [f"TensorRT warning: {w}" for w in warnings]
    assert results["fp32"]["sidecar"]["build"]["warnings"] == []
    quiet = report["results"]["timing_cache"]["runs"][0]
    assert quiet["err"] == "" and f"TensorRT logged {len(warnings)} warning(s)" in quiet["out"]


def test_timing_cache_is_read_back_and_a_foreign_one_is_refused(report, graphs):
    result = report["results"]["timing_cache"]
    first, second = result["runs"]
    assert first["code"] == second["code"] == 0
    header = f"FAKE-TRT-TIMING-CACHE {report['version']}\n"
    nodes = len(onnx.load(graphs["int8"]).graph.node)
    assert json.loads(first["cache"].removeprefix(header)) == [f"build 1: {nodes} nodes"]
    assert len(json.loads(second["cache"].removeprefix(header))) == 2  # started from the file
    assert "not a timing cache of this TensorRT" in _one_line(result["corrupt"])
    assert not result["corrupt_plan_written"]


def test_refusals_are_one_line_errors_and_write_nothing(report):
    result = report["results"]["refusals"]
    parser = _one_line(result["parser"])
    assert "ONNX parser rejected the graph" in parser and "(NotAnOp)" in parser
    assert "No importer registered for op: NotAnOp" in parser
    assert not result["parser_plan_written"]
    cpu = _one_line(result["cpu_target"])
    assert "--target cpu" in cpu and "quantize with --target tensorrt" in cpu
    assert not result["cpu_plan_written"]
    assert result["names_only_build"]["code"] == 0
    names_only = result["names_only"]
    assert not names_only["detailed"] and names_only["precisions"] == {}
    assert len(names_only["layers"]) == names_only["num_layers"]
    foreign = _one_line(result["foreign"])
    assert f"TensorRT {report['version']} on Fake GPU" in foreign  # where it is loaded
    assert "built with TensorRT 9.9.9.9 on Other GPU (sm 7.5)" in foreign
    assert "Magic tag does not match" in _one_line(result["garbage"])


def test_runner_in_bench_and_freeing_everything_on_failure(report):
    result = report["results"]["runner_failures"]
    for call in ("cudaMalloc", "cudaMallocHost", "cudaEventCreate"):
        failed = result[f"activate_{call}"]
        assert failed["outcome"].startswith("CudaError: ") and call in failed["outcome"]
        assert "cudaErrorMemoryAllocation: out of memory" in failed["outcome"]
        assert not failed["active"]
        assert failed["live"] == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    released = result["deactivate_cudaFree"]
    assert "cudaFree: cudaErrorIllegalAddress" in released["outcome"] and not released["active"]
    # the one failed free stays allocated; every other resource was released
    assert released["live"] == {"device": 1, "pinned": 0, "streams": 0, "events": 0}
    ok = result["bench"]
    assert ok["code"] == 0, ok["err"][-2000:]
    candidate = ok["report"]["candidate"]
    assert candidate["runtime"] == "tensorrt" and candidate["kind"] == "tensorrt-engine"
    assert candidate["graph_shape"] == [1, 3, 32, 48] and ok["report"]["images"]
    assert abs(ok["report"]["summary"]["standard"]["delta"]["psnr"]) < 0.5  # INT8 vs FP32
    conformance = ok["report"]["conformance"]  # ONNX Runtime ran the engine's parent graph
    assert conformance["status"] == "checked" and conformance["graph"] == candidate["onnx"]
    assert "psnr_delta" in ok["report"]["images"][0]["conformance"]
    bench = result["bench_cuda_error"]
    assert "cudaMemcpyAsync failed: cudaErrorIllegalAddress" in _one_line(bench)
    assert bench["live"] == released["live"]
