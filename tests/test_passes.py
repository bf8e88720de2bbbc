"""Graph passes: pixel-shuffle rewrites, MeanShift folding, graph checks."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from rcan_deploy.errors import UserError
from rcan_deploy.onnx_utils import run
from rcan_deploy.passes.check import check_graph, graph_report
from rcan_deploy.passes.meanshift import fold_meanshift
from rcan_deploy.passes.pixel_shuffle import FORMS, rewrite_pixel_shuffle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHANNELS = 5  # output channels of the pixel shuffle: differs from every r, so C/r mix-ups show
DYNAMIC_AXES = {"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}}
MAX_RANK = {"reshape": 6, "reshape5d": 5, "convtranspose": 4}


def export(module: torch.nn.Module, shape: tuple, dynamic: bool = False) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            torch.randn(*shape),
            buffer,
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=DYNAMIC_AXES if dynamic else None,
        )
    return onnx.load_from_string(buffer.getvalue())


def torch_pixel_shuffle(r: int, dynamic: bool) -> onnx.ModelProto:
    torch.manual_seed(r)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, CHANNELS * r * r, 3, padding=1), torch.nn.PixelShuffle(r)
    )
    return export(module, (1, 3, 6, 7), dynamic)


def make_model(nodes, x_shape, y_shape, initializers=(), dtype=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", dtype, x_shape)],
        [helper.make_tensor_value_info("output", dtype, y_shape)],
        list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def depth_to_space_dcr(r: int = 2, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """DepthToSpace without a mode attribute: DCR by the ONNX spec."""
    node = helper.make_node("DepthToSpace", ["input"], ["output"], name="d2s", blocksize=r)
    return make_model([node], [1, CHANNELS * r * r, 4, 6], [1, CHANNELS, 4 * r, 6 * r], dtype=dtype)


def traced_pixel_shuffle(mode: str, r: int = 3) -> onnx.ModelProto:
    """Reshape(4-D -> 6-D) -> Transpose -> Reshape as tracers emit it, CRD or DCR."""
    h, w = 4, 6
    dims6 = [1, CHANNELS, r, r, h, w] if mode == "CRD" else [1, r, r, CHANNELS, h, w]
    perm = [0, 1, 4, 2, 5, 3] if mode == "CRD" else [0, 3, 4, 1, 5, 2]
    nodes = [
        helper.make_node("Reshape", ["input", "shape6"], ["split"], name="split"),
        helper.make_node("Transpose", ["split"], ["moved"], name="move", perm=perm),
        helper.make_node("Reshape", ["moved", "shape4"], ["output"], name="merge"),
    ]
    shapes = [
        helper.make_tensor("shape6", TensorProto.INT64, [6], dims6),
        helper.make_tensor("shape4", TensorProto.INT64, [4], [1, CHANNELS, h * r, w * r]),
    ]
    return make_model(nodes, [1, CHANNELS * r * r, h, w], [1, CHANNELS, h * r, w * r], shapes)


def random_input(model: onnx.ModelProto, h: int | None = None, w: int | None = None) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value for d in dims]
    shape[2], shape[3] = h or shape[2] or 6, w or shape[3] or 7
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


CASES = {
    "crd_r2": lambda: torch_pixel_shuffle(2, dynamic=False),
    "crd_r3": lambda: torch_pixel_shuffle(3, dynamic=False),
    "crd_r4": lambda: torch_pixel_shuffle(4, dynamic=False),
    "crd_r2_dynamic": lambda: torch_pixel_shuffle(2, dynamic=True),
    "crd_r3_dynamic": lambda: torch_pixel_shuffle(3, dynamic=True),
    "dcr_depth_to_space": depth_to_space_dcr,
    "traced_crd": lambda: traced_pixel_shuffle("CRD"),
    "traced_dcr": lambda: traced_pixel_shuffle("DCR"),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_rewrite_pixel_shuffle_is_exact(case, form):
    model = CASES[case]()
    before = model.SerializeToString()
    rewritten, count = rewrite_pixel_shuffle(model, form)

    assert model.SerializeToString() == before
    assert count == (0 if form == "reshape" and case.startswith("traced") else 1)
    onnx.checker.check_model(rewritten, full_check=True)
    report = graph_report(rewritten)
    assert "DepthToSpace" not in report["ops"]
    assert report["max_rank"] <= MAX_RANK[form]
    assert rewritten.ir_version == model.ir_version
    assert rewritten.opset_import == model.opset_import
    sizes = [(None, None), (5, 9)] if case.endswith("dynamic") else [(None, None)]
    for h, w in sizes:
        x = random_input(model, h, w)
        np.testing.assert_array_equal(run(rewritten, x)[0], run(model, x)[0])


@pytest.mark.parametrize("form", FORMS)
def test_dynamic_rewrite_folds_to_constants_once_shape_is_fixed(form):
    from onnxsim import simplify

    model = torch_pixel_shuffle(2, dynamic=True)
    rewritten, _ = rewrite_pixel_shuffle(model, form)
    fixed, ok = simplify(rewritten, overwrite_input_shapes={"input": [1, 3, 8, 10]})

    assert ok
    assert not {"Shape", "Gather", "Concat", "Mul"} & set(graph_report(fixed)["ops"])
    x = random_input(fixed)
    np.testing.assert_array_equal(run(fixed, x)[0], run(model, x)[0])


def test_convtranspose_weight_follows_float16_input():
    model = depth_to_space_dcr(dtype=TensorProto.FLOAT16)
    rewritten, count = rewrite_pixel_shuffle(model, "convtranspose")

    assert count == 1
    conv = next(n for n in rewritten.graph.node if n.op_type == "ConvTranspose")
    weight = next(i for i in rewritten.graph.initializer if i.name == conv.input[1])
    assert weight.data_type == TensorProto.FLOAT16
    x = random_input(model).astype(np.float16)
    np.testing.assert_array_equal(run(rewritten, x)[0], run(model, x)[0])


def test_rewrite_skips_site_with_unknown_channels_and_warns():
    node = helper.make_node("DepthToSpace", ["input"], ["output"], name="d2s", blocksize=2)
    model = make_model([node], [1, "c", 4, 4], [1, "C", 8, 8])

    with pytest.warns(UserWarning, match="d2s"):
        rewritten, count = rewrite_pixel_shuffle(model, "reshape5d")
    assert count == 0
    assert [n.op_type for n in rewritten.graph.node] == ["DepthToSpace"]


def test_rewrite_rejects_unknown_form():
    with pytest.raises(UserError, match="subpixel"):
        rewrite_pixel_shuffle(depth_to_space_dcr(), "subpixel")


class TinyRCAN(torch.nn.Module):
    """sub_mean 1x1 -> Conv3x3 -> ReLU -> Conv3x3 -> add_mean 1x1, as in RCAN's head and tail."""

    def __init__(self, stride: int, shift_weight: torch.Tensor):
        super().__init__()
        mean = torch.tensor([0.4488, 0.4371, 0.4040])
        self.sub_mean = torch.nn.Conv2d(3, 3, 1)
        self.head = torch.nn.Conv2d(3, 8, 3, stride=stride, padding=1)
        self.tail = torch.nn.Conv2d(8, 3, 3, padding=1)
        self.add_mean = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.sub_mean.weight.copy_(shift_weight.view(3, 3, 1, 1))
            self.sub_mean.bias.copy_(-255 * shift_weight @ mean)
            self.add_mean.weight.copy_(shift_weight.view(3, 3, 1, 1))
            self.add_mean.bias.copy_(255 * mean)

    def forward(self, x):
        return self.add_mean(self.tail(torch.relu(self.head(self.sub_mean(x)))))


