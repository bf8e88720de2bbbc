"""Quantization-aware fine-tuning: the PyTorch interpreter of ONNX graphs against ONNX Runtime,
fine-tuning that lowers the quantization error, write-back into the same graph, determinism,
errors and the ``quantize --qat`` record."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rcan_deploy
from rcan_deploy import api
from rcan_deploy.cli import main
from rcan_deploy.errors import UserError
from rcan_deploy.onnx_utils import ort_session
from rcan_deploy.quant.graph import dynamic_copy
from rcan_deploy.quant.qat import GraphModule, QatOptions, finetune

FAST = dict(calib_crops=8, crop_size=48, mixed_precision=False, selection_images=1, progress=False)
TUNE = QatOptions(steps=60, learning_rate=3e-4, batch_size=2, crop_size=32)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Tiny FP32 graphs (official and BasicSR layouts, channel attention) and their PTQ graphs:
    modelopt style (float weights through Q/DQ) and quantize_static style (int8 weights)."""
    folder = tmp_path_factory.mktemp("qat")
    paths = {}
    for name, source, variant in (("official", "official", "rcan2-sr4k"),
                                  ("basicsr", "basicsr", "rcan2-sr4k"),
                                  ("attention", "official", "rcan-slim")):
        paths[name] = folder / f"{name}.onnx"
        rcan_deploy.export(paths[name], source=source, variant=variant, random_weights=True,
                           shape=(32, 48))
    for name, source, target in (("official_trt", "official", "tensorrt"),
                                 ("official_cpu", "official", "cpu"),
                                 ("basicsr_trt", "basicsr", "tensorrt"),
                                 ("attention_cpu", "attention", "cpu")):
        paths[name] = folder / f"{name}.onnx"
        api.quantize(paths[source], paths[name], dataset="samples", target=target, **FAST)
    return paths


