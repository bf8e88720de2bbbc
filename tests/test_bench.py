"""Bench harness, report and CI gate on a tiny 64x96 graph (random weights: poor absolute PSNR,
fine for structure) and its INT8 QDQ graph."""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import rcan_deploy
from rcan_deploy.benchmark import BenchResult, bench, gate
from rcan_deploy.record import lineage
from rcan_deploy.cli import main
from rcan_deploy.cli.bench_commands import bench_command, gate_command
from rcan_deploy.cli.commands import cli
from rcan_deploy.errors import UserError
from rcan_deploy.onnx_utils import run

if "bench" not in cli.commands:
    cli.add_command(bench_command)
    cli.add_command(gate_command)

FAST = dict(limit=2, warmup=0, repeat=2, progress=False)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("psnr_vs_gflops.png", "int8_minus_fp32_psnr.png", "worst_crop.png")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-graphs")
    fp32, int8 = folder / "rcan.onnx", folder / "rcan_int8.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan2-sr4k",  # shipped weights
                       shape=(64, 96))
    rcan_deploy.quantize(fp32, int8, dataset="samples", calib_crops=8, crop_size=48,
                         selection_images=1, mixed_precision=False, progress=False)
    return fp32, int8


@pytest.fixture(scope="module")
def good(graphs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-report") / "report"
    return bench(model=graphs[1], protocol="both", out=out, **FAST), out


def _one_line_error(capsys, code, expected_code, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("rcan-deploy")]
    assert code == expected_code and len(errors) == 1, err
    assert all(fragment in errors[0] for fragment in fragments), errors[0]


def test_summary_means_and_deltas_match_the_image_rows(good):
    result, _ = good
    assert isinstance(result, BenchResult) and result and len(result.images) == 2
    for protocol in ("standard", "vacc"):
        summary = result.summary[protocol]
        for who in ("candidate", "reference", "bicubic"):
            for metric in ("psnr", "ssim"):
                mean = np.mean([row[who][protocol][metric] for row in result.images])
                assert summary[who][metric] == pytest.approx(mean)
        for row in result.images:
            delta = row["candidate"][protocol]["psnr"] - row["reference"][protocol]["psnr"]
            assert row["delta"][protocol]["psnr"] == pytest.approx(delta)
        assert summary["delta"]["psnr"] == pytest.approx(
            summary["candidate"]["psnr"] - summary["reference"]["psnr"])
        assert summary["bicubic"]["psnr"] > 25  # MATLAB bicubic of natural images
    latency = result.latency["candidate"]
    assert latency["shape"] == [1, 3, 64, 96] and len(latency["seconds"]) == 2
    assert latency["p90_s"] >= latency["median_s"] > 0
    assert latency["output_mpix_per_s"] == pytest.approx(128 * 192 / 1e6 / latency["median_s"])
    costs = result.costs["candidate"]
    assert costs["architecture"]["params"] == 63547  # the RCAN2 row's parameter count
    assert costs["macs"] < costs["architecture"]["macs"]  # the optimized graph executes fewer


def test_tiles_larger_images_pads_smaller_and_fits_equal(good, graphs, tmp_path):
    result, _ = good
    for row in result.images:  # samples LR images are larger than 64x96
        for who in ("candidate", "reference"):
            assert row[who]["path"] == "tile" and row[who]["tiles"] > 1
            assert row[who]["overlap"] > 0 and row[who]["padded"][0] >= row["lr_size"][0]
    rng = np.random.default_rng(0)
    for name, size in (("small", (40, 60)), ("exact", (128, 192))):
        image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(tmp_path / f"{name}.png"), image)
    folder = bench(model=graphs[0], dataset=str(tmp_path), warmup=0, repeat=1, progress=False)
    assert folder.reference is None and folder.dataset["name"] == tmp_path.name
    routes = {row["image"]: row["candidate"] for row in folder.images}
    assert routes["small"]["path"] == "pad" and routes["small"]["tiles"] == 1
    assert routes["small"]["padded"] == [64, 96]
    assert routes["exact"]["path"] == "fit" and folder.images[0]["hr_size"] == [128, 192]


def test_report_files_and_reference_rows(good):
    result, out = good
    data = json.loads((out / "report.json").read_text())
    assert {"candidate", "reference", "model", "dataset", "protocols", "images", "summary",
            "latency", "costs", "provenance", "worst"} <= set(data)
    assert data["summary"] == json.loads(json.dumps(result.summary))
    assert data["dataset"]["name"] == "samples" and data["dataset"]["split"] == "heldout"
    assert "default" in data["dataset"]["chosen"]
    assert str(result.candidate["path"]) in data["provenance"]["artifacts"]
    markdown = (out / "report.md").read_text()
    assert "| RCAN2 | official | 80.331 |" in markdown
    assert "| RCAN2 vacc max int8 | official |" in markdown
    assert markdown.count("| vacc | DIV2K valid x2 |") == 2
    assert "| standard | samples heldout x2 (2 images) |" in markdown
    assert "DIV2K valid x2, vacc protocol" in markdown and "| tile |" in markdown
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        assert name in markdown
    assert data["worst"]["image"] in {row["image"] for row in data["images"]}


