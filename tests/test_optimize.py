"""The graph optimizer: closed-form conv/pixel-shuffle algebra, exact upsampler fusion (borders
included), affine folding, the optimize command and the default export."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rcan_deploy import api
from rcan_deploy.cli import main
from rcan_deploy.costs import model_info
from rcan_deploy.onnx_utils import run
from rcan_deploy.passes.affine import fold_affine
from rcan_deploy.passes.conv_algebra import (ConvSpec, border_margins, compose,
                                             conv_before_shuffle, merge_shuffles,
                                             row_phase_groups, strip_size)
from rcan_deploy.passes.fuse_upsampler import fuse_upsampler
from rcan_deploy.passes.optimize import optimize_verified

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _spec(rng, out_channels, in_channels, k=3) -> ConvSpec:
    return ConvSpec(rng.standard_normal((out_channels, in_channels, k, k)),
                    rng.standard_normal(out_channels), (k // 2,) * 4)


def _conv(x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    top, left, bottom, right = spec.pads
    padded = F.pad(x, (left, right, top, bottom))
    return F.conv2d(padded, torch.from_numpy(spec.weight), torch.from_numpy(spec.bias))


def _interior(a: torch.Tensor, b: torch.Tensor, margin: int) -> float:
    return float((a - b)[..., margin:-margin, margin:-margin].abs().max())


@pytest.mark.parametrize("r", [2, 3, 4])
def test_conv_before_shuffle_equals_conv_after_shuffle(r):
    """Exact even at the border: zero-padding v is zero-padding the shuffled image."""
    rng = np.random.default_rng(r)
    conv = _spec(rng, 3, 5)
    v = torch.from_numpy(rng.standard_normal((1, 5 * r * r, 9, 11)))
    expected = _conv(F.pixel_shuffle(v, r), conv)
    actual = F.pixel_shuffle(_conv(v, conv_before_shuffle(conv, r)), r)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < 1e-10


def test_compose_is_two_convs_in_one_away_from_the_border():
    rng = np.random.default_rng(1)
    first, second = _spec(rng, 6, 4), _spec(rng, 3, 6, 5)
    x = torch.from_numpy(rng.standard_normal((1, 4, 12, 13)))
    fused, expected = compose(first, second), _conv(_conv(x, first), second)
    assert fused.weight.shape == (3, 4, 7, 7) and fused.pads == (3, 3, 3, 3)
    assert _interior(_conv(x, fused), expected, 2) < 1e-10
    # within second's padding (2) of the border the intermediate's zero padding matters
    assert float((_conv(x, fused) - expected)[..., :2, :].abs().max()) > 1e-3


def test_merge_shuffles_turns_two_shuffles_into_one():
    rng = np.random.default_rng(2)
    conv = _spec(rng, 2 * 36, 3)
    x = torch.from_numpy(rng.standard_normal((1, 3, 5, 6)))
    expected = F.pixel_shuffle(F.pixel_shuffle(_conv(x, conv), 2), 3)
    merged = merge_shuffles(conv, [2, 3])
    assert torch.equal(F.pixel_shuffle(_conv(x, merged), 6), expected)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_row_phase_groups_give_the_same_image_with_fewer_macs(r):
    rng = np.random.default_rng(10 + r)
    fused = merge_shuffles(compose(_spec(rng, 8 * r * r, 8), conv_before_shuffle(
        _spec(rng, 3, 8), r)), [r])
    groups = row_phase_groups(fused, r)
    x = torch.from_numpy(rng.standard_normal((1, 8, 9, 10)))
    z = torch.cat([_conv(x, group) for group in groups], 1)
    n, c, h, w = z.shape
    dcr = z.reshape(n, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)  # DepthToSpace DCR
    image = dcr.reshape(n, c // (r * r), h * r, w * r)
    assert float((image - F.pixel_shuffle(_conv(x, fused), r)).abs().max()) < 1e-10
    assert sum(g.macs_per_pixel() for g in groups) < fused.macs_per_pixel()
    assert len(groups) == (2 if r == 2 else 3)  # edge phases need 4 kernel rows, inner ones 3


def test_border_margins_and_strips_follow_the_padding():
    rng = np.random.default_rng(3)
    a, b = _spec(rng, 16, 4), _spec(rng, 3, 4)
    assert border_margins([(a, 4)], b) == dict.fromkeys(("top", "left", "bottom", "right"), 1)
    assert strip_size([(a, 4)], b, 4, "top") == 3  # 4 output rows: u rows 0..4, v 0..1, x 0..2
    a2 = _spec(rng, 16, 4)
    assert border_margins([(a, 2), (a2, 2)], b)["bottom"] == 3  # 1 * 2 + 1


class Tail(nn.Module):
    """conv -> pixel shuffle -> ... -> conv, with the shuffle as torch's op or as the traced
    6-D reshape (CRD), or DCR order by a channel permutation before a DCR reshape."""

    def __init__(self, channels: int, factors: tuple[int, ...], traced: str | None = None):
        super().__init__()
        torch.manual_seed(sum(factors) + channels)
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.stages = nn.ModuleList(nn.Conv2d(channels, channels * r * r, 3, padding=1)
                                    for r in factors)
        self.factors, self.traced = factors, traced
        self.last = nn.Conv2d(channels, 3, 3, padding=1)

    def shuffle(self, x: torch.Tensor, r: int) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.traced == "crd":
            x = x.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
            return x.reshape(n, c // (r * r), h * r, w * r)
        if self.traced == "dcr":
            x = x.reshape(n, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)
            return x.reshape(n, c // (r * r), h * r, w * r)
        return F.pixel_shuffle(x, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.head(x))
        for conv, r in zip(self.stages, self.factors):
            x = self.shuffle(conv(x), r)
        return self.last(x)


def _export(module: nn.Module, shape=(1, 3, 12, 14), dynamic: bool = True) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(*shape), buffer, dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["output"],
                          dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


def _max_error(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, int], seed=0,
               value_range: float = 1.0) -> float:
    x = (np.random.default_rng(seed).random((1, 3, *shape)) * value_range).astype(np.float32)
    expected, actual = run(a, x)[0], run(b, x)[0]
    assert expected.shape == actual.shape
    return float(np.max(np.abs(expected.astype(np.float64) - actual)))


def _fusion_site(passes: list[dict]) -> dict:
    sites = next(p["sites"] for p in passes if p["name"] == "fuse_upsampler")
    assert len(sites) == 1
    return sites[0]


@pytest.mark.parametrize("factors", [(2,), (3,), (4,), (2, 2)])
def test_fusion_is_exact_at_every_border(factors):
    model = _export(Tail(8, factors))
    fused, sites = fuse_upsampler(model)
    assert len(sites) == 1 and sites[0]["stages_fused"] == len(factors)
    ops = [node.op_type for node in fused.graph.node]
    assert ops.count("DepthToSpace") >= 1 and "Transpose" not in ops
    # the fused conv takes the tail's input (8 channels) and emits 3 * R^2 channels
    assert sites[0]["channels"] == [8, 3 * int(np.prod(factors)) ** 2]
    macs = sites[0]["macs_per_input_pixel"]
    assert macs["after"] < macs["before"]
    for shape in ((12, 14), (7, 9), (16, 5)):
        assert _max_error(model, fused, shape) < 1e-5, shape


@pytest.mark.parametrize("factors,traced", [((3,), "crd"), ((2,), "dcr"), ((2, 2), "dcr")])
@pytest.mark.parametrize("shape", [(12, 14), (7, 9)])
def test_traced_pixel_shuffles_of_fixed_graphs_are_fused_exactly(factors, traced, shape):
    """Traced Reshape/Transpose/Reshape shuffles hold the export size in their shape constants:
    optimize turns them into DepthToSpace, optimizes and verifies a symbolic-size copy, and
    fixes the size again."""
    model = _export(Tail(8, factors, traced), (1, 3, *shape), dynamic=False)
    assert "Transpose" in [node.op_type for node in model.graph.node]
    optimized, passes, verification = optimize_verified(model)
    site = _fusion_site(passes)
    assert site["stages_fused"] == len(factors) and site["modes"] == [traced.upper()] * len(factors)
    assert verification["shape"] == [1, 3, 40, 56]
    assert "Transpose" not in [node.op_type for node in optimized.graph.node]
    assert _max_error(model, optimized, shape) < 1e-5


def test_dcr_depth_to_space_is_fused_exactly():
    model = _export(Tail(8, (3,)))
    for node in model.graph.node:  # make the shuffle DCR: permute the conv's output channels
        if node.op_type == "DepthToSpace":
            node.attribute[-1].s = b"DCR" if node.attribute[-1].name == "mode" else None
    dcr = [n for n in model.graph.node if n.op_type == "DepthToSpace"][0]
    assert onnx.helper.get_attribute_value(dcr.attribute[1]) == b"DCR"
    fused, sites = fuse_upsampler(model)
    assert sites and sites[0]["modes"] == ["DCR"]
    assert _max_error(model, fused, (10, 11)) < 1e-5


def test_tails_that_fusion_would_not_make_cheaper_or_that_are_not_linear_are_left_alone():
    _, sites = fuse_upsampler(_export(Tail(2, (2,))))
    assert sites == []  # 2 channels: 360 MACs per pixel as it is, 480 fused
    module = Tail(8, (2,))
    module.last = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    fused, sites = fuse_upsampler(_export(module))
    assert sites == [] and "Relu" in [n.op_type for n in fused.graph.node]


def test_fold_affine_folds_conv_then_div_add_mul_sub():
    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))

        def forward(self, x):
            return 2.0 - ((self.conv(x) / 255 + self.mean) * 3 - self.mean)

    model = _export(Affine())
    folded, count = fold_affine(model)
    assert count == 5 and [n.op_type for n in folded.graph.node] == ["Conv"]
    assert _max_error(model, folded, (9, 8)) < 1e-6


class ThirdPartySR4K(nn.Module):
    """An SR4K-style RCAN x2 written outside this project: stride-2 head, mean as constants,
    residual body, conv -> PixelShuffle(4) -> conv tail."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(32, 32, 3, padding=1) for _ in range(4))
        self.up = nn.Conv2d(32, 32 * 16, 3, padding=1)
        self.last = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x):
        h = self.head((x - self.mean) * 255)
        y = h
        for conv in self.body:
            y = y + conv(F.relu(y))
        return self.last(F.pixel_shuffle(self.up(y + h), 4)) / 255 + self.mean