def _images(count=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    smooth = [np.kron(rng.integers(0, 256, (size // 4, size // 4, 3)), np.ones((4, 4, 1)))
              for _ in range(count)]
    return [np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            for image in smooth]


def _range(path):
    return json.loads(open(f"{path}.json").read())["input_range"]


def _crop(value_range, seed=0, size=24):
    x = np.random.default_rng(seed).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    return x * np.float32(value_range)


@pytest.mark.parametrize("name", ["official", "basicsr", "attention"])
def test_interpreter_equals_onnxruntime_on_fp32_graphs(graphs, name):
    model = onnx.load(graphs[name])
    x = _crop(_range(graphs[name]))
    expected = ort_session(dynamic_copy(model)).run(None, {"input": x})[0]
    actual = GraphModule(model)(torch.from_numpy(x)).detach().numpy()
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5 * _range(graphs[name])


@pytest.mark.parametrize("name", ["official_trt", "official_cpu", "basicsr_trt",
                                  "attention_cpu"])
def test_interpreter_computes_every_qdq_node_as_onnxruntime(graphs, name):
    """Node by node, on ONNX Runtime's own inputs: quantized values identical, the rest equal to
    float precision (whole-graph outputs differ by flipped roundings that spread, as ONNX Runtime
    with and without graph optimizations does)."""
    model = onnx.load(graphs[name])
    module = GraphModule(model)
    nodes = [node for node in model.graph.node if node.op_type != "Constant"]
    names = [out for node in nodes for out in node.output]
    probe = dynamic_copy(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names)
    x = _crop(_range(graphs[name]))
    values = dict(zip(names, ort_session(probe).run(None, {"input": x})))
    values["input"] = x
    ops = set()
    with torch.no_grad():
        for node in nodes:
            feeds = {k: torch.from_numpy(np.asarray(values[k])) for k in node.input if k in values}
            actual = module.run_node(node, feeds)[0].numpy()
            expected = values[node.output[0]].astype(np.float32)
            tolerance = 0 if node.op_type == "QuantizeLinear" else 2e-5 * max(
                1.0, float(np.abs(expected).max()))
            assert np.abs(actual - expected).max() <= tolerance, node.name
            ops.add(node.op_type)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add", "DepthToSpace"} <= ops
    end_to_end = module(torch.from_numpy(x)).detach().numpy()
    error = np.abs(end_to_end - values[model.graph.output[0].name]) / _range(graphs[name])
    assert error.mean() < 5e-3


def test_interpreter_covers_the_remaining_ops():
    """DepthToSpace DCR, Reshape, Transpose, Gather, ConvTranspose, ReduceMean, Div, Sub, Cast,
    Identity, Constant, Slice with steps, Concat against ONNX Runtime."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 2, 2)).astype(np.float32), "wt")
    inits = [weight,
             numpy_helper.from_array(np.array([0, 8, 6, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array([3, 2, 1, 0], np.int64), "order"),
             numpy_helper.from_array(np.array([1], np.int64), "s0"),
             numpy_helper.from_array(np.array([-1], np.int64), "s1"),
             numpy_helper.from_array(np.array([3], np.int64), "ax"),
             numpy_helper.from_array(np.array([2], np.int64), "st")]
    nodes = [
        helper.make_node("DepthToSpace", ["x"], ["d"], blocksize=2, mode="DCR"),
        helper.make_node("Reshape", ["d", "shape"], ["r"]),
        helper.make_node("Gather", ["r", "order"], ["g"], axis=1),
        helper.make_node("Transpose", ["g"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("ConvTranspose", ["t", "wt"], ["ct"], strides=[2, 2], group=4,
                         pads=[0, 1, 1, 0]),
        helper.make_node("ReduceMean", ["ct"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
            np.array(3.0, np.float32))),
        helper.make_node("Add", ["m", "c"], ["mc"]),
        helper.make_node("Div", ["ct", "mc"], ["q"]),
        helper.make_node("Sub", ["q", "ct"], ["s"]),
        helper.make_node("Cast", ["s"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["f"], ["i"]),
        helper.make_node("Slice", ["i", "s0", "s1", "ax", "st"], ["sl"]),
        helper.make_node("Concat", ["sl", "sl"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 16, 3, 2])], [helper.make_empty_tensor_value_info("y")],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.normal(0, 1, (1, 16, 3, 2)).astype(np.float32)
    expected = ort_session(model).run(None, {"x": x})[0]
    actual = GraphModule(model)(torch.from_numpy(x)).detach().numpy()
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 2e-3 * np.abs(expected).max()  # fp16 rounding


def test_unsupported_op_is_one_line_user_error():
    graph = helper.make_graph([helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_empty_tensor_value_info("y")])
    with pytest.raises(UserError) as info:
        GraphModule(helper.make_model(graph, ir_version=8))
    message = str(info.value)
    assert "\n" not in message and "unsupported op LeakyRelu" in message and "leaky" in message


def _attributes(node):
    """A node's attributes; a Constant's value by type and shape (fine-tuning may change it)."""
    if node.op_type != "Constant":
        return list(node.attribute)
    return [(a.name, a.t.data_type, list(a.t.dims)) for a in node.attribute]


def _structure(model):
    return ([(n.op_type, n.name, list(n.input), list(n.output), _attributes(n))
             for n in model.graph.node],
            [(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer],
            [(v.name, v.type) for v in (*model.graph.input, *model.graph.output)])


def _coarse(model, levels):
    """Copy of a QDQ graph with per-channel weight scales max|w| / ``levels`` (both weight
    styles; int32 biases follow), so that weight rounding dominates the error."""
    model = onnx.load_from_string(model.SerializeToString())
    consts = {t.name: t for t in model.graph.initializer}
    value = {name: numpy_helper.to_array(t) for name, t in consts.items()}
    producers = {out: node for node in model.graph.node for out in node.output}

    def put(name, array):
        consts[name].CopyFrom(numpy_helper.from_array(array, name))
        value[name] = array

    weight_nodes = []
    for conv in model.graph.node:
        if conv.op_type == "Conv" and conv.input[1] in producers:
            dq = producers[conv.input[1]]
            weight_nodes.append(producers.get(dq.input[0], dq))  # the Q of a float weight
    for node in weight_nodes:
        source = node.input[0]
        scale = value[node.input[1]]
        weight = value[source].astype(np.float32)
        if node.op_type == "DequantizeLinear":
            weight = weight * scale.reshape(-1, 1, 1, 1)
        new_scale = (np.abs(weight).reshape(len(weight), -1).max(1) / levels).astype(np.float32)
        put(node.input[1], new_scale)
        if node.op_type == "DequantizeLinear":
            put(source, np.round(weight / new_scale.reshape(-1, 1, 1, 1)).astype(np.int8))
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in producers:
            bias, x_dq, w_dq = (producers[node.input[i]] for i in (2, 0, 1))
            floats = value[bias.input[0]] * value[bias.input[1]]
            new_scale = (value[x_dq.input[1]] * value[w_dq.input[1]]).astype(np.float32)
            put(bias.input[1], new_scale)
            put(bias.input[0], np.round(floats / new_scale).astype(np.int32))
    return model


@pytest.mark.parametrize("name", ["official_trt", "official_cpu"])
def test_finetune_lowers_the_error_and_keeps_the_graph(graphs, name):
    """4-bit weights (7 levels), where weight rounding dominates: fine-tuning lowers the
    distillation error; the graph keeps its nodes, names, types and number of levels."""
    qdq, fp32 = _coarse(onnx.load(graphs[name]), 7), onnx.load(graphs["official"])
    tuned, record = finetune(qdq, fp32, _images(), 255, TUNE, stride=2, progress=False)
    assert _structure(tuned) == _structure(qdq)
    loss = record["distillation_loss"]
    assert loss["after"] < 0.8 * loss["before"]
    assert record["steps"] == 60 and len(record["loss_history"]) >= 2
    assert record["verification"]["mean_abs_error"] <= record["verification"]["tolerance"]["mean"]
    before = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in tuned.graph.initializer}
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) >= record["trained_tensors"]
    module = GraphModule(tuned)
    assert module.weights
    for quant in module.weights.values():  # scales follow the weights, same number of levels
        assert quant.levels == 7
        weight = module.parameters[quant.weight].detach().numpy()
        amax = np.abs(weight).reshape(len(weight), -1).max(1)
        assert np.allclose(amax / after[quant.scale].reshape(-1), 7, rtol=1e-5)
    if name == "official_cpu":  # int32 bias scale = input scale x new weight scale
        assert module.biases and all(after[k].dtype == np.int32 for k in module.biases)
        for own, x_scale, w_scale in module.biases.values():
            assert x_scale is not None
            assert np.allclose(after[own], after[x_scale] * after[w_scale], rtol=1e-6)


def test_weight_levels_follow_the_graph(graphs):
    """7-bit weights (63 levels, for CPUs without VNNI) stay 7-bit; 8-bit ones stay 127."""
    qdq = onnx.load(graphs["official_trt"])
    assert {q.levels for q in GraphModule(qdq).weights.values()} == {127}
    assert {q.levels for q in GraphModule(_coarse(qdq, 63)).weights.values()} == {63}


def test_same_seed_same_graph(graphs):
    qdq, fp32 = onnx.load(graphs["basicsr_trt"]), onnx.load(graphs["basicsr"])
    options = QatOptions(steps=4, batch_size=2, crop_size=32, learning_rate=1e-4)
    runs = [finetune(qdq, fp32, _images(), 1, options, stride=2, progress=False)[0]
            for _ in range(2)]
    assert _structure(runs[0]) == _structure(qdq)
    constant = next(n for n in qdq.graph.node if n.op_type == "Constant"
                    and n.attribute[0].t.dims[1:] == [3, 3, 3])  # the folded head weight
    tuned = next(n for n in runs[0].graph.node if n.name == constant.name)
    assert not np.array_equal(numpy_helper.to_array(tuned.attribute[0].t),
                              numpy_helper.to_array(constant.attribute[0].t))
    other = finetune(qdq, fp32, _images(), 1, QatOptions(**{**options.__dict__, "seed": 1}),
                     stride=2, progress=False)[0]
    assert runs[0].SerializeToString() == runs[1].SerializeToString()
    assert runs[0].SerializeToString() != other.SerializeToString()


def test_learned_scales_are_written_back(graphs):
    qdq = onnx.load(graphs["official_trt"])
    tuned, record = finetune(qdq, onnx.load(graphs["official"]), _images(), 255,
                             QatOptions(steps=5, batch_size=2, crop_size=32, learning_rate=1e-3,
                                        learn_scales=True), stride=2, progress=False)
    assert record["learned_scales"] > 0
    activation = {n.input[1] for n in qdq.graph.node if n.op_type == "QuantizeLinear"
                  and n.input[0] not in {t.name for t in qdq.graph.initializer}}
    before = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in tuned.graph.initializer}
    assert any(not np.array_equal(before[k], after[k]) for k in activation)


def test_cli_qat_writes_the_record_section(graphs, tmp_path, capsys):
    out = tmp_path / "int8_qat.onnx"
    code = main(["quantize", str(graphs["official"]), "--dataset", "samples", "--calib-crops",
                 "8", "--crop-size", "48", "--target", "tensorrt", "--no-mixed-precision",
                 "--selection-images", "1", "--qat", "3", "--qat-batch", "2",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    side = json.loads((tmp_path / "int8_qat.onnx.json").read_text())
    qat = side["qat"]
    assert qat["steps"] == 3 and qat["recipe"]["batch_size"] == 2
    assert qat["recipe"]["learn_scales"] and qat["learned_scales"] > 0
    assert qat["train_set"]["name"] == "samples" and qat["train_set"]["split"] == "train"
    assert len(qat["loss_history"]) == 3 and qat["seconds"] > 0
    assert qat["after"]["mean_drop"] == side["heldout"]["mean_drop"]
    assert "worst_drop" in qat["before"] and "QAT: 3 steps" in printed
    assert _structure(onnx.load(out)) == _structure(onnx.load(graphs["official_trt"]))


def test_cli_qat_bad_value_is_one_line(graphs, tmp_path, capsys):
    code = main(["quantize", str(graphs["official"]), "--qat", "-1", "--out",
                 str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--qat" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
