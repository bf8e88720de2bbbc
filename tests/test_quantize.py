"""INT8 PTQ: QDQ structure at the fixed shape, determinism, data errors, float residual stream,
int8x2 layers and the per-layer precision search."""

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
from rcan_deploy.quant.precision import (apply_plan, float_stream, int8_macs, small_layers,
                                         split_input)
from rcan_deploy.quant.selection import Budget, search_precision

FAST = dict(calib_crops=8, crop_size=48, selection_images=1, mixed_precision=False,
            progress=False)


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
    split = list(record["quantization"]["plan"].values()).count("int8x2")
    assert split and _ops(model).count("Conv") == fp32_convs + split  # small layers start int8x2
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
    heldout = side["heldout"]
    assert heldout["set"]["split"] == "heldout" and len(heldout["images"]) == 1
    assert heldout["runtime"] == "openvino" and heldout["measured_on_target"]
    assert heldout["mean_drop"] == pytest.approx(np.mean(list(heldout["images"].values())))
    assert heldout["reference_runtime"]["runtime"] == "ort"
    assert abs(heldout["reference_runtime"]["max_deviation_db"]) < 0.05
    assert side["global_pooling"] is False and 0 < side["quantization"]["int8_macs_share"] <= 1
    assert side["latency"]["int8_median_s"] > 0 and side["latency"]["runtime"] == "openvino"


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


@pytest.fixture(scope="module")
def ptq(small_graph):
    """The small graph after PTQ alone: modelopt's placement, no precision plan."""
    from rcan_deploy.data import get_dataset
    from rcan_deploy.data.crops import calibration_crops
    from rcan_deploy.quant.ptq import QuantizeOptions, quantize_model

    crops = calibration_crops(get_dataset("samples", 2, split="train"), 8, 48, 0).array * 255
    return quantize_model(onnx.load(small_graph), crops, QuantizeOptions(weight_bits="8"))[0]


def _error(model, fp32, x):
    from rcan_deploy.onnx_utils import run

    return float(np.abs(run(model, x)[0] - run(fp32, x)[0]).mean())


def test_float_stream_gives_residual_adds_the_float_tensor(small_graph, ptq):
    fp32, placed = onnx.load(small_graph), ptq
    producers = {o: n for n in placed.graph.node for o in n.output}
    stream_dq = [n for n in placed.graph.node if n.op_type == "Add"
                 and any(producers.get(i) is not None and producers[i].op_type ==
                         "DequantizeLinear" for i in n.input)]
    assert stream_dq  # modelopt quantizes the residual stream the Adds carry
    floated, count = float_stream(placed)
    producers = {o: n for n in floated.graph.node for o in n.output}
    assert count >= len(stream_dq)
    assert not [n for n in floated.graph.node if n.op_type == "Add" and any(
        producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
        for i in n.input)]
    assert quantized_layers(floated) == quantized_layers(placed)  # every conv stays INT8
    x = np.random.default_rng(0).random((1, 3, 64, 96)).astype(np.float32) * 255
    assert _error(floated, fp32, x) < _error(placed, fp32, x)


def test_int8x2_layers_stay_int8_and_come_close_to_float(ptq, small_graph):
    fp32 = onnx.load(small_graph)
    streamed, _ = float_stream(ptq)
    layers = quantized_layers(streamed)
    split = split_input(streamed, layers)
    floated = apply_plan(streamed, dict.fromkeys(layers, "float"))
    before, after = int8_macs(streamed), int8_macs(split)
    assert after["int8"] == 2 * before["int8"]  # both halves of a split layer run in INT8
    assert after["total"] - after["int8"] == before["total"] - before["int8"]
    assert int8_macs(floated)["int8_share"] == 0.0
    convs = [n.op_type for n in streamed.graph.node].count("Conv")
    assert [n.op_type for n in split.graph.node].count("Conv") == convs + len(layers)
    x = np.random.default_rng(1).random((1, 3, 64, 96)).astype(np.float32) * 255
    # the split input keeps ~15 bits: only the 8-bit weights are left between it and float
    assert _error(split, fp32, x) < 0.5 * _error(streamed, fp32, x)
    with pytest.raises(UserError, match="precision"):
        apply_plan(streamed, {layers[0]: "int4"})