def test_reference_found_through_the_sidecar_chain(good, graphs, tmp_path, monkeypatch):
    result, _ = good
    fp32, int8 = graphs
    assert result.reference["path"] == str(fp32) and result.reference["precision"] == "fp32"
    assert result.provenance["reference_found_by"] == "sidecar chain"
    assert lineage(int8)[-1].path == fp32 and lineage(fp32)[-1].path == fp32
    # a relative parent path is also looked up next to the child
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in (fp32, int8):
        shutil.copy(path, moved / path.name)
    sidecar = json.loads(Path(f"{int8}.json").read_text())
    sidecar["parent"]["path"] = fp32.name
    (moved / f"{int8.name}.json").write_text(json.dumps(sidecar))
    shutil.copy(f"{fp32}.json", moved / f"{fp32.name}.json")
    monkeypatch.chdir(tmp_path)
    assert lineage(moved / int8.name)[-1].path == moved / fp32.name
    (moved / fp32.name).unlink()
    with pytest.raises(UserError, match=f"parent {fp32.name} does not exist"):
        lineage(moved / int8.name)


def test_torch_runner_rebuilds_the_fp32_network(graphs):
    from rcan_deploy.backends.torch import TorchRunner

    fp32, int8 = graphs
    x = (np.random.default_rng(1).random((1, 3, 64, 96)) * 255).astype(np.float32)
    with TorchRunner(int8) as runner:
        y = runner.infer(x)
        assert runner.infer(x[:, :, :40, :56]).shape == (1, 3, 80, 112)  # any size
    assert np.abs(y - run(onnx.load(fp32), x)[0]).max() < 1e-2


def _damage(int8: Path, out: Path) -> None:
    """Dequantize every weight with 1.5 times its scale (the QuantizeLinear keeps the right one):
    an INT8 graph that computes something else."""
    model = onnx.load(int8)
    initializers = {t.name: t for t in model.graph.initializer}
    damaged = 0
    for node in model.graph.node:
        scale = initializers.get(node.input[1]) if node.op_type == "DequantizeLinear" else None
        if scale is not None and scale.dims:  # per-channel: a weight
            values = numpy_helper.to_array(scale) * 1.5
            model.graph.initializer.append(numpy_helper.from_array(values, f"{scale.name}_bad"))
            node.input[1] = f"{scale.name}_bad"
            damaged += 1
    assert damaged > 5
    onnx.save(model, out)
    sidecar = json.loads(Path(f"{int8}.json").read_text())
    sidecar["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()  # a consistent pair
    Path(f"{out}.json").write_text(json.dumps(sidecar))


def test_gate_exit_codes(good, graphs, tmp_path, capsys):
    _, out = good
    report = out / "report.json"
    assert main(["gate", str(report)]) == 0
    assert "gate passed" in capsys.readouterr().out
    result = gate(report, baseline=report)
    assert result and result.rows[-1]["metric"].startswith("PSNR below baseline")

    damaged = tmp_path / "damaged_int8.onnx"
    _damage(graphs[1], damaged)
    assert main(["bench", str(damaged), "--limit", "2", "--warmup", "0",
                 "--repeat", "1", "--out", str(tmp_path / "bad")]) == 0
    assert "report: " in capsys.readouterr().out
    code = main(["gate", str(tmp_path / "bad" / "report.json")])
    captured = capsys.readouterr()
    assert code == 1 and "FAIL" in captured.out and "PSNR drop" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "gate failed" in captured.err
    assert not gate(tmp_path / "bad" / "report.json")

    assert main(["gate", str(tmp_path / "bad" / "report.json"), "--max-ssim-drop", "1",
                 "--max-psnr-drop", "100", "--max-worst-psnr-drop", "100"]) == 0
    capsys.readouterr()
    code = main(["gate", str(report), "--max-psnr-drop", "-0.5"])
    _one_line_error(capsys, code, 2, "--max-psnr-drop")
    _one_line_error(capsys, main(["gate", str(tmp_path / "missing.json")]), 2, "missing.json")
    (tmp_path / "garbage.json").write_text("{not json")
    _one_line_error(capsys, main(["gate", str(tmp_path / "garbage.json")]), 2, "not a JSON")
    fp32_report = tmp_path / "fp32"
    bench(model=graphs[0], out=fp32_report, **FAST)
    _one_line_error(capsys, main(["gate", str(fp32_report / "report.json")]), 2, "no reference")


def test_gate_fails_on_one_bad_image_that_the_mean_hides(good, tmp_path, capsys):
    _, out = good
    report = json.loads((out / "report.json").read_text())
    row = report["images"][0]
    row["delta"]["standard"]["psnr"] = -0.31  # one image 0.31 dB down; the mean stays small
    (tmp_path / "report.json").write_text(json.dumps(report))
    result = gate(tmp_path / "report.json")
    worst = next(r for r in result.rows if r["metric"].startswith("PSNR drop, worst image"))
    assert not worst["ok"] and worst["value"] == pytest.approx(0.31) and not result
    assert row["image"][:24] in worst["metric"]
    assert gate(tmp_path / "report.json", max_worst_psnr_drop=0.4)


def test_bench_engine_without_tensorrt_is_one_line(graphs, tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    engine = tmp_path / "rcan_int8.plan"
    engine.write_bytes(b"not an engine")
    sidecar = {"schema_version": 1, "kind": "tensorrt-engine", "precision": "int8",
               "sha256": hashlib.sha256(b"not an engine").hexdigest(),
               "parent": {"path": str(graphs[1])}}
    Path(f"{engine}.json").write_text(json.dumps(sidecar))
    code = main(["bench", str(engine), "--limit", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tensorrt" in err[0].lower(), err