def test_third_party_sr4k_graph_is_optimized_exactly_and_cheaper(tmp_path, capsys):
    path, out = tmp_path / "vendor.onnx", tmp_path / "vendor_opt.onnx"
    onnx.save(_export(ThirdPartySR4K(), (1, 3, 216, 384), dynamic=False), str(path))
    code = main(["optimize", str(path), "--out", str(out)])
    assert code == 0 and "optimized: " in capsys.readouterr().out
    side = json.loads((tmp_path / "vendor_opt.onnx.json").read_text())
    assert side["optimize"]["verification"]["shape"] == [1, 3, 40, 56]  # dynamic copy, small
    original, optimized = onnx.load(str(path)), onnx.load(str(out))
    assert optimized.graph.input[0].type.tensor_type.shape.dim[3].dim_value == 384
    assert _max_error(original, optimized, (216, 384)) < 2e-6  # 0..1 range
    assert model_info(optimized)["macs"] <= 0.65 * model_info(original)["macs"]
    assert side["costs"]["macs"] == model_info(optimized)["macs"]
    assert side["architecture"]["macs"] == model_info(original)["macs"]


def _export_both(tmp_path, name, **kwargs):
    plain, optimized = tmp_path / f"{name}_plain.onnx", tmp_path / f"{name}.onnx"
    api.export(plain, optimize=False, **kwargs)
    record = api.export(optimized, **kwargs)
    return onnx.load(str(plain)), onnx.load(str(optimized)), record


