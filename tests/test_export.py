"""Export: fixed shape without full-size tracing, verification, passes, sidecar, reference FLOPs."""

import json

import numpy as np
import onnx
import pytest
import torch

from rcan_deploy import api
from rcan_deploy.archs import RCANConfig, build_model
from rcan_deploy.artifacts import sidecar_path
from rcan_deploy.checkpoints import ResolvedModel, resolve_model
from rcan_deploy.exporter import ExportOptions, export_model
from rcan_deploy.onnx_utils import run

TINY = RCANConfig(n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4, scale=2)


def _resolved(source="official", config=TINY):
    torch.manual_seed(0)
    return ResolvedModel(build_model(source, config), source, config, "custom", {"random": 0})


def _ops(model):
    return {node.op_type for node in model.graph.node}


def test_default_export_is_1080p_and_x2_output(tmp_path):
    out = tmp_path / "rcan.onnx"
    record = api.export(out, source="official", variant="rcan-sr4k", random_weights=True)
    model = onnx.load(out)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 1080, 1920] and out_dims == [1, 3, 2160, 3840]
    assert [model.graph.input[0].name, model.graph.output[0].name] == ["input", "output"]
    side = json.loads(sidecar_path(out).read_text())
    assert side == record
    assert side["source"] == "official" and side["variant"] == "rcan-sr4k"
    assert side["config"]["head_stride"] == 2 and side["input_range"] == 255
    assert side["verification"]["max_abs_error"] <= side["verification"]["tolerance"]
    assert len(side["sha256"]) == 64 and "torch" in side["versions"]
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("source", ["official", "basicsr", "rcan-pytorch"])
def test_small_export_matches_torch(source):
    resolved = _resolved(source, RCANConfig(1, 2, 8, 4, 3))
    result = export_model(resolved, ExportOptions(shape=(24, 20)))
    x = np.random.default_rng(0).random((1, 3, 24, 20)).astype(np.float32) * resolved.native_range
    with torch.no_grad():
        expected = resolved.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(result.model, x)[0], expected, atol=1e-3 * resolved.native_range)


def test_cbam_export():
    config = RCANConfig(1, 1, 16, 4, 4, "cbam", 1, "single")
    result = export_model(_resolved("rcan-pytorch", config), ExportOptions(shape=(16, 24)))
    assert result.record["output_shape"] == [1, 3, 64, 96]


def test_input_range_is_adapted_and_recorded():
    resolved = _resolved("official")
    result = export_model(resolved, ExportOptions(shape=(16, 16), input_range="1"))
    assert result.record["input_range"] == 1 and result.record["native_input_range"] == 255
    x = np.random.default_rng(1).random((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = resolved.model(torch.from_numpy(x * 255)).numpy() / 255
    np.testing.assert_allclose(run(result.model, x)[0], expected, atol=1e-5)


@pytest.mark.parametrize("form,max_rank", [("reshape", 6), ("reshape5d", 5), ("convtranspose", 4)])
def test_pixel_shuffle_forms_and_meanshift_fold(form, max_rank):
    resolved = _resolved("official", RCANConfig(1, 1, 8, 4, 4))
    keep = export_model(resolved, ExportOptions(shape=(16, 24), optimize=False))
    rewritten = export_model(resolved, ExportOptions(shape=(16, 24), pixel_shuffle=form,
                                                     fold_meanshift=True, optimize=False))
    assert "DepthToSpace" in _ops(keep.model) and "DepthToSpace" not in _ops(rewritten.model)
    assert rewritten.record["export"]["passes"] == [
        {"name": "fold_meanshift", "sites": 2},
        {"name": "pixel_shuffle", "form": form, "sites": 2}]
    assert rewritten.record["graph"]["max_rank"] <= max_rank
    assert "Shape" not in _ops(rewritten.model)  # shape arithmetic folded at the fixed shape
    x = np.random.default_rng(2).random((1, 3, 16, 24)).astype(np.float32) * 255
    np.testing.assert_allclose(run(rewritten.model, x)[0], run(keep.model, x)[0], atol=1e-3)


@pytest.mark.parametrize("source,variant,flops,params,with_bias", [
    ("official", "rcan-sr4k", 358.207, 297723, True),
    ("official", "rcan2-sr4k", 80.331, 63547, False),
    ("basicsr", "rcan-sr4k", 356.659, 297699, False),
])
@pytest.mark.parametrize("optimize", [False, True])
def test_reference_table_flops_and_params(tmp_path, source, variant, flops, params, with_bias,
                                          optimize):
    """The plain graph counts as the table does; an optimized one executes fewer MACs but reports
    the same architecture figures (from its sidecar)."""
    out = tmp_path / f"{source}-{variant}.onnx"
    api.export(out, source=source, variant=variant, random_weights=True, optimize=optimize)
    info = api.info(out)
    counted = info["architecture"] if optimize else info
    assert (info["architecture"] is not None) == optimize
    assert info["input_shape"] == [1, 3, 1080, 1920] and counted["params"] == params
    macs = counted["macs"] + (counted["macs_bias"] if with_bias else 0)
    assert round(2 * macs / 9e8, 3) == flops
    key = "flops_g_reference_with_bias" if with_bias else "flops_g_reference"
    assert round(counted[key], 3) == flops
    if optimize:
        assert info["macs"] < 0.7 * counted["macs"]
    rows = info["reference"]
    assert rows and all(float(r["flops_g"]) == flops and int(r["params"]) == params for r in rows)


def test_export_does_not_trace_at_full_size(monkeypatch):
    sizes = []
    original = torch.onnx.export

    def spy(module, args, *a, **k):
        sizes.append(tuple(args[0].shape))
        return original(module, args, *a, **k)

    monkeypatch.setattr(torch.onnx, "export", spy)
    result = export_model(resolve_model("basicsr", "rcan2-sr4k", 2, random_weights=True))
    assert result.record["input_shape"] == [1, 3, 1080, 1920]
    assert sizes and max(h * w for _, _, h, w in sizes) <= 64 * 64
