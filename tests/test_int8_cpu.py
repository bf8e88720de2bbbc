"""Know the CPU: VNNI detection, the int16 pair saturation of u8 x s8 convolutions without VNNI
(a numpy model that runs everywhere, and OpenVINO itself where the fault can be shown), 7-bit
weights that fix it, and the ``weight_bits`` choice recorded by quantize."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcan_deploy import api
from rcan_deploy.backends import get_runner
from rcan_deploy.backends.openvino import ISA_ENV, OpenVINORunner
from rcan_deploy.cli import main
from rcan_deploy.cpu import CpuInfo, detect_cpu
from rcan_deploy.errors import UserError
from rcan_deploy.quant.ptq import QuantizeOptions
from rcan_deploy.quant.weight_bits import (choose_weight_bits, max_weight_integer,
                                           reduce_weight_range)

INT16 = (-32768, 32767)
VNNI_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"
OLD_FLAGS = "fpu sse2 avx2 avx512f avx512bw"


def pair_saturating_dot(a_u8: np.ndarray, w_s8: np.ndarray) -> np.ndarray:
    """u8 x s8 dot products over the last axis as x86 computes them without VNNI: vpmaddubsw
    adds each pair of adjacent products in saturating int16, vpmaddwd sums the pairs in int32."""
    products = a_u8.astype(np.int32) * w_s8.astype(np.int32)
    pairs = np.clip(products[..., 0::2] + products[..., 1::2], *INT16)
    return pairs.sum(axis=-1)


def exact_dot(a_u8, w_s8):
    return (a_u8.astype(np.int64) * w_s8.astype(np.int64)).sum(axis=-1)


def _cpuinfo(tmp_path, flags, name="cpuinfo"):
    path = tmp_path / name
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: other\n")
    return path


def test_detect_cpu_reads_the_flags(tmp_path):
    vnni = detect_cpu(_cpuinfo(tmp_path, VNNI_FLAGS), machine="x86_64")
    assert vnni.vnni and not vnni.amx and vnni.flags["avx512bw"] and vnni.model == "Test CPU"
    assert not vnni.needs_reduced_range and "AVX512_VNNI" in vnni.reason
    old = detect_cpu(_cpuinfo(tmp_path, OLD_FLAGS, "old"), machine="x86_64")
    assert old.vnni is False and old.needs_reduced_range and "saturating int16" in old.reason
    laptop = detect_cpu(_cpuinfo(tmp_path, "avx2 avx_vnni", "laptop"), machine="x86_64")
    assert laptop.vnni and not laptop.needs_reduced_range
    amx = detect_cpu(_cpuinfo(tmp_path, "avx512bw amx_tile amx_int8", "amx"), machine="x86_64")
    assert amx.amx and not amx.vnni and not amx.needs_reduced_range
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    for unknown in (detect_cpu(arm, machine="aarch64"),
                    detect_cpu(tmp_path / "missing", machine="x86_64")):
        assert unknown.flags is None and unknown.vnni is None and unknown.needs_reduced_range
        assert "unknown" in unknown.reason and "safe" in unknown.reason
    json.dumps(detect_cpu().to_dict())  # this machine's, whatever it is, serialises


def test_int16_pairs_saturate_8_bit_weights_and_keep_7_bit_weights_exact():
    # activations are linear in the pair sum, so the extremes 0 and 255 bound every input
    a = np.array([[255, 255], [255, 0], [0, 255], [0, 0]], np.uint8)
    for limit, saturates in ((127, True), (64, False), (63, False)):
        w = np.stack(np.meshgrid(np.arange(-limit, limit + 1), np.arange(-limit, limit + 1)),
                     -1).reshape(-1, 2).astype(np.int8)
        model = pair_saturating_dot(a[:, None, :], w[None])
        wrong = model != exact_dot(a[:, None, :], w[None])
        assert wrong.any() == saturates, limit
    rng = np.random.default_rng(0)
    bright = rng.integers(200, 256, (64, 288), dtype=np.uint8)  # 3x3x32 conv inputs, highlights
    w8 = rng.integers(-127, 128, (288,), dtype=np.int8)
    w8[:2] = 127
    assert (pair_saturating_dot(bright, w8) != exact_dot(bright, w8)).any()
    w7 = np.round(w8 * 63 / 127).astype(np.int8)
    np.testing.assert_array_equal(pair_saturating_dot(bright, w7), exact_dot(bright, w7))


def _tiny_conv(bias=False, cin=16, cout=4, size=8):
    """x -> Q/DQ (int8, scale 1/127) -> Conv 3x3 with float weights -> Q/DQ per channel at
    max|w|/127 (modelopt's form); weights in 0.5..1 so that products add up."""
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.0, (cout, cin, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array((w.reshape(cout, -1).max(1) / 127).astype(np.float32),
                                     "w_scale"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zp")]
    conv_inputs = ["xd", "wd"]
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, cout).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], axis=0),
             helper.make_node("Conv", conv_inputs, ["y"], pads=[1, 1, 1, 1], name="conv")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model, x, runtime="ort", **kwargs):
    runner = OpenVINORunner(model, **kwargs) if runtime == "openvino" else get_runner(runtime, model)
    with runner:
        return runner.infer(x)