class FakeJudge:
    """Drops from a noise model: each int8 layer adds its noise to every image, int8x2 a tenth,
    float none (what FrameJudge measures on a runtime, without running one)."""

    def __init__(self, noise: dict[str, float], images=("a", "b", "c")):
        from rcan_deploy.quant.selection import FrameImages

        self.noise, self.runtime, self.counter = noise, "fake", [0]
        self.images = FrameImages(list(images), [None] * len(images), [None] * len(images), 2,
                                  {"name": "fake", "count": len(images)})
        self.fp32_psnr = dict.fromkeys(images, 40.0)
        self.plan: dict[str, str] = {}

    @property
    def evaluations(self):
        return self.counter[0]

    def subset(self, names):
        judge = FakeJudge(self.noise, names)
        judge.counter = self.counter
        return judge

    def drops(self, model):
        from rcan_deploy.quant.selection import predicted_drops

        self.counter[0] += 1
        plan = json.loads(model.doc_string or "{}")
        added = sum(v * {"int8": 1.0, "int8x2": 0.1, "float": 0.0}[plan.get(k, "int8")]
                    for k, v in self.noise.items())
        weight = {"a": 1, "b": 2, "c": 3}  # images differ in how much the noise costs them
        return predicted_drops({n: added * weight[n] for n in self.images.names},
                               self.fp32_psnr)


def test_small_layers_are_the_smallest_within_both_shares():
    # SR4K-like: a few tiny layers among large ones -> all the tiny ones
    assert small_layers({"head": 5, "strip": 3, "body1": 300, "body2": 300, "tail": 392}, 0.01,
                        0.025) == ["strip", "head"]
    # many equal layers, each under 1 %: only as many as fit in 2.5 % together
    chosen = small_layers({f"conv{i}": 1 for i in range(400)}, 0.01, 0.025)
    assert len(chosen) == 10


def test_precision_search_moves_the_layers_that_matter(ptq, monkeypatch):
    from rcan_deploy.quant import selection

    streamed, _ = float_stream(ptq)
    layers = quantized_layers(streamed)
    macs = int8_macs(streamed)["layers"]

    def fake_apply(model, plan):
        tagged = onnx.ModelProto()
        tagged.CopyFrom(model)
        tagged.doc_string = json.dumps(plan)
        return tagged

    monkeypatch.setattr(selection, "apply_plan", fake_apply)
    # the largest layer is the noisiest but also the dearest; the two next ones together are
    # noisier per MAC
    big, *rest = sorted(layers, key=macs.get, reverse=True)
    noise = {name: 0.0 for name in layers}
    noise[big] = 0.12
    noise[rest[0]], noise[rest[1]] = 0.09, 0.09
    judge = FakeJudge(noise)
    budget = Budget(mean=0.05, worst=0.1, min_int8_share=0.0)
    start = judge.drops(fake_apply(streamed, {}))
    assert budget.excess(start) > 1
    plan, record = search_precision(streamed, judge, budget, {}, progress=False, probe_images=2)
    assert record["evaluations"] == judge.evaluations
    assert record["met"] and budget.excess(judge.drops(fake_apply(streamed, plan))) <= 1
    moved = {name for name, move in plan.items() if move != "int8"}
    assert moved == {big, *rest[:2]}  # all three noisy layers, and no layer that adds none
    assert set(plan.values()) == {"int8x2"}  # int8x2 removes enough here; float costs more
    assert record["steps"][-1]["measured"]
    # a floor on the INT8 share forbids float moves that would break it
    plan, record = search_precision(streamed, FakeJudge(noise), Budget(1e-6, 1e-6, 1.0), {},
                                    progress=False, probe_images=2)
    assert "float" not in plan.values() and not record["met"]


def test_quantize_with_precision_search_records_it(small_graph, tmp_path):
    record = api.quantize(small_graph, tmp_path / "m.onnx", dataset="samples",
                          **{**FAST, "mixed_precision": True, "max_drop": 0.001,
                             "max_worst_drop": 0.002, "min_int8_share": 0.5})
    search = record["mixed_precision"]
    assert search["runtime"] == "openvino" and search["steps"][0]["measured"]
    assert record["quantization"]["int8_macs_share"] >= 0.5
    assert set(record["quantization"]["plan"]).issubset(record["quantization"]["quantized_layers"])
    measured = [step for step in search["steps"] if step["measured"]]
    assert measured[-1]["mean_drop"] == pytest.approx(record["heldout"]["mean_drop"], abs=1e-6)


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
    record = api.quantize(fp32, tmp_path / "rcan_int8.onnx", dataset="samples", selection_images=1, mixed_precision=False,
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
    _, record = quantize_model(model, crops, QuantizeOptions(exclude=("^/a/Conv$",)))
    assert record["excluded_nodes"] == ["/a/Conv"]
    assert record["quantized_layers"] == ["/a/Conv_1", "/b/Conv"]
    patterns = exact_name_patterns(["/a/Conv", "x+(y)"])
    assert [bool(re.match(patterns[0], n)) for n in ("/a/Conv", "/a/Conv_1")] == [True, False]
    assert re.match(patterns[1], "x+(y)") and not re.match(patterns[1], "xx(y)")
