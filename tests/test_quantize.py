"""INT8 PTQ: QDQ structure at the fixed shape, determinism, data errors, sensitivity/fallback."""

import json
import re
import shutil

import numpy as np
import onnx
import pytest

import rcan_deploy
from rcan_deploy import api
from rcan_deploy.cli import main
from rcan_deploy.data.datasets import samples_folder
from rcan_deploy.errors import UserError
from rcan_deploy.quant.graph import activation_scales, dynamic_copy, quantized_layers
from rcan_deploy.quant.sensitivity import EvalCrops, fallback

FAST = dict(calib_crops=8, crop_size=48, heldout_crops=4, progress=False)


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graph")
    path = folder / "rcan.onnx"
    rcan_deploy.export(path, source="official", variant="rcan2-sr4k", random_weights=True,
                       shape=(64, 96))
    return path


def _ops(model):
    return [node.op_type for node in model.graph.node]


def test_qdq_graph_keeps_names_shapes_and_records_calibration(small_graph, tmp_path):
    out = tmp_path / "int8.onnx"
    record = api.quantize(small_graph, out, dataset="samples", **FAST)
    model = onnx.load(out)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]
    assert [model.graph.input[0].name, model.graph.output[0].name] == ["input", "output"]
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == [1, 3, 128, 192]
    assert _ops(model).count("QuantizeLinear") > 10 and "DequantizeLinear" in _ops(model)
    fp32_convs = _ops(onnx.load(small_graph)).count("Conv")
    assert _ops(model).count("Conv") == fp32_convs
    zero_points = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                   if t.name.endswith("zero_point")]
    assert zero_points and all(not zp.any() for zp in zero_points)  # symmetric: TensorRT rules
    side = json.loads((tmp_path / "int8.onnx.json").read_text())
    assert side == record and side["kind"] == "onnx-int8-qdq"
    assert side["calibration"]["set"]["name"] == "samples" and side["calibration"]["set"]["split"] == "train"
    assert side["calibration"]["crops"] == 8 and len(side["calibration"]["manifest"]) == 8
    assert side["quantization"]["method"] == "max" and side["input_range"] == 255
    assert side["scales"]["activation_summary"]["count"] == len(activation_scales(model))
    assert side["parent"]["path"] == str(small_graph)
    assert abs(side["heldout"]["drop"]) < 1.0 and side["global_pooling"] is False


@pytest.mark.slow
def test_same_seed_same_scales(small_graph, tmp_path):
    a = api.quantize(small_graph, tmp_path / "a.onnx", dataset="samples", seed=3, **FAST)
    b = api.quantize(small_graph, tmp_path / "b.onnx", dataset="samples", seed=3, **FAST)
    c = api.quantize(small_graph, tmp_path / "c.onnx", dataset="samples", seed=4, **FAST)
    assert a["calibration"]["crops_sha256"] == b["calibration"]["crops_sha256"]
    assert a["scales"]["activations"] == b["scales"]["activations"]
    assert a["calibration"]["crops_sha256"] != c["calibration"]["crops_sha256"]


def test_exclude_and_cpu_target(small_graph, tmp_path):
    record = api.quantize(small_graph, tmp_path / "cpu.onnx", dataset="samples", target="cpu",
                          exclude=("tail",), **FAST)
    assert record["quantization"]["excluded_nodes"]
    assert not any("tail" in name for name in record["quantization"]["quantized_layers"])
    model = onnx.load(tmp_path / "cpu.onnx")
    activation_zero_points = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                              if t.name.endswith("zero_point") and onnx.numpy_helper.to_array(t).dtype == np.uint8]
    assert activation_zero_points  # uint8 asymmetric activations for ONNX Runtime CPU


def test_sensitivity_table_and_fallback(small_graph, tmp_path):
    record = api.quantize(small_graph, tmp_path / "s.onnx", dataset="samples", sensitivity=True,
                          **FAST)
    table = record["sensitivity"]
    assert {row["layer"] for row in table["layers"]} == set(record["quantization"]["quantized_layers"])
    drops = [row["psnr_drop_attributed"] for row in table["layers"]]
    assert drops == sorted(drops, reverse=True)
    assert table["drop"] == pytest.approx(table["fp32_psnr"] - table["int8_psnr"])

    qdq = onnx.load(tmp_path / "s.onnx")
    crops = EvalCrops(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32),
                      np.zeros((2, 32, 32, 3), np.uint8), 2)
    forced = {**table, "drop": 5.0}  # pretend the budget is exceeded: the first layer goes float
    result = fallback(qdq, forced, crops, 255, max_drop=100.0)
    assert result["kept_float"] == [] and result["met"]
    result = fallback(qdq, {**forced, "fp32_psnr": 1e9}, crops, 255, max_drop=1.0)
    assert result["kept_float"] == [row["layer"] for row in table["layers"]]
    assert not result["met"] and len(result["steps"]) == len(table["layers"])


def test_max_drop_requantizes_without_kept_layers(small_graph, tmp_path, monkeypatch):
    from rcan_deploy.quant import sensitivity

    def fake_fallback(qdq, table, crops, value_range, max_drop):
        return {"max_drop": max_drop, "kept_float": [table["layers"][0]["layer"]], "steps": [],
                "met": True}

    monkeypatch.setattr(sensitivity, "fallback", fake_fallback)
    record = api.quantize(small_graph, tmp_path / "f.onnx", dataset="samples", max_drop=0.01, **FAST)
    kept = record["sensitivity"]["fallback"]["kept_float"]
    assert kept and kept[0] in record["quantization"]["excluded_nodes"]
    assert kept[0] not in quantized_layers(onnx.load(tmp_path / "f.onnx"))


