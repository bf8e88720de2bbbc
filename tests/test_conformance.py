"""Runtime conformance in bench (the runtime under test against ONNX Runtime on the same graph)
and the gate that fails a runtime departing from its own graph, or a report that did not check."""

import json
from pathlib import Path

import numpy as np
import pytest

import rcan_deploy
from rcan_deploy.benchmark import bench, gate
from rcan_deploy.cli import main
from rcan_deploy.cli.bench_commands import bench_command, gate_command
from rcan_deploy.cli.commands import cli
from conftest import tiny_int8_pair
from test_int8_cpu import fault_mode

if "bench" not in cli.commands:
    cli.add_command(bench_command)
    cli.add_command(gate_command)

FAST = dict(limit=2, warmup=0, repeat=1, progress=False)
QUANT = dict(dataset="samples", calib_crops=8, crop_size=48, selection_images=1, mixed_precision=False, progress=False)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    return tiny_int8_pair(tmp_path_factory.mktemp("conformance"), (64, 96), target="openvino",
                          calib_crops=8, crop_size=48)


@pytest.fixture(scope="module")
def openvino_report(graphs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "report"
    return bench(model=graphs[1], runtime="openvino", out=out, **FAST), out


def test_bench_runs_the_graph_on_onnx_runtime_beside_the_runtime(graphs, openvino_report):
    result, out = openvino_report
    entry = result.conformance
    assert entry["status"] == "checked" and entry["runtime"] == "openvino"
    assert entry["graph"] == str(graphs[1])
    on_ort = bench(model=graphs[1], runtime="ort", **FAST)
    assert on_ort.conformance["status"] == "reference runtime" and "worst" not in on_ort.conformance
    for row, ort_row in zip(result.images, on_ort.images):
        conf = row["conformance"]
        # the ORT figures are those of the same graph benched on ORT, image by image
        assert conf["ort"]["standard"] == ort_row["candidate"]["standard"]
        assert conf["psnr_delta"]["standard"] == pytest.approx(
            row["candidate"]["standard"]["psnr"] - ort_row["candidate"]["standard"]["psnr"])
        assert 0 <= conf["max_abs_error"] < 255 and conf["seconds"] > 0
        assert conf["psnr_vs_ort"] is None or conf["psnr_vs_ort"] > 30
    worst = entry["worst"]["psnr_delta_standard"]
    assert abs(worst["value"]) == max(abs(r["conformance"]["psnr_delta"]["standard"])
                                      for r in result.images)
    markdown = (out / "report.md").read_text()
    assert "## Runtime conformance" in markdown and f"**{worst['image']}**" in markdown
    saved = json.loads((out / "report.json").read_text())
    assert saved["conformance"] == entry and saved["provenance"]["cpu"]["source"]
    verdict = gate(out / "report.json")
    rows = {row["metric"]: row for row in verdict.rows}
    assert rows["|PSNR openvino - ONNX Runtime|, worst image (standard)"]["ok"]


def _edited(report: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(report.read_text())
    edit(data)
    path = tmp_path / f"edited{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data))
    return path


def test_gate_fails_a_runtime_that_departs_from_its_graph(openvino_report, tmp_path, capsys):
    _, out = openvino_report
    report = out / "report.json"
    base = gate(report, max_psnr_drop=100, max_ssim_drop=1)
    assert base

    def deviate(data):
        image = data["images"][1]
        image["conformance"]["psnr_delta"]["standard"] = -0.05

    deviant = _edited(report, tmp_path, deviate)
    code = main(["gate", str(deviant), "--max-psnr-drop", "100", "--max-ssim-drop", "1"])
    captured = capsys.readouterr()
    name = json.loads(report.read_text())["images"][1]["image"]
    assert code == 1 and "|PSNR openvino - ONNX Runtime|" in captured.err
    failing = [line for line in captured.out.splitlines() if line.endswith("FAIL")]
    assert len(failing) == 2 and name in failing[1]  # the worst row and the image's row
    assert main(["gate", str(deviant), "--max-psnr-drop", "100", "--max-ssim-drop", "1",
                 "--max-runtime-deviation", "0.06"]) == 0
    capsys.readouterr()

    for edit, why in ((lambda d: d.pop("conformance"), "no figures in the report"),
                      (lambda d: d["conformance"].update(status="skipped (--no-conformance)"),
                       "skipped")):
        verdict = gate(_edited(report, tmp_path, edit), max_psnr_drop=100, max_ssim_drop=1)
        assert not verdict and why in verdict.failures[0]["metric"]
    malformed = _edited(report, tmp_path,
                        lambda d: d["images"][0]["conformance"]["psnr_delta"].pop("standard"))
    code = main(["gate", str(malformed)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "malformed" in err[0]
    on_ort = _edited(report, tmp_path, lambda d: (d.pop("conformance"),
                                                  d["candidate"].update(runtime="ort")))
    assert gate(on_ort, max_psnr_drop=100, max_ssim_drop=1)  # ORT is the reference itself


def test_no_conformance_is_an_explicit_opt_out_that_fails_the_gate(graphs, tmp_path, capsys):
    out = tmp_path / "skipped"
    assert main(["bench", str(graphs[1]), "--runtime", "openvino", "--limit", "1", "--warmup",
                 "0", "--repeat", "1", "--no-conformance", "--out", str(out)]) == 0
    assert "conformance openvino vs ONNX Runtime: skipped" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert "conformance" not in data["images"][0]
    assert main(["gate", str(out / "report.json"), "--max-psnr-drop", "100",
                 "--max-ssim-drop", "1"]) == 1
    assert "skipped (--no-conformance)" in capsys.readouterr().err


@pytest.mark.slow
def test_gate_catches_saturating_int8_and_passes_7_bit_weights(tmp_path, monkeypatch):
    """The shipped SR4K RCAN at 64x96 on OpenVINO where int8 convolutions saturate (natively or
    emulated): 8-bit weights fail the conformance check, 7-bit weights pass it."""
    kwargs, how = fault_mode()
    if kwargs is None:
        pytest.skip(how)
    if kwargs:
        monkeypatch.setenv("RCAN_DEPLOY_OPENVINO_ISA", kwargs["isa"])
    fp32 = tmp_path / "rcan.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan-sr4k", scale=2, shape=(64, 96))
    verdicts = {}
    for bits in ("8", "7"):
        int8 = tmp_path / f"q{bits}.onnx"
        rcan_deploy.quantize(fp32, int8, target="openvino", weight_bits=bits, **QUANT)
        bench(model=int8, runtime="openvino", out=tmp_path / bits, **FAST)
        rows = gate(tmp_path / bits / "report.json").rows
        verdicts[bits] = next(r for r in rows if r["metric"].startswith("|PSNR openvino"))
    if verdicts["8"]["ok"]:
        pytest.skip(f"OpenVINO ({how}) did not saturate on these images")
    assert verdicts["8"]["value"] > 0.5 and verdicts["7"]["ok"]


def test_openvino_refusing_a_graph_is_one_line_naming_it(tmp_path):
    # ONNX Runtime's uint8 QDQ of the fused tail (quantized Concat -> DepthToSpace) trips
    # OpenVINO's low-precision DepthToSpace pass: a one-line error, not a traceback
    from rcan_deploy.backends import get_runner
    from rcan_deploy.errors import UserError

    fp32, int8 = tmp_path / "rcan.onnx", tmp_path / "rcan_int8.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan-sr4k", shape=(64, 96))
    rcan_deploy.quantize(fp32, int8, target="ort", **QUANT)
    try:
        with get_runner("openvino", int8) as runner:
            runner.infer(np.zeros((1, 3, 64, 96), np.float32))
    except UserError as exc:
        assert str(int8) in str(exc) and "OpenVINO cannot compile" in str(exc)
        assert "\n" not in str(exc)
    else:
        pytest.skip("this OpenVINO compiles the graph (its DepthToSpace pass was fixed)")
