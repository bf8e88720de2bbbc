"""CLI: commands chain through default names; user mistakes give one line, exit 2, no artifact."""

import json
import os

import pytest

from rcan_deploy.cli import main


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_export_default_name_then_rewrite_check_info(workdir, capsys):
    code, out, _ = _run(capsys, "export", "--variant", "rcan2-sr4k", "--random-weights",
                        "--shape", "64x96")
    assert code == 0 and "wrote rcan.onnx" in out and "max abs error" in out
    assert (workdir / "rcan.onnx").is_file() and (workdir / "rcan.onnx.json").is_file()

    code, _, _ = _run(capsys, "check", "rcan.onnx", "--forbid-ops", "DepthToSpace")
    assert code == 1
    code, out, _ = _run(capsys, "rewrite", "rcan.onnx", "--pixel-shuffle", "convtranspose",
                        "--out", "rank4.onnx")
    assert code == 0 and "verification max abs error" in out
    side = json.loads((workdir / "rank4.onnx.json").read_text())
    assert side["parent"]["path"] == "rcan.onnx" and side["rewrite_verification"]["max_abs_error"] == 0
    code, out, _ = _run(capsys, "check", "rank4.onnx", "--forbid-ops", "DepthToSpace",
                        "--max-rank", "4")
    assert code == 0 and "check passed" in out and "ConvTranspose" in out

    code, out, _ = _run(capsys, "info", "rank4.onnx", "--json")
    data = json.loads(out)
    assert code == 0 and {"params", "macs", "macs_bias", "input_shape", "output_shape"} <= set(data)
    assert data["input_shape"] == [1, 3, 64, 96] and data["output_shape"] == [1, 3, 128, 192]


@pytest.mark.parametrize("args,fragments", [
    (["export", "--weights", "missing.pt"], ["--weights missing.pt", "no such file"]),
    (["export", "--weights", "garbage.pt"], ["garbage.pt", "not a readable PyTorch checkpoint"]),
    (["export", "--variant", "rcan"], ["--weights PATH", "--random-weights"]),
    (["export", "--variant", "nope", "--random-weights"], ["--variant 'nope'", "unknown"]),
    (["export", "--random-weights", "--shape", "1080by1920"], ["--shape", "HxW"]),
    (["export", "--random-weights", "--shape", "1081x1920"], ["--shape 1081x1920", "stride 2"]),
    (["export", "--random-weights", "--pixel-shuffle", "magic"], ["--pixel-shuffle"]),
    (["export", "--random-weights", "--weights", "garbage.pt"], ["exclude each other"]),
    (["export", "--random-weights", "--no-such-flag"], ["--no-such-flag"]),
    (["export", "--random-weights", "--out", "no/such/dir/x.onnx"], ["does not exist"]),
    (["info", "garbage.pt"], ["garbage.pt", "not a readable ONNX model"]),
    (["check", "absent.onnx"], ["absent.onnx", "no such ONNX file"]),
    (["rewrite", "absent.onnx", "--pixel-shuffle", "reshape", "--out", "x.onnx"], ["absent.onnx"]),
    (["check", "garbage.pt", "--forbid-ops", "Foo"], ["garbage.pt"]),
])
def test_user_mistakes_are_one_line_exit_2_and_write_nothing(workdir, capsys, args, fragments):
    (workdir / "garbage.pt").write_bytes(os.urandom(256))
    before = set(os.listdir(workdir))
    code, _, err = _run(capsys, *args)
    _assert_one_line_error(code, err, *fragments)
    assert set(os.listdir(workdir)) == before


def test_checkpoint_contradicting_flag(workdir, capsys):
    import torch

    from rcan_deploy.archs import build_model, variant_config

    torch.save(build_model("official", variant_config("rcan2-sr4k")).state_dict(), "ckpt.pt")
    code, _, err = _run(capsys, "export", "--weights", "ckpt.pt", "--source", "basicsr")
    _assert_one_line_error(code, err, "--source basicsr", "official layout")
    assert not (workdir / "rcan.onnx").exists()
    code, out, _ = _run(capsys, "export", "--weights", "ckpt.pt", "--shape", "32x32")
    assert code == 0 and "official rcan2-sr4k x2" in out


def test_unknown_forbidden_op_is_user_error(workdir, capsys):
    _run(capsys, "export", "--variant", "rcan2-sr4k", "--random-weights", "--shape", "32x32")
    code, _, err = _run(capsys, "check", "rcan.onnx", "--forbid-ops", "PixelShuffle")
    _assert_one_line_error(code, err, "PixelShuffle")


def test_rewrite_folds_meanshift_of_official_graph(workdir, capsys):
    code, _, _ = _run(capsys, "export", "--source", "official", "--variant", "rcan2-sr4k",
                      "--random-weights", "--shape", "48x64", "--no-optimize",
                      "--out", "official.onnx")
    assert code == 0
    code, out, _ = _run(capsys, "rewrite", "official.onnx", "--fold-meanshift",
                        "--pixel-shuffle", "reshape5d", "--out", "folded.onnx")
    assert code == 0
    side = json.loads((workdir / "folded.onnx.json").read_text())
    assert side["rewrite"]["passes"] == {"pixel_shuffle": 1, "fold_meanshift": 2}
    assert side["input_range"] == 255 and side["source"] == "official"
    assert 0 < side["rewrite_verification"]["max_abs_error"] <= side["rewrite_verification"]["tolerance"]
    import rcan_deploy

    assert rcan_deploy.check("folded.onnx", max_rank=5, forbid_ops=["DepthToSpace"])
    assert rcan_deploy.info("folded.onnx")["params"] < rcan_deploy.info("official.onnx")["params"]


def test_info_fixes_a_dynamic_graph_with_shape(workdir, capsys):
    import onnx

    import rcan_deploy
    from rcan_deploy.checkpoints import resolve_model
    from rcan_deploy.exporter import ExportOptions, export_model

    result = export_model(resolve_model("basicsr", "rcan2-sr4k", 2, random_weights=True),
                          ExportOptions(shape=(32, 32)))
    onnx.save(result.dynamic_model, "dynamic.onnx")
    code, _, err = _run(capsys, "info", "dynamic.onnx")
    _assert_one_line_error(code, err, "fixed-shape graph", "--shape")
    code, out, _ = _run(capsys, "info", "dynamic.onnx", "--shape", "1080x1920", "--json")
    assert code == 0 and json.loads(out)["input_shape"] == [1, 3, 1080, 1920]
    fixed = export_model(resolve_model("basicsr", "rcan2-sr4k", 2, random_weights=True))
    onnx.save(fixed.model, "fixed.onnx")
    assert json.loads(out)["macs"] == rcan_deploy.info("fixed.onnx")["macs"] > 0