def test_div2k_missing_is_one_line_error_naming_the_path(small_graph, tmp_path, capsys):
    code = main(["quantize", str(small_graph), "--calib", "div2k_valid", "--data-root",
                 str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "nowhere") in err and "data fetch div2k_valid" in err
    assert not (tmp_path / "x.onnx").exists()


def test_div2k_tree_with_hr_only_is_used(small_graph, tmp_path):
    hr = tmp_path / "data" / "DIV2K" / "DIV2K_valid_HR"
    hr.mkdir(parents=True)
    for index, name in enumerate(["chelsea.png", "coffee.png"]):
        shutil.copy(samples_folder() / name, hr / f"{801 + index:04d}.png")
    with pytest.warns(UserWarning, match="only 2 of the 100 div2k_valid images"):
        record = api.quantize(small_graph, tmp_path / "d.onnx", dataset="div2k_valid",
                              data_root=tmp_path / "data", **FAST)
    assert record["calibration"]["set"]["name"] == "div2k_valid"
    assert record["calibration"]["set"]["count"] == 2
    assert record["calibration"]["set"]["lr_source"] == "matlab-bicubic"


def test_empty_calibration_folder_is_an_error(small_graph, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        api.quantize(small_graph, tmp_path / "e.onnx", dataset=str(tmp_path / "empty"), **FAST)
    assert not (tmp_path / "e.onnx").exists()


def test_graph_without_sidecar_needs_input_range(small_graph, tmp_path):
    bare = tmp_path / "bare.onnx"
    shutil.copy(small_graph, bare)
    with pytest.raises(UserError, match="--input-range"):
        api.quantize(bare, tmp_path / "b.onnx", dataset="samples", **FAST)
    record = api.quantize(bare, tmp_path / "b.onnx", dataset="samples", input_range=255, **FAST)
    assert record["input_range"] == 255


@pytest.mark.slow
def test_end_to_end_1080p_sr4k(tmp_path):
    """The issue's target: the exported SR4K RCAN graph at 1x3x1080x1920 quantizes on crops."""
    fp32 = tmp_path / "rcan.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan-sr4k", random_weights=True)
    record = api.quantize(fp32, tmp_path / "rcan_int8.onnx", dataset="samples", heldout_crops=4,
                          progress=False)
    assert record["input_shape"] == [1, 3, 1080, 1920]
    assert record["calibration"]["crops"] == 64 and record["calibration"]["crop_size"] == 128
    q = onnx.load(tmp_path / "rcan_int8.onnx")
    assert len(quantized_layers(q)) == len(quantized_layers(dynamic_copy(q))) >= 18


def test_float_layers_dequantizes_int8_weight_constants(small_graph, tmp_path):
    """ONNX Runtime's cpu target stores int8 weights; keeping a layer float dequantizes them."""
    from rcan_deploy.quant.graph import float_layers

    api.quantize(small_graph, tmp_path / "cpu.onnx", dataset="samples", target="cpu", **FAST)
    qdq = onnx.load(tmp_path / "cpu.onnx")
    layer = quantized_layers(qdq)[0]
    floated = float_layers(qdq, [layer])
    assert layer not in quantized_layers(floated)
    node = next(n for n in floated.graph.node if n.name == layer)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in floated.graph.initializer}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(small_graph).graph.initializer}
    fp32_node = next(n for n in onnx.load(small_graph).graph.node if n.name == layer)
    restored, exact = weights[node.input[1]], original[fp32_node.input[1]]
    step = np.abs(exact).reshape(len(exact), -1).max(axis=1) / 127
    assert np.all(np.abs(restored - exact).reshape(len(exact), -1).max(axis=1) <= step / 2 + 1e-7)


def test_kept_float_names_are_exact_not_prefixes():
    """modelopt reads excluded names as regexes matched at the start of a node name: keeping
    '/a/Conv' in float must not also keep its sibling '/a/Conv_1'."""
    from onnx import TensorProto, helper, numpy_helper

    from rcan_deploy.quant.ptq import QuantizeOptions, exact_name_patterns, quantize_model

    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], name="/a/Conv", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"], name="/a/Relu"),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="/a/Conv_1", pads=[1] * 4),
             helper.make_node("Conv", ["c", "w3"], ["output"], name="/b/Conv", pads=[1] * 4)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 16, 16])],
        [weight("w1", (16, 3, 3, 3)), weight("w2", (16, 16, 3, 3)), weight("w3", (3, 16, 3, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    crops = rng.uniform(0, 1, (4, 3, 16, 16)).astype(np.float32)
    _, record = quantize_model(model, crops, QuantizeOptions(keep_float=("/a/Conv",)))
    assert record["excluded_nodes"] == ["/a/Conv"]
    assert record["quantized_layers"] == ["/a/Conv_1", "/b/Conv"]
    patterns = exact_name_patterns(["/a/Conv", "x+(y)"])
    assert [bool(re.match(patterns[0], n)) for n in ("/a/Conv", "/a/Conv_1")] == [True, False]
    assert re.match(patterns[1], "x+(y)") and not re.match(patterns[1], "xx(y)")