def test_reduced_range_modelopt_form_keeps_the_layer(tmp_path):
    model = _tiny_conv()
    reduced = onnx.ModelProto()
    reduced.CopyFrom(model)
    assert max_weight_integer(model) == 127
    assert reduce_weight_range(reduced) == 1
    assert max_weight_integer(reduced) == 63
    scales = {t.name: numpy_helper.to_array(t) for t in reduced.graph.initializer}
    np.testing.assert_allclose(scales["w_scale"] * 63, numpy_helper.to_array(
        model.graph.initializer[0]).reshape(4, -1).max(1), rtol=1e-6)
    x = np.random.default_rng(1).uniform(0, 1, (1, 16, 8, 8)).astype(np.float32)
    before, after = _run(model, x), _run(reduced, x)
    assert 0 < np.abs(before - after).max() < 0.02 * np.abs(before).max()  # coarser, not broken


def test_reduced_range_requantizes_int8_initializers_and_their_bias(tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, \
        quantize_static

    float_path, q_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    float_model = _tiny_conv(bias=True)
    graph = float_model.graph  # the float conv alone: ORT places its own Q/DQ
    del graph.node[:4]
    graph.node[0].input[:2] = ["x", "w"]
    keep = {"w", "b"}
    kept = [t for t in graph.initializer if t.name in keep]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(float_model, float_path)
    rng = np.random.default_rng(2)
    samples = [rng.uniform(0, 1, (1, 16, 8, 8)).astype(np.float32) for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"x": s} for s in samples)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_path), str(q_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True})
    model = onnx.load(q_path)
    assert max_weight_integer(model) == 127
    assert reduce_weight_range(model) == 1 and max_weight_integer(model) == 63
    reference = _run(float_model, samples[0])
    outputs = {}
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  ort.GraphOptimizationLevel.ORT_DISABLE_ALL):  # QLinearConv vs DQ -> float conv
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
        outputs[level] = ort.InferenceSession(model.SerializeToString(), options, providers=[
            "CPUExecutionProvider"]).run(None, {"x": samples[0]})[0]
    # ORT fuses only when the int32 bias scale is input scale x weight scale
    fused = outputs[ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
    ops = [n.op_type for n in onnx.load(tmp_path / f"{ort.GraphOptimizationLevel.ORT_ENABLE_ALL}"
                                                  ".onnx").graph.node]
    assert "QLinearConv" in ops
    np.testing.assert_allclose(fused, outputs[ort.GraphOptimizationLevel.ORT_DISABLE_ALL],
                               atol=0.02)
    assert np.abs(fused - reference).max() < 0.02 * np.abs(reference).max()


def test_weight_bits_choice():
    old = CpuInfo("x86_64", "old", {f: f in OLD_FLAGS.split() for f in
                                    ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
                                     "avx512bw", "avx2")}, "test")
    new = CpuInfo("x86_64", "new", {**old.flags, "avx512_vnni": True}, "test")
    unknown = CpuInfo("arm64", None, None, "not Linux")
    assert choose_weight_bits("auto", "openvino", old)["bits"] == 7
    assert choose_weight_bits("auto", "ort", unknown)["bits"] == 7
    assert choose_weight_bits("auto", "openvino", new)["bits"] == 8
    assert choose_weight_bits("auto", "tensorrt", old)["bits"] == 8
    forced = choose_weight_bits("7", "tensorrt", new)
    assert forced["bits"] == 7 and forced["why"] == "--weight-bits 7"
    assert forced["cpu"]["vnni"] is True
    assert QuantizeOptions(target="cpu").target == "ort"
    assert QuantizeOptions(weight_bits=7).weight_bits == "7"
    with pytest.raises(UserError, match="--weight-bits"):
        QuantizeOptions(weight_bits="6").check()


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    import rcan_deploy

    path = tmp_path_factory.mktemp("graph") / "rcan.onnx"
    rcan_deploy.export(path, source="official", variant="rcan2-sr4k", random_weights=True,
                       shape=(64, 96))
    return path


