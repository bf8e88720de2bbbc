"""Bad-input and fault matrix for the ``rcan-deploy`` CLI (run by hand; the unit tests run a
fast subset in-process): ``python tests/fault_matrix.py [--keep DIR] [-k SUBSTRING]``.

Each case runs ``python -m rcan_deploy.cli ARGS`` as a new process in an empty folder holding
only the files it needs, and checks the README's contract: no traceback; the exit code the
case expects (0 success, 1 failed check/gate, 2 user mistake); exactly one stderr line when it
fails; no file left behind but the expected outputs (no temporary, half-written or empty-folder
leftovers); no input changed (sha256 before and after). Prints one line per failing case and a
total; exits 1 when any case fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


def _run_cli(args, cwd, env=None, preexec=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "rcan_deploy.cli", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, preexec_fn=preexec,
                          timeout=timeout)


def _graph(name, inputs, outputs, nodes, inits=(), opset=13):
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def build_fixtures(folder: Path) -> None:
    """Everything the cases use, made once (small graphs, checkpoints, images, reports)."""
    import cv2
    import torch

    import rcan_deploy
    from rcan_deploy.archs import build_model, variant_config

    fp32, int8 = folder / "rcan.onnx", folder / "rcan_int8.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan2-sr4k", random_weights=True,
                       shape=(32, 48))
    rcan_deploy.quantize(fp32, int8, dataset="samples", calib_crops=4, crop_size=32,
                         selection_images=1, mixed_precision=False, progress=False)
    state = build_model("official", variant_config("rcan2-sr4k")).state_dict()
    torch.save(state, folder / "w.pt")
    torch.save({k: (v.to(torch.int64) if k == "head.0.weight" else v) for k, v in state.items()},
               folder / "int64.pt")
    nan = {k: v.clone() for k, v in state.items()}
    nan["tail.1.bias"][0] = float("nan")
    torch.save(nan, folder / "nan.pt")
    torch.save(build_model("official", variant_config("rcan2-sr4k")), folder / "pickled.pt")
    torch.jit.save(torch.jit.trace(build_model("basicsr", variant_config("rcan2-sr4k")),
                                   torch.zeros(1, 3, 16, 16)), folder / "script.pt")
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "garbage.onnx").write_bytes(os.urandom(300))
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    (folder / "set1x1").mkdir()
    cv2.imwrite(str(folder / "set1x1" / "x.png"), np.zeros((1, 1, 3), np.uint8))
    # sidecars that lie or are malformed, each beside a copy of the fp32 graph
    side = json.loads((folder / "rcan.onnx.json").read_text())
    for name, data in {"list": [1, 2], "types": {**side, "scale": "2"},
                       "range0": {**side, "input_range": 0},
                       "wrongscale": {**side, "scale": 3, "config": {**side["config"], "scale": 3}},
                       "stale": {**side, "sha256": "0" * 64}}.items():
        shutil.copy(fp32, folder / f"{name}.onnx")
        (folder / f"{name}.onnx.json").write_text(json.dumps(data))
    # graphs that are valid ONNX but not single-input SR graphs
    w = helper.make_tensor("w", TensorProto.FLOAT, [12, 3, 1, 1], np.ones(36, np.float32))
    conv = [helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("DepthToSpace", ["c"], ["y"], blocksize=2)]
    good_out = [_vi("y", TensorProto.FLOAT, [1, 3, 16, 16])]
    graphs = {
        "two_inputs": _graph("g", [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                   _vi("z", TensorProto.FLOAT, [1, 3, 8, 8])],
                             good_out, [*conv, helper.make_node("Add", ["z", "z"], ["u"])], [w]),
        "int64_input": _graph("g", [_vi("x", TensorProto.INT64, [1, 3, 8, 8])],
                              [_vi("y", TensorProto.INT64, [1, 3, 8, 8])],
                              [helper.make_node("Identity", ["x"], ["y"])]),
        "custom_op": _graph("g", [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8])], good_out,
                            [helper.make_node("Magic", ["x"], ["y"], domain="my.ops")]),
        "rank2": _graph("g", [_vi("x", TensorProto.FLOAT, [8, 8])],
                        [_vi("y", TensorProto.FLOAT, [8, 8])],
                        [helper.make_node("Relu", ["x"], ["y"])]),
        "no_input": _graph("g", [], [_vi("y", TensorProto.FLOAT, [1])],
                           [helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
                               "v", TensorProto.FLOAT, [1], [1.0]))]),
        "x1": _graph("g", [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                     [_vi("y", TensorProto.FLOAT, [1, 3, 8, 8])],
                     [helper.make_node("Relu", ["x"], ["y"])]),
        "dyn_batch": _graph("g", [_vi("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                            [_vi("y", TensorProto.FLOAT, ["n", 3, 16, 16])], conv, [w]),
        "opset9": _graph("g", [_vi("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                         [_vi("y", TensorProto.FLOAT, [1, 3, 16, 16])],
                         [helper.make_node("Conv", ["x", "w"], ["c"]),
                          helper.make_node("Upsample", ["c", "s"], ["u"], mode="nearest"),
                          helper.make_node("Conv", ["u", "w2"], ["y"])],
                         [helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1],
                                             np.eye(3, dtype=np.float32).ravel()),
                          helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
                          helper.make_tensor("w2", TensorProto.FLOAT, [3, 3, 1, 1],
                                             np.eye(3, dtype=np.float32).ravel())], opset=9),
    }
    for name, model in graphs.items():
        onnx.save(model, folder / f"{name}.onnx")
    # reports for the gate
    from rcan_deploy.benchmark import bench

    (folder / "imgs").mkdir()
    shutil.copy(folder / "a.png", folder / "imgs" / "a.png")
    bench(model=int8, dataset=str(folder / "imgs"), warmup=0, repeat=1, progress=False,
          out=folder / "report")
    report = json.loads((folder / "report" / "report.json").read_text())
    variants = {"empty_summary": {**report, "summary": {}},
                "psnr_null": _with(report, None), "psnr_string": _with(report, "high"),
                "psnr_missing": _with(report, ...),
                "mismatch": {**report, "provenance": {**report["provenance"],
                                                      "reference_link": "mismatch"}},
                "list_report": [report]}
    for name, data in variants.items():
        (folder / f"{name}.json").write_text(json.dumps(data))
    # an INT8 graph whose FP32 parent was replaced (a consistent pair) after quantize
    (folder / "replaced").mkdir()
    shutil.copy(int8, folder / "replaced" / "rcan_int8.onnx")
    int8_side = json.loads((folder / "rcan_int8.onnx.json").read_text())
    int8_side["parent"]["path"] = "rcan.onnx"
    (folder / "replaced" / "rcan_int8.onnx.json").write_text(json.dumps(int8_side))
    rcan_deploy.export(folder / "replaced" / "rcan.onnx", source="official",
                       variant="rcan2-sr4k", random_weights=True, seed=5, shape=(32, 48))


def _with(report: dict, psnr) -> dict:
    data = json.loads(json.dumps(report))
    entry = data["summary"]["standard"]["candidate"]
    if psnr is ...:
        del entry["psnr"]
    else:
        entry["psnr"] = psnr
    return data


E2, E1, OK = {2}, {1}, {0}
Q = ["--calib-crops", "2", "--crop-size", "32", "--dataset", "samples"]
B = ["--limit", "1", "--warmup", "0", "--repeat", "1"]

# (name, files copied in, args, expected exit codes, outputs allowed to remain)
CASES = [
    # R1: --out naming an input or a sidecar
    ("export --out = --weights", ["w.pt"], ["export", "--weights", "w.pt", "--out", "w.pt"], E2, []),
    ("export --out weights sidecar", ["w.pt"], ["export", "--weights", "w.pt", "--out", "w.pt.json"], E2, []),
    ("quantize --out = input", ["rcan.onnx"], ["quantize", "rcan.onnx", *Q, "--out", "rcan.onnx"], E2, []),
    ("quantize --out sidecar name", ["rcan.onnx"], ["quantize", "rcan.onnx", *Q, "--out", "rcan.onnx.json"], E2, []),
    ("rewrite --out = input", ["rcan.onnx"], ["rewrite", "rcan.onnx", "--pixel-shuffle", "reshape", "--out", "rcan.onnx"], E2, []),
    ("rewrite --out other sidecar", ["rcan.onnx", "rcan_int8.onnx"], ["rewrite", "rcan.onnx", "--pixel-shuffle", "reshape", "--out", "rcan_int8.onnx.json"], E2, []),
    ("run --out overwrites image", ["rcan.onnx", "a.png"], ["run", "rcan.onnx", "a.png", "a_x2.png", "--out", "."], E2, []),
    ("train --out = --weights", ["w.pt"], ["train", "--weights", "w.pt", "--steps", "1", "--out", "w.pt"], E2, []),
    ("bench --out holds model", ["rcan.onnx"], ["bench", "rcan.onnx", *B, "--out", "."], OK, ["report.json", "report.md", "psnr_vs_gflops.png", "worst_crop.png"]),
    # R2: gate
    ("gate empty summary", ["empty_summary.json"], ["gate", "empty_summary.json"], E1, []),
    ("gate psnr null", ["psnr_null.json"], ["gate", "psnr_null.json"], E2, []),
    ("gate psnr string", ["psnr_string.json"], ["gate", "psnr_string.json"], E2, []),
    ("gate psnr missing", ["psnr_missing.json"], ["gate", "psnr_missing.json"], E2, []),
    ("gate reference mismatch", ["mismatch.json"], ["gate", "mismatch.json"], E1, []),
    ("gate report is a list", ["list_report.json"], ["gate", "list_report.json"], E2, []),
    ("gate good report", ["report"], ["gate", "report/report.json"], OK, []),
    ("bench replaced parent", ["replaced"], ["bench", "replaced/rcan_int8.onnx", *B], E2, []),
    ("gate --max-psnr-drop nan", ["report"], ["gate", "report/report.json", "--max-psnr-drop", "nan"], E2, []),
    # R3: unwritable outputs, checked before the work
    ("export --out no permission", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--out", "/sys/kernel/x.onnx"], E2, []),
    ("export --out parent is a file", ["a.png"], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--out", "a.png/x.onnx"], E2, []),
    ("export --out missing folder", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--out", "no/x.onnx"], E2, []),
    ("train --out no permission", [], ["train", "--steps", "1", "--out", "/sys/kernel/x.pt"], E2, []),
    ("quantize --out no permission", ["rcan.onnx"], ["quantize", "rcan.onnx", *Q, "--out", "/sys/kernel/q.onnx"], E2, []),
    ("bench --out no permission", ["rcan_int8.onnx", "rcan.onnx"], ["bench", "rcan_int8.onnx", *B, "--out", "/sys/kernel/r"], E2, []),
    ("run --out no permission", ["rcan.onnx", "a.png"], ["run", "rcan.onnx", "a.png", "--out", "/sys/kernel/o"], E2, []),
    ("run --out is a file", ["rcan.onnx", "a.png"], ["run", "rcan.onnx", "a.png", "--out", "a.png"], E2, []),
    ("export disk full", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--shape", "32x48"], E2, ["FSIZE"]),
    # R4: 0-byte and garbage ONNX
    *[(f"{cmd} empty.onnx", ["empty.onnx"], args, E2, []) for cmd, args in (
        ("check", ["check", "empty.onnx"]), ("info", ["info", "empty.onnx"]),
        ("run", ["run", "empty.onnx", "a.png", "--out", "o"]),
        ("rewrite", ["rewrite", "empty.onnx", "--pixel-shuffle", "reshape", "--out", "r.onnx"]),
        ("quantize", ["quantize", "empty.onnx", *Q, "--input-range", "1"]),
        ("bench", ["bench", "empty.onnx", "--scale", "2", "--input-range", "1", *B]))],
    ("info garbage.onnx", ["garbage.onnx"], ["info", "garbage.onnx"], E2, []),
    # R7: checkpoint contents
    ("export int64 tensor", ["int64.pt"], ["export", "--weights", "int64.pt"], E2, []),
    ("export nan tensor", ["nan.pt"], ["export", "--weights", "nan.pt"], E2, []),
    ("export pickled model", ["pickled.pt"], ["export", "--weights", "pickled.pt"], E2, []),
    ("export torchscript", ["script.pt"], ["export", "--weights", "script.pt", "--shape", "32x48"], OK, ["rcan.onnx", "rcan.onnx.json"]),
    # R8: sidecars
    *[(f"{cmd} sidecar {kind}", [f"{kind}.onnx"], args, E2, []) for kind in
      ("list", "types", "range0", "wrongscale", "stale") for cmd, args in (
          ("info", ["info", f"{kind}.onnx"]),
          ("run", ["run", f"{kind}.onnx", "a.png", "--out", "o"]),
          ("rewrite", ["rewrite", f"{kind}.onnx", "--pixel-shuffle", "reshape", "--out", "r.onnx"]),
          ("quantize", ["quantize", f"{kind}.onnx", *Q]),
          ("bench", ["bench", f"{kind}.onnx", *B]))
      if not (kind == "wrongscale" and cmd in ("info", "rewrite"))],
    # R10: graphs that are not single-input SR graphs
    *[(f"{cmd} {kind}", [f"{kind}.onnx"], args, E2, []) for kind in
      ("two_inputs", "int64_input", "custom_op", "rank2", "no_input", "x1") for cmd, args in (
          ("run", ["run", f"{kind}.onnx", "a.png", "--out", "o"]),
          ("quantize", ["quantize", f"{kind}.onnx", *Q, "--input-range", "1"]),
          ("bench", ["bench", f"{kind}.onnx", "--input-range", "1", *B]))],
    ("info no_input", ["no_input.onnx"], ["info", "no_input.onnx"], E2, []),
    ("info rank2 (no convs)", ["rank2.onnx"], ["info", "rank2.onnx"], OK, []),
    ("quantize int8 graph", ["rcan_int8.onnx", "rcan.onnx"], ["quantize", "rcan_int8.onnx", *Q, "--out", "q.onnx"], E2, []),
    ("info int8 graph", ["rcan_int8.onnx"], ["info", "rcan_int8.onnx"], OK, []),
    ("run dyn_batch", ["dyn_batch.onnx", "a.png"], ["run", "dyn_batch.onnx", "a.png", "--out", "o"], OK, ["o", "o/a_x2.png"]),
    ("quantize opset9 cpu", ["opset9.onnx"], ["quantize", "opset9.onnx", *Q, "--input-range", "1", "--target", "cpu", "--out", "q.onnx"], OK, ["q.onnx", "q.onnx.json"]),
    # R11 / R12: bad values
    ("export --seed -1", [], ["export", "--random-weights", "--seed", "-1"], E2, []),
    ("export --seed 1e20", [], ["export", "--random-weights", "--seed", "1e20"], E2, []),
    ("export --seed 2**40", [], ["export", "--random-weights", "--seed", str(2**40)], E2, []),
    ("train --learning-rate nan", [], ["train", "--learning-rate", "nan", "--out", "x.pt"], E2, []),
    ("train --lr -1", [], ["train", "--lr", "-1", "--out", "x.pt"], E2, []),
    ("bench 1x1 image", ["rcan.onnx", "set1x1"], ["bench", "rcan.onnx", "--dataset", "set1x1", *B], E2, []),
    ("export --scale 0", [], ["export", "--random-weights", "--scale", "0"], E2, []),
    ("export --scale 1", [], ["export", "--random-weights", "--scale", "1"], E2, []),
    ("export huge --shape", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--shape", "100000x100000"], E2, []),
    ("export huge volume", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--shape", "16000x16000"], E2, []),
    ("export --out dir/", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--out", "newdir/"], E2, []),
    ("quantize --max-drop nan", ["rcan.onnx"], ["quantize", "rcan.onnx", *Q, "--max-drop", "nan"], E2, []),
    ("info --shape on fixed graph", ["rcan.onnx"], ["info", "rcan.onnx", "--shape", "1080x1920"], E2, []),
    ("info --shape 7x7 stride 2", ["dyn.onnx"], ["info", "dyn.onnx", "--shape", "7x7"], E2, []),
    ("export --opset 99", [], ["export", "--random-weights", "--opset", "99"], E2, []),
    ("export --img-range official", [], ["export", "--variant", "rcan2-sr4k", "--random-weights", "--source", "official", "--img-range", "1"], E2, []),
    # misc user mistakes
    ("unknown command", [], ["frobnicate"], E2, []),
    ("unknown flag", [], ["export", "--nope"], E2, []),
    ("check missing file", [], ["check", "missing.onnx"], E2, []),
    ("run missing image", ["rcan.onnx"], ["run", "rcan.onnx", "nope.png", "--out", "o"], E2, []),
    ("run unreadable image", ["rcan.onnx", "garbage.onnx"], ["run", "rcan.onnx", "garbage.onnx", "--out", "o"], E2, []),
    ("quantize missing dataset", ["rcan.onnx"], ["quantize", "rcan.onnx", "--dataset", "nowhere"], E2, []),
    ("bench missing", [], ["bench", "missing.onnx"], E2, []),
    ("gate missing", [], ["gate", "missing.json"], E2, []),
    ("data fetch unknown", [], ["data", "fetch", "div2k_nope"], E2, []),
    ("build without tensorrt", ["rcan_int8.onnx"], ["build", "rcan_int8.onnx"], E2, []),
    ("variants", [], ["variants"], OK, []),
    ("help", [], ["--help"], OK, []),
    # bring your own graph
    ("bench bare graph", ["bare.onnx"], ["bench", "bare.onnx", "--input-range", "255", *B, "--out", "r"], OK, ["r", "r/report.json", "r/report.md", "r/psnr_vs_gflops.png", "r/worst_crop.png"]),
    ("bench bare graph no range", ["bare.onnx"], ["bench", "bare.onnx", *B], E2, []),
    ("bench bare graph wrong --scale", ["bare.onnx"], ["bench", "bare.onnx", "--scale", "3", "--input-range", "255", *B], E2, []),
    # a run that succeeds leaves exactly its outputs
    ("run ok", ["rcan.onnx", "a.png"], ["run", "rcan.onnx", "a.png", "--out", "o"], OK, ["o", "o/a_x2.png"]),
    ("check ok", ["rcan.onnx"], ["check", "rcan.onnx", "--max-rank", "4"], OK, []),
    ("check fails", ["rcan.onnx"], ["check", "rcan.onnx", "--forbid-ops", "DepthToSpace"], E1, []),
]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def run_case(case, fixtures: Path, env: dict) -> str | None:
    name, files, args, codes, outputs = case
    with tempfile.TemporaryDirectory(prefix="fault-") as tmp:
        work = Path(tmp)
        for item in files:
            source = fixtures / item
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / item)
            if source.is_file() and Path(f"{source}.json").is_file():
                shutil.copy2(f"{source}.json", work / f"{item}.json")
        before = _digest(work)
        preexec = _limit_file_size if outputs == ["FSIZE"] else None
        done = _run_cli(args, work, env, preexec)
        after = _digest(work)
        err = done.stderr.strip().splitlines()
        problems = []
        if "Traceback" in done.stderr:
            problems.append("traceback")
        if done.returncode not in codes:
            problems.append(f"exit {done.returncode} not in {sorted(codes)}")
        if done.returncode != 0 and len(err) != 1:
            problems.append(f"{len(err)} stderr lines")
        changed = [f for f, h in before.items() if after.get(f) != h]
        if changed:
            problems.append(f"inputs changed: {changed}")
        allowed = set(before) | {o for o in outputs if o != "FSIZE"}
        left = sorted({str(p.relative_to(work)) for p in work.rglob("*")} - allowed
                      - {str(Path(f).parent) for f in allowed if "/" in f})
        if left:
            problems.append(f"left behind: {left}")
        if problems:
            return f"FAIL {name}: {'; '.join(problems)} | {err[-1] if err else ''}"
    return None


def _workers() -> set[int]:
    """Process ids of running modelopt workers."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"modelopt_worker" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def signal_cases(fixtures: Path, env: dict) -> tuple[int, list[str]]:
    """Ctrl-C during start-up and during work, SIGTERM during work, SIGKILL of quantize (its
    worker must not run on; the next run removes the temporary files)."""
    failures, count = [], 0
    quantize = ["quantize", "rcan.onnx", "--calib-crops", "256", "--crop-size", "128",
                "--dataset", "samples"]
    for sig, delay, args, code in ((signal.SIGINT, 0.05, ["check", "x.onnx"], 130),
                                   (signal.SIGINT, 0.4, ["export", "--random-weights"], 130),
                                   (signal.SIGINT, 0.2, quantize, 130),
                                   (signal.SIGTERM, 0.2, quantize, 143),
                                   (signal.SIGKILL, 0.2, quantize, -9)):
        count += 1
        with tempfile.TemporaryDirectory(prefix="fault-") as tmp:
            work = Path(tmp)
            for name in ("rcan.onnx", "rcan.onnx.json"):
                shutil.copy2(fixtures / name, work / name)
            before = _workers()
            process = subprocess.Popen([sys.executable, "-m", "rcan_deploy.cli", *args], cwd=work,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            if args[0] == "quantize":  # signal while the modelopt worker runs
                deadline = time.monotonic() + 120
                while not _workers() - before and time.monotonic() < deadline \
                        and process.poll() is None:
                    time.sleep(0.05)
            time.sleep(delay)
            process.send_signal(sig)
            _, err = process.communicate(timeout=120)
            time.sleep(0.5)
            problems = []
            if process.returncode != code:
                problems.append(f"exit {process.returncode} != {code}")
            if sig != signal.SIGKILL and (len(err.strip().splitlines()) != 1 or "Traceback" in err):
                problems.append(f"stderr: {err.strip()[-200:]!r}")
            orphans = _workers() - before
            if orphans:
                problems.append(f"orphan modelopt workers {sorted(orphans)}")
                for pid in orphans:
                    os.kill(pid, signal.SIGKILL)
            if sig == signal.SIGKILL:  # the next run removes the killed run's temporary files
                _run_cli(["check", "rcan.onnx"], work, env)
            left = sorted(p.name for p in work.iterdir())
            if left != ["rcan.onnx", "rcan.onnx.json"] and sig != signal.SIGKILL:
                problems.append(f"left behind: {left}")
            if problems:
                failures.append(f"FAIL {sig.name} at {delay} s of {args[0]}: "
                                f"{'; '.join(problems)}")
    return count, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="fixture folder to reuse (made if missing)")
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    options = parser.parse_args()
    fixtures = options.keep or Path(tempfile.mkdtemp(prefix="fault-fixtures-"))
    env = {**os.environ, "RCAN_DEPLOY_CACHE": str(fixtures / "cache"),
           "RCAN_DEPLOY_DATA": str(fixtures / "no-data")}
    os.environ.update({k: env[k] for k in ("RCAN_DEPLOY_CACHE", "RCAN_DEPLOY_DATA")})
    if not (fixtures / "rcan.onnx").is_file():
        fixtures.mkdir(parents=True, exist_ok=True)
        build_fixtures(fixtures)
        from rcan_deploy.checkpoints import resolve_model
        from rcan_deploy.exporter import ExportOptions, export_model

        result = export_model(resolve_model("official", "rcan2-sr4k", 2, random_weights=True),
                              ExportOptions(shape=(32, 48)))
        onnx.save(result.dynamic_model, fixtures / "dyn.onnx")
        shutil.copy(fixtures / "rcan.onnx", fixtures / "bare.onnx")
    cases = [c for c in CASES if options.k in c[0]]
    start, failures = time.perf_counter(), []
    for case in cases:
        failure = run_case(case, fixtures, env)
        if failure:
            failures.append(failure)
            print(failure, flush=True)
    if not options.k:
        count, signal_failures = signal_cases(fixtures, env)
        for failure in signal_failures:
            print(failure, flush=True)
        cases += [None] * count
        failures += signal_failures
    print(f"{len(cases) - len(failures)} passed, {len(failures)} failed "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
