"""Run the project's TensorRT code paths against one release of the real bindings.

``python -m trt_contract.driver JOB.json`` in a process whose PYTHONPATH holds the unpacked
``tensorrt_bindings`` and whose LD_LIBRARY_PATH holds their stub libraries
(:mod:`trt_contract.bindings`). ``tensorrt`` becomes a :class:`ContractModule` over the real
module with the CPU fakes of :mod:`trt_contract.fake_tensorrt`; ``cuda.bindings.runtime`` the
fake of :mod:`trt_contract.fake_cudart`. Each scenario runs the CLI or the runner as a user
would and the results, with every refused attribute or call, go to the job's ``out`` JSON.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

from . import fake_tensorrt, standins
from .fake_cudart import FakeCuda, cudaError_t


def cli(*args: str) -> dict:
    from rcan_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def engine_spec(path: Path) -> dict:
    """What the fake builder recorded in an engine file (without the graph)."""
    spec = json.loads(path.read_bytes()[len(fake_tensorrt.ENGINE_MAGIC):])
    spec.pop("onnx")
    return spec


def run_engine(cuda: FakeCuda, engine: Path, reference: Path) -> dict:
    """Three runs of the TensorRT runner against ONNX Runtime on ``reference``."""
    from rcan_deploy.backends import get_runner
    from rcan_deploy.onnx_utils import load_model, run

    model = load_model(reference)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    pinned_before = cuda.calls["cudaMallocHost"]
    with get_runner("tensorrt", engine) as runner:
        outputs = [runner.infer(x) for _ in range(3)]
        live_while_active = cuda.live()
        gpu_times = list(runner.gpu_times)
    expected = run(model, x)[0]
    return {"max_abs_error": float(np.max(np.abs(outputs[-1] - expected))),
            "scale": float(np.max(np.abs(expected))), "repeatable":
                all(np.array_equal(outputs[0], o) for o in outputs),
            "shape": list(outputs[-1].shape), "dtype": str(outputs[-1].dtype),
            "gpu_times": gpu_times, "pinned_allocations": cuda.calls["cudaMallocHost"] -
            pinned_before, "unpinned_copies": cuda.unpinned_copies,
            "live_while_active": live_while_active, "live_after": cuda.live()}


def scenario_precisions(job: dict, cuda: FakeCuda) -> dict:
    results = {}
    for precision, graph in (("int8", "int8"), ("fp32", "fp32"), ("fp16", "fp32"),
                             ("best", "int8")):
        engine = Path(job["work"]) / f"{precision}.plan"
        built = cli("build", job[graph], "--out", engine, "--precision", precision,
                    "--profile-verbosity", "detailed", "--workspace", "64", "--show-warnings")
        result = {"build": built}
        if built["code"] == 0:
            result["sidecar"] = json.loads(engine.with_name(engine.name + ".json").read_text())
            result["engine"] = engine_spec(engine)
            inspected = cli("inspect", engine, "--json")
            result["inspect"] = json.loads(inspected["out"]) if inspected["code"] == 0 \
                else inspected
            result["inspect_table"] = cli("inspect", engine)
            result["run"] = run_engine(cuda, engine, Path(job[graph]))
        results[precision] = result
    return results


def scenario_timing_cache(job: dict, cuda: FakeCuda) -> dict:
    work = Path(job["work"])
    cache, engine = work / "timing.cache", work / "cached.plan"
    runs = []
    for _ in range(2):
        built = cli("build", job["int8"], "--out", engine, "--timing-cache", cache)
        runs.append({**built, "cache": cache.read_bytes().decode() if cache.exists() else None})
    corrupt = work / "corrupt.cache"
    corrupt.write_bytes(b"not a timing cache")
    bad = cli("build", job["int8"], "--out", work / "corrupt.plan", "--timing-cache", corrupt)
    return {"runs": runs, "corrupt": bad, "corrupt_plan_written": (work / "corrupt.plan").exists()}


def scenario_refusals(job: dict, cuda: FakeCuda) -> dict:
    work = Path(job["work"])
    parser = cli("build", job["custom_op"], "--out", work / "custom.plan", "--precision", "fp32")
    cpu = cli("build", job["cpu_int8"], "--out", work / "cpu.plan")
    names_only = work / "names.plan"
    built = cli("build", job["int8"], "--out", names_only)
    inspected = cli("inspect", names_only, "--json")
    foreign = work / "foreign.plan"
    data = names_only.read_bytes()
    spec = json.loads(data[len(fake_tensorrt.ENGINE_MAGIC):])
    spec["version"] = "9.9.9.9"
    foreign.write_bytes(fake_tensorrt.ENGINE_MAGIC + json.dumps(spec).encode())
    foreign.with_name("foreign.plan.json").write_text(json.dumps(
        {"kind": "tensorrt-engine", "tensorrt": {"version": "9.9.9.9"},
         "gpu": {"name": "Other GPU", "compute_capability": "7.5"}}))
    return {"parser": parser, "parser_plan_written": (work / "custom.plan").exists(),
            "cpu_target": cpu, "cpu_plan_written": (work / "cpu.plan").exists(),
            "names_only_build": built, "names_only": json.loads(inspected["out"]),
            "foreign": cli("inspect", foreign), "garbage": cli("inspect", job["int8"])}


def scenario_runner_failures(job: dict, cuda: FakeCuda) -> dict:
    from rcan_deploy.backends import get_runner

    engine = Path(job["work"]) / "names.plan"
    results = {}
    for name, error in (("cudaMalloc", cudaError_t.cudaErrorMemoryAllocation),
                        ("cudaMallocHost", cudaError_t.cudaErrorMemoryAllocation),
                        ("cudaEventCreate", cudaError_t.cudaErrorMemoryAllocation)):
        cuda.fail = {name: {cuda.calls[name] + 2: error}}  # the second such call fails
        runner = get_runner("tensorrt", engine)
        try:
            runner.activate()
            outcome = "activated"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        results[f"activate_{name}"] = {"outcome": outcome, "active": runner.is_active,
                                       "live": cuda.live()}
    cuda.fail = {"cudaFree": {cuda.calls["cudaFree"] + 1: cudaError_t.cudaErrorIllegalAddress}}
    runner = get_runner("tensorrt", engine)
    runner.activate()
    try:
        runner.deactivate()
        outcome = "deactivated"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    results["deactivate_cudaFree"] = {"outcome": outcome, "active": runner.is_active,
                                      "live": cuda.live()}
    report = Path(job["work"]) / "bench-ok"
    results["bench"] = {**cli("bench", "--engine", engine, "--dataset", "samples", "--limit", "1",
                              "--warmup", "0", "--repeat", "2", "--out", report),
                        "report": json.loads((report / "report.json").read_text())
                        if (report / "report.json").is_file() else None}
    cuda.fail = {"cudaMemcpyAsync": {cuda.calls["cudaMemcpyAsync"] + 1:
                                     cudaError_t.cudaErrorIllegalAddress}}
    result = cli("bench", "--engine", engine, "--reference", job["int8"], "--dataset", "samples",
                 "--limit", "1", "--warmup", "0", "--repeat", "1", "--out",
                 Path(job["work"]) / "bench")
    results["bench_cuda_error"] = {**result, "live": cuda.live()}
    cuda.fail = {}
    return results


def scenario_self_check(job: dict, cuda: FakeCuda) -> dict:
    """Misuses the contract module on purpose: each line must be refused (proves the harness
    catches a misspelled attribute, an unknown keyword, a wrong argument type, a write to a
    read-only property and a name the release does not have)."""
    import tensorrt as trt

    from rcan_deploy.trt.engine import trt_logger

    builder = trt.Builder(trt_logger(trt))
    config = builder.create_builder_config()
    attempts = {
        "misspelled method": lambda: builder.create_netwrok(0),
        "unknown keyword": lambda: builder.create_network(flag=0),
        "wrong argument type": lambda: config.set_flag(trt.MemoryPoolType.WORKSPACE),
        "too many arguments": lambda: config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, 1, 2),
        "read-only property": lambda: setattr(builder.create_network(0), "num_inputs", 3),
        "missing module name": lambda: trt.IEngineInspector,
    }
    outcome = {}
    for label, attempt in attempts.items():
        before = len(standins.VIOLATIONS)
        try:
            attempt()
            outcome[label] = "accepted"
        except (AttributeError, TypeError) as exc:
            outcome[label] = f"refused: {exc}" if len(standins.VIOLATIONS) > before else \
                f"raised without recording: {exc}"
    return outcome


SCENARIOS = {"precisions": scenario_precisions, "timing_cache": scenario_timing_cache,
             "refusals": scenario_refusals, "runner_failures": scenario_runner_failures,
             "self_check": scenario_self_check}  # last: it records refusals on purpose


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    real = importlib.import_module("tensorrt_bindings")
    standins.use_real(real)
    cuda = FakeCuda()
    cuda.install()
    fake_tensorrt.CUDA = cuda
    sys.modules["tensorrt"] = standins.ContractModule(fake_tensorrt.STANDINS)
    report = {"version": real.__version__, "results": {}}
    for name in job.get("scenarios", SCENARIOS):
        if name == "self_check":
            report["violations"] = list(standins.VIOLATIONS)
        try:
            report["results"][name] = SCENARIOS[name](job, cuda)
        except Exception:
            report["results"][name] = {"exception": traceback.format_exc()}
    report.setdefault("violations", list(standins.VIOLATIONS))
    Path(job["out"]).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
