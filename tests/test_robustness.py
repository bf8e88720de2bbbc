"""One reproduction per defect class of issue 12 (R1-R16, external tests, bring your own graph),
in-process and fast; ``tests/fault_matrix.py`` runs the full matrix as separate processes."""

import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import rcan_deploy
from rcan_deploy.archs import build_model, variant_config
from rcan_deploy.cli import main
from rcan_deploy.errors import UserError

from conftest import tiny_int8_pair

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust")
    tiny_int8_pair(folder, (32, 48), calib_crops=4, crop_size=32)
    cv2.imwrite(str(folder / "a.png"), np.random.default_rng(0).integers(
        0, 256, (40, 56, 3), dtype=np.uint8))
    return folder


@pytest.fixture()
def work(graphs, tmp_path, monkeypatch):
    for name in ("rcan.onnx", "rcan.onnx.json", "rcan_int8.onnx", "rcan_int8.onnx.json", "a.png"):
        shutil.copy(graphs / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _error(capsys, args, fragment, code=2):
    got, _, err = _cli(capsys, *args)
    assert got == code and len(err) == 1, (got, err)
    assert fragment in err[0], err[0]
    return err[0]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_r1_out_never_overwrites_an_input(work, capsys):
    torch.save(build_model("official", variant_config("rcan2-sr4k")).state_dict(), "w.pt")
    before = _snapshot(work)
    _error(capsys, ["export", "--weights", "w.pt", "--out", "w.pt"], "would overwrite the input")
    _error(capsys, ["quantize", "rcan.onnx", "--out", "rcan.onnx"], "would overwrite the input")
    _error(capsys, ["rewrite", "rcan.onnx", "--pixel-shuffle", "reshape", "--out",
                    "rcan_int8.onnx.json"], "sidecars")
    _error(capsys, ["run", "rcan.onnx", "a.png", "a_x2.png", "--out", "."], "no such image")
    shutil.copy("a.png", "a_x2.png")
    before["a_x2.png"] = Path("a_x2.png").read_bytes()
    _error(capsys, ["run", "rcan.onnx", "a.png", "a_x2.png", "--out", "."],
           "would overwrite the input a_x2.png")
    assert _snapshot(work) == before


def test_r2_gate_cannot_be_fooled(work, capsys, tmp_path):
    assert main(["bench", "rcan_int8.onnx", "--limit", "1", "--warmup", "0", "--repeat", "1",
                 "--out", "r"]) == 0
    report = json.loads(Path("r/report.json").read_text())
    assert report["provenance"]["reference_link"] == "verified"
    for name, data, code, fragment in (
            ("empty", {**report, "summary": {}}, 1, "metrics checked"),
            ("mismatch", {**report, "provenance": {**report["provenance"],
                                                   "reference_link": "mismatch"}}, 1,
             "reference link to candidate (mismatch)"),
            ("null", _set(report, None), 2, "expected a number"),
            ("text", _set(report, "31.2"), 2, "expected a number")):
        Path(f"{name}.json").write_text(json.dumps(data))
        _error(capsys, ["gate", f"{name}.json"], fragment, code)
    # the FP32 parent replaced (by a consistent pair) after quantize: the chain is broken
    side = json.loads(Path("rcan_int8.onnx.json").read_text())
    side["parent"]["path"] = "rcan.onnx"
    Path("rcan_int8.onnx.json").write_text(json.dumps(side))
    rcan_deploy.export("rcan.onnx", source="official", variant="rcan2-sr4k", random_weights=True,
                       seed=7, shape=(32, 48))
    _error(capsys, ["bench", "rcan_int8.onnx", "--limit", "1"], "chain is broken")


def _set(report, value):
    data = json.loads(json.dumps(report))
    data["summary"]["standard"]["candidate"]["psnr"] = value
    return data


def test_r3_unwritable_output_is_found_before_the_work(work, capsys, monkeypatch):
    from rcan_deploy import training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained anyway"))
    _error(capsys, ["train", "--steps", "1", "--out", "/sys/kernel/x.pt"], "cannot write in")
    _error(capsys, ["export", "--variant", "rcan2-sr4k", "--random-weights", "--out",
                    "a.png/x.onnx"], "is a file")
    _error(capsys, ["bench", "rcan_int8.onnx", "--out", "/sys/kernel/r"], "cannot write in")


def test_r3_disk_full_is_one_line(work, capsys, monkeypatch):
    real = onnx.save

    def full(model, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    _error(capsys, ["rewrite", "rcan.onnx", "--pixel-shuffle", "reshape", "--out", "r.onnx"],
           "No space left on device")
    monkeypatch.setattr(onnx, "save", real)
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(("r.", ".r."))) == []


def test_r4_empty_onnx_is_refused_by_every_reader(work, capsys):
    Path("empty.onnx").write_bytes(b"")
    for args in (["check", "empty.onnx"], ["info", "empty.onnx"],
                 ["run", "empty.onnx", "a.png", "--out", "o"],
                 ["quantize", "empty.onnx", "--input-range", "1", "--out", "q.onnx"]):
        _error(capsys, args, "not an ONNX model (an empty file)")
    assert not Path("o").exists()


def test_r6_killed_writers_and_workers_leave_nothing(work):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = work / f".q.onnx.{dead}.deadbeef.tmp"
    stale.write_bytes(b"half")
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"rcan-deploy-quantize-{dead}-x"
    folder.mkdir()
    rcan_deploy.quantize("rcan.onnx", "q.onnx", dataset="samples", calib_crops=2, crop_size=32,
                         selection_images=1, mixed_precision=False, progress=False)
    assert not stale.exists() and not folder.exists()
    from rcan_deploy.quant import ptq

    source = Path(ptq.__file__).read_text()
    assert "preexec_fn=_die_with_parent" in source  # the worker gets SIGKILL with its parent


def test_r7_checkpoint_tensor_types_and_values(work, capsys):
    state = build_model("official", variant_config("rcan2-sr4k")).state_dict()
    torch.save({**state, "head.0.bias": state["head.0.bias"].to(torch.int64)}, "int.pt")
    _error(capsys, ["export", "--weights", "int.pt"], "tensor head.0.bias is int64")
    bad = {k: v.clone() for k, v in state.items()}
    bad["tail.1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(bad, "inf.pt")
    _error(capsys, ["export", "--weights", "inf.pt"], "tensor tail.1.weight holds NaN or inf")
    torch.save(build_model("official", variant_config("rcan2-sr4k")), "whole.pt")
    message = _error(capsys, ["export", "--weights", "whole.pt"], "not a state_dict")
    assert "OfficialRCAN" in message and "torch.save(model.state_dict()" in message


def test_r8_sidecar_types_and_scale_contradictions(work, capsys):
    side = json.loads(Path("rcan.onnx.json").read_text())
    Path("rcan.onnx.json").write_text(json.dumps([side]))
    _error(capsys, ["info", "rcan.onnx"], "not an rcan-deploy sidecar (a JSON list")
    Path("rcan.onnx.json").write_text(json.dumps({**side, "input_range": 0}))
    _error(capsys, ["run", "rcan.onnx", "a.png", "--out", "o"], "'input_range' is 0")
    Path("rcan.onnx.json").write_text(json.dumps({**side, "scale": 3,
                                                  "config": {**side["config"], "scale": 3}}))
    _error(capsys, ["run", "rcan.onnx", "a.png", "--out", "o"], "says x3, but")


def test_r9_run_streams_tiles_with_bounded_memory(tmp_path):
    """A 1200x1600 image through a 64x64 graph: peak traced memory stays near the uint8 input
    plus one band of tiles, far below whole-image float copies (~400 B per input pixel)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    path = tmp_path / "sr.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=13)
    from rcan_deploy.record import Record, save_onnx

    save_onnx(onnx.load(path), path, Record("onnx-fp32", scale=2, input_range=1))
    height, width = 1200, 1600
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), image)
    tracemalloc.start()
    records = rcan_deploy.upscale(path, [tmp_path / "big.png"], tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    band = 64 * 2 * width * 2 * 3 * 4  # one float32 band of output rows
    assert peak < 3 * height * width + 2 * band + 8e6, peak / (height * width)
    assert records[0]["path"] == "tile" and records[0]["output_size"] == [2400, 3200]
    written = cv2.imread(str(tmp_path / "out" / "big_x2.png"))
    assert written.shape == (2400, 3200, 3)
    with torch.no_grad():  # bit-exact with whole-image inference away from the border
        whole = model(torch.from_numpy(image[:64, :64, ::-1].transpose(2, 0, 1)[None] / 255.0)
                      .float())[0].numpy().transpose(1, 2, 0)
    expected = np.floor(np.clip(whole, 0, 1) * 255 + 0.5).astype(np.uint8)[:120, :120, ::-1]
    assert np.abs(written[:120, :120].astype(int) - expected).max() <= 1


def _tiny_graph(tmp_path, name, inputs, outputs, nodes, inits=(), opset=13):
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, tmp_path / f"{name}.onnx")
    return f"{name}.onnx"


def test_r10_graphs_that_are_not_single_input_sr_graphs(work, capsys):
    vi = helper.make_tensor_value_info
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    two = _tiny_graph(work, "two", [vi("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                    vi("z", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [vi("y", TensorProto.FLOAT, [1, 3, 8, 8])], relu)
    ints = _tiny_graph(work, "ints", [vi("x", TensorProto.INT64, [1, 3, 8, 8])],
                       [vi("y", TensorProto.INT64, [1, 3, 8, 8])], relu)
    same = _tiny_graph(work, "same", [vi("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [vi("y", TensorProto.FLOAT, [1, 3, 8, 8])], relu)
    custom = _tiny_graph(work, "custom", [vi("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                         [vi("y", TensorProto.FLOAT, [1, 3, 16, 16])],
                         [helper.make_node("Magic", ["x"], ["y"], domain="my.ops")])
    for path, fragment in ((two, "2 inputs"), (ints, "is int64"), (same, "x1 is not"),
                           (custom, "custom operator")):
        _error(capsys, ["run", path, "a.png", "--out", "o"], fragment)
    _error(capsys, ["quantize", "rcan_int8.onnx", "--out", "q.onnx"], "already quantized")


def test_r10_opset9_graph_quantizes_for_the_cpu_target(work):
    eye = np.eye(3, dtype=np.float32).ravel()
    vi = helper.make_tensor_value_info
    path = _tiny_graph(work, "old", [vi("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                       [vi("y", TensorProto.FLOAT, [1, 3, 32, 32])],
                       [helper.make_node("Conv", ["x", "w"], ["c"]),
                        helper.make_node("Upsample", ["c", "s"], ["u"], mode="nearest"),
                        helper.make_node("Conv", ["u", "w"], ["y"])],
                       [helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], eye),
                        helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])], opset=9)
    record = rcan_deploy.quantize(path, "q.onnx", dataset="samples", calib_crops=2, crop_size=16,
                                  selection_images=1, mixed_precision=False, target="cpu", input_range=1, progress=False)
    assert record["scale"] == 2 and record["parent"]["kind"] == "onnx-fp32"


def test_r11_r12_bad_values_are_flag_errors(work, capsys):
    for args, fragment in ((["export", "--random-weights", "--seed", "-1"], "--seed"),
                           (["export", "--random-weights", "--seed", "1e20"], "--seed"),
                           (["train", "--learning-rate", "nan", "--out", "x.pt"], "--learning-rate"),
                           (["export", "--random-weights", "--scale", "0"], "--scale"),
                           (["export", "--random-weights", "--scale", "1"], "--scale"),
                           (["export", "--variant", "rcan2-sr4k", "--random-weights", "--shape",
                             "100000x100000"], "--shape"),
                           (["export", "--variant", "rcan2-sr4k", "--random-weights", "--out",
                             "newdir/"], "names a folder"),
                           (["quantize", "--max-drop", "nan"], "--max-drop"),
                           (["info", "rcan.onnx", "--shape", "1080x1920"], "fixed input")):
        _error(capsys, args, fragment)
    with pytest.raises(UserError, match="--scale 0"):
        rcan_deploy.export("x.onnx", variant="rcan2-sr4k", random_weights=True, scale=0)
    (work / "tiny").mkdir()
    cv2.imwrite(str(work / "tiny" / "t.png"), np.zeros((1, 1, 3), np.uint8))
    _error(capsys, ["bench", "rcan.onnx", "--dataset", "tiny"], "too small for the metrics")
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["rcan.onnx", "rcan.onnx.json", "rcan_int8.onnx", "rcan_int8.onnx.json", "a.png", "tiny"])


def test_r12_info_shape_respects_the_graph_stride(work, capsys):
    from rcan_deploy.checkpoints import resolve_model
    from rcan_deploy.exporter import ExportOptions, export_model

    result = export_model(resolve_model("official", "rcan2-sr4k", 2, random_weights=True),
                          ExportOptions(shape=(32, 32)))
    onnx.save(result.dynamic_model, "dyn.onnx")
    _error(capsys, ["info", "dyn.onnx", "--shape", "7x7"], "multiples of 2")


def test_r13_help_check_and_gate_do_not_import_torch(work):
    code = ("import sys; from rcan_deploy.cli import main; main(sys.argv[1:]); "
            "print('torch' in sys.modules)")
    for args in (["--help"], ["check", "rcan.onnx"], ["gate", "missing.json"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, cwd=work)
        assert done.stdout.strip().splitlines()[-1] == "False", (args, done.stdout)


def test_r13_ctrl_c_during_start_up_is_one_line_130(work, monkeypatch, capsys):
    import rcan_deploy.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the commands were imported

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["check", "rcan.onnx"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["rcan-deploy: interrupted"]


def test_r14_one_stderr_line_despite_library_chatter(work, capsys):
    warnings_png = work / "srgb.png"  # a PNG with a bad iCCP profile makes libpng warn
    data = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    import struct
    import zlib

    chunk = b"iCCP" + b"bad\x00\x00" + zlib.compress(b"x" * 10)
    iccp = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    warnings_png.write_bytes(data[:33] + iccp + data[33:])
    done = subprocess.run([sys.executable, "-m", "rcan_deploy.cli", "run", "rcan.onnx",
                           "srgb.png", "missing.png", "--out", "o"], capture_output=True,
                          text=True, cwd=work)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_r15_failed_runs_leave_no_folder_and_no_partial_report(work, capsys, monkeypatch):
    Path("empty.onnx").write_bytes(b"")
    _error(capsys, ["run", "rcan.onnx", "a.png", "garbage.png", "--out", "o"], "no such image")
    Path("garbage.png").write_bytes(b"not a png")
    _error(capsys, ["run", "rcan.onnx", "a.png", "garbage.png", "--out", "deep/o"],
           "not a readable image")
    assert Path("deep/o/a_x2.png").is_file()  # the complete output of the first image stays
    from rcan_deploy.benchmark import report

    monkeypatch.setattr(report, "_markdown", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        rcan_deploy.bench(model="rcan_int8.onnx", limit=1, warmup=0, repeat=1, out="r",
                          progress=False)
    assert not Path("r").exists() and not [p for p in work.iterdir() if p.name.startswith(".r")]


def test_r16_messages_are_whole(work, capsys):
    from rcan_deploy.errors import short_reason

    text = short_reason(RuntimeError("word " * 60 + "\nException raised from f at x.cpp:1"))
    assert text.endswith(" ...") and len(text) <= 164 and "word wo ..." not in text
    assert short_reason(OSError()) == "OSError"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), "script.pt")
    message = _error(capsys, ["export", "--weights", "script.pt"], "script.pt")
    assert "match no RCAN layout" in message


def test_external_shared_cbam_weights_count_once(tmp_path):
    for optimize in (False, True):
        out = tmp_path / f"cbam_{optimize}.onnx"
        rcan_deploy.export(out, source="rcan-pytorch", variant="rcan-cbam", scale=4,
                           random_weights=True, shape=(16, 16), optimize=optimize)
        model = build_model("rcan-pytorch", variant_config("rcan-cbam", 4))
        expected = sum(p.numel() for p in model.parameters())
        info = rcan_deploy.info(out)
        assert (info["architecture"] or info)["params"] == expected


def test_external_basicsr_constants_and_official_rgb_range(tmp_path):
    config = variant_config("rcan2-sr4k")
    net = build_model("basicsr", config, {"img_range": 1.0, "res_scale": 0.5,
                                          "rgb_mean": (0.5, 0.5, 0.5)})
    torch.save({"params": net.state_dict()}, tmp_path / "b.pt")
    record = rcan_deploy.export(tmp_path / "b.onnx", weights=tmp_path / "b.pt", shape=(32, 48),
                                img_range=1.0, res_scale=0.5, rgb_mean=(0.5, 0.5, 0.5))
    assert record["config"]["forward"] == {"img_range": 1.0, "rgb_mean": [0.5, 0.5, 0.5],
                                           "res_scale": 0.5}
    x = np.random.default_rng(0).random((1, 3, 32, 48), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    from rcan_deploy.onnx_utils import run

    assert np.abs(run(onnx.load(tmp_path / "b.onnx"), x)[0] - expected).max() < 1e-4
    official = build_model("official", config)
    official.load_state_dict({**official.state_dict(),
                              "sub_mean.bias": official.sub_mean.bias / 255,
                              "add_mean.bias": official.add_mean.bias / 255})
    torch.save(official.state_dict(), tmp_path / "o.pt")
    assert rcan_deploy.export(tmp_path / "o.onnx", weights=tmp_path / "o.pt",
                              shape=(32, 48))["input_range"] == 1


def test_bring_your_own_graph_bench(work, capsys):
    shutil.copy("rcan.onnx", "theirs.onnx")
    _error(capsys, ["bench", "theirs.onnx", "--limit", "1"], "--input-range")
    _error(capsys, ["bench", "theirs.onnx", "--scale", "3", "--input-range", "255"], "(x2)")
    code, _, _ = _cli(capsys, "bench", "theirs.onnx", "--input-range", "255", "--limit", "1",
                      "--warmup", "0", "--repeat", "1", "--out", "byo")
    report = json.loads(Path("byo/report.json").read_text())
    assert code == 0 and report["provenance"]["candidate_provenance"] == "none (no sidecar)"
    assert report["model"]["scale"] == 2 and report["reference"] is None
    code, _, _ = _cli(capsys, "bench", "rcan_int8.onnx", "--reference", "theirs.onnx",
                      "--limit", "1", "--warmup", "0", "--repeat", "1", "--out", "ref")
    assert code == 0
    link = json.loads(Path("ref/report.json").read_text())["provenance"]["reference_link"]
    assert link == "verified"  # the same bytes as the recorded parent