def conv_1x1_names(model: onnx.ModelProto) -> list[str]:
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and helper.get_node_attr_value(node, "kernel_shape") == [1, 1]
    ]


SHIFT_WEIGHTS = {
    "identity": torch.eye(3),
    "random": torch.eye(3) + 0.2 * torch.randn(3, 3, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("weight", SHIFT_WEIGHTS)
def test_fold_meanshift_is_exact(stride, weight):
    torch.manual_seed(stride)
    model = export(TinyRCAN(stride, SHIFT_WEIGHTS[weight]), (1, 3, 9, 11))
    before = model.SerializeToString()
    folded, count = fold_meanshift(model)

    assert model.SerializeToString() == before
    assert count == 2
    assert len(conv_1x1_names(model)) == 2 and conv_1x1_names(folded) == []
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(stride).uniform(0, 255, (1, 3, 9, 11)).astype(np.float32)
    x[..., 0, :] = x[..., -1, :] = 255  # bright borders: a bias folded into Q's padding shows
    np.testing.assert_allclose(run(folded, x)[0], run(model, x)[0], rtol=0, atol=1e-4)


def test_fold_meanshift_skips_forward_fold_of_singular_weight():
    singular = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    model = export(TinyRCAN(1, singular), (1, 3, 8, 8))
    folded, count = fold_meanshift(model)

    assert count == 1
    assert conv_1x1_names(folded) == ["/sub_mean/Conv"]
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x)[0], run(model, x)[0], rtol=0, atol=1e-4)


def test_check_graph_rank_and_forbidden_ops():
    traced = traced_pixel_shuffle("CRD")
    report = graph_report(traced)
    assert report == {
        "ops": {"Reshape": 2, "Transpose": 1},
        "max_rank": 6,
        "max_rank_tensor": "split",
        "nodes": 3,
    }
    assert check_graph(traced, max_rank=6) == []
    assert check_graph(traced, max_rank=5) == [
        "tensor 'split' has rank 6 > 5 (produced by Reshape 'split')",
        "tensor 'moved' has rank 6 > 5 (produced by Transpose 'move')",
    ]

    d2s = depth_to_space_dcr()
    assert check_graph(d2s, forbid_ops=["DepthToSpace"]) == [
        "forbidden op DepthToSpace x1 (nodes: d2s)"
    ]
    rewritten, _ = rewrite_pixel_shuffle(d2s, "convtranspose")
    assert check_graph(rewritten, max_rank=4, forbid_ops=["DepthToSpace", "Reshape"]) == []


def test_check_graph_rejects_unknown_op_name():
    with pytest.raises(UserError, match="depthtospace"):
        check_graph(depth_to_space_dcr(), forbid_ops=["depthtospace"])