def test_default_export_of_shipped_sr4k_equals_no_optimize_everywhere_at_1080p(tmp_path):
    """The real deployment shape, whole frame: 0..255 graphs within 2e-3 everywhere, and the
    optimized one executes at most 100 GMACs."""
    plain, optimized, record = _export_both(tmp_path, "sr4k", source="official",
                                            variant="rcan-sr4k")
    assert record["weights"].get("shipped")
    x = np.random.default_rng(0).random((1, 3, 1080, 1920)).astype(np.float32) * 255
    expected, actual = run(plain, x)[0], run(optimized, x)[0]
    error = np.abs(expected.astype(np.float64) - actual)
    assert error.max() < 2e-3 and error[..., 0, :].max() < 2e-3 and error[..., :, -1].max() < 2e-3
    assert record["costs"]["macs"] <= 100e9 < record["architecture"]["macs"]
    ops = {node.op_type for node in optimized.graph.node}
    assert "DepthToSpace" in ops and len(optimized.graph.node) < len(plain.graph.node) + 40


def test_two_stage_x4_with_channel_attention_equals_no_optimize(tmp_path):
    plain, optimized, record = _export_both(tmp_path, "x4", source="official",
                                            variant="rcan-slim", scale=4, random_weights=True,
                                            shape=(48, 64))
    fusion = next(p for p in record["export"]["passes"] if p["name"] == "fuse_upsampler")
    assert fusion["sites"][0]["stages_fused"] == 2
    for seed in range(2):
        assert _max_error(plain, optimized, (48, 64), seed, value_range=255) < 2e-3


def test_pixel_shuffle_forms_apply_after_fusion(tmp_path):
    record = api.export(tmp_path / "rank4.onnx", source="official", variant="rcan-sr4k",
                        random_weights=True, shape=(96, 128), pixel_shuffle="convtranspose")
    names = [p["name"] for p in record["export"]["passes"]]
    assert names.index("fuse_upsampler") < names.index("pixel_shuffle")
    layers = model_info(onnx.load(str(tmp_path / "rank4.onnx")))["layers"]
    shuffle = max((layer for layer in layers if layer["op"] == "ConvTranspose"),
                  key=lambda layer: layer["macs"])
    assert shuffle["input_shape"][1] == 3 * 16 and record["graph"]["max_rank"] == 4


def test_optimize_refuses_bad_input_in_one_line(tmp_path, capsys):
    graph = tmp_path / "g.onnx"
    onnx.save(_export(Tail(8, (2,))), str(graph))
    before = graph.read_bytes()
    cases = [(["optimize", str(graph), "--out", str(graph)], "input"),
             (["optimize", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o.onnx")],
              "missing.onnx"),
             (["optimize", str(graph), "--out", str(tmp_path / "no" / "dir" / "o.onnx")], "no")]
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases.append((["optimize", str(empty), "--out", str(tmp_path / "o.onnx")], "empty.onnx"))
    for args, fragment in cases:
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], (args, err)
        assert "Traceback" not in err[0]
    assert graph.read_bytes() == before and not (tmp_path / "o.onnx").exists()
    assert not list(tmp_path.glob(".*tmp*"))