FAST = dict(dataset="samples", calib_crops=8, crop_size=48, selection_images=1, mixed_precision=False, progress=False)


def test_quantize_records_the_weight_bits(small_graph, tmp_path, capsys):
    seven = api.quantize(small_graph, tmp_path / "ov7.onnx", target="openvino", weight_bits="7",
                         **FAST)["quantization"]["weights"]
    assert seven["bits"] == 7 and seven["max_abs_integer"] == 63
    assert max_weight_integer(onnx.load(tmp_path / "ov7.onnx")) == 63
    assert seven["cpu"] == detect_cpu().to_dict()
    auto = api.quantize(small_graph, tmp_path / "ov.onnx", target="openvino",
                        **FAST)["quantization"]["weights"]
    assert auto["bits"] == (7 if detect_cpu().needs_reduced_range else 8)
    assert auto["option"] == "auto" and detect_cpu().reason in auto["why"]
    assert auto["max_abs_integer"] == (63 if auto["bits"] == 7 else 127)
    trt = api.quantize(small_graph, tmp_path / "trt.onnx", **FAST)["quantization"]["weights"]
    assert trt["bits"] == 8 and trt["max_abs_integer"] == 127  # tensorrt: 8 unless forced
    code = main(["quantize", str(small_graph), "--dataset", "samples", "--calib-crops", "4",
                 "--crop-size", "48", "--target", "cpu", "--weight-bits", "7", "--out",
                 str(tmp_path / "ort7.onnx")])
    out = capsys.readouterr().out
    assert code == 0 and "weights: 7-bit (onnxruntime reduce_range" in out
    record = json.loads((tmp_path / "ort7.onnx.json").read_text())["quantization"]
    assert record["target"] == "ort" and record["weights"]["max_abs_integer"] <= 64
    code = main(["quantize", str(small_graph), "--weight-bits", "6", "--out",
                 str(tmp_path / "x.onnx")])
    assert code == 2 and not (tmp_path / "x.onnx").exists()


def fault_mode():
    """How this machine can show the int16 pair saturation on OpenVINO: natively (x86 without
    VNNI/AMX), emulated (an isa cap without VNNI), or None with the reason."""
    cpu = detect_cpu()
    if not cpu.x86 or cpu.flags is None:
        return None, f"not an x86 CPU with known flags ({cpu.machine}: {cpu.source})"
    if cpu.needs_reduced_range:
        return {}, "native"
    return {"isa": "avx512_core" if cpu.flags["avx512bw"] else "avx2"}, "emulated"


def test_openvino_saturates_8_bit_weights_and_7_bit_weights_fix_it():
    kwargs, how = fault_mode()
    if kwargs is None:
        pytest.skip(how)
    model = _tiny_conv()
    x = np.full((1, 16, 8, 8), 1.0, np.float32)  # quantizes to 127: u8 255 after the shift
    reference = _run(model, x)
    faulty = _run(model, x, "openvino", **kwargs)
    if np.allclose(faulty, reference, rtol=1e-3):
        pytest.skip(f"OpenVINO ({how}, {kwargs}) did not saturate here (an AMX CPU ignoring the "
                    "isa cap?)")
    assert np.abs(faulty - reference).max() > 0.2 * np.abs(reference).max()
    reduce_weight_range(model)
    np.testing.assert_allclose(_run(model, x, "openvino", **kwargs), _run(model, x), rtol=1e-4)


def test_openvino_isa_cap_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(ISA_ENV, "avx9000")
    with pytest.raises(UserError, match=ISA_ENV):
        OpenVINORunner(_tiny_conv())
    monkeypatch.setenv(ISA_ENV, "avx2")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    runner = OpenVINORunner(garbage)
    assert runner.isa == "avx2"
    with pytest.raises(UserError, match="cannot load"):  # raised in the worker, one line here
        runner.activate()
    assert not runner.is_active and runner._worker is None


def test_isa_worker_runs_like_the_in_process_runner():
    model = _tiny_conv()
    x = np.random.default_rng(3).uniform(0, 1, (1, 16, 8, 8)).astype(np.float32)
    runner = OpenVINORunner(model, isa="default")  # a worker process without a cap
    with runner:
        worker = runner._worker
        outputs = [runner.infer(x), runner.infer(x)]
    assert worker.returncode == 0 and runner._worker is None  # the worker ended with the runner
    assert len(runner.inference_times) == 2 and all(t > 0 for t in runner.inference_times)
    for output in outputs:
        np.testing.assert_array_equal(output, _run(model, x, "openvino"))
