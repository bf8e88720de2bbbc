"""Fit / pad / tile paths against whole-image inference, receptive margins, runners, files."""

import io
import warnings

import cv2
import numpy as np
import onnx
import pytest
import torch

from rcan_deploy import graph_analysis, upscaling as up
from rcan_deploy.record import Record, save_onnx
from rcan_deploy.backends import RUNTIMES, OnnxRuntimeRunner, get_runner
from rcan_deploy.backends.base import import_optional
from rcan_deploy.errors import UserError
from rcan_deploy.onnx_utils import run
from rcan_deploy.passes.pixel_shuffle import FORMS, rewrite_pixel_shuffle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TILE = (24, 32)
DYNAMIC_AXES = {"input": {2: "h", 3: "w"}, "output": {2: "H", 3: "W"}}


class ChannelAttention(torch.nn.Module):
    def __init__(self, channels: int, pool: str):
        super().__init__()
        self.pool = pool
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        if self.pool == "adaptive":
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        elif self.pool == "mean_hw":
            pooled = x.mean(dim=(2, 3), keepdim=True)
        else:  # mean over channels: local, not a global pool
            pooled = x.mean(dim=1, keepdim=True).expand_as(x)
        return x * torch.sigmoid(self.conv(pooled))


def plain_sr() -> torch.nn.Module:
    """x2, stride 1: three 3x3 convs before the shuffle -> margin 3."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 12, 3, padding=1),
        torch.nn.PixelShuffle(2)).eval()


def strided_sr() -> torch.nn.Module:
    """x2 like SR4K: stride-2 head, body at half resolution, PixelShuffle(4) -> margin 6."""
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 48, 3, padding=1),
        torch.nn.PixelShuffle(4)).eval()


def attention_sr(pool: str) -> torch.nn.Module:
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 12, 3, padding=1), ChannelAttention(12, pool),
        torch.nn.PixelShuffle(2)).eval()


def export(module: torch.nn.Module, shape=None) -> onnx.ModelProto:
    """Fixed-shape graph at ``shape`` (H, W), or a dynamic one when ``shape`` is None."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, torch.rand(1, 3, *(shape or (16, 16))), buffer, dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["output"],
                          dynamic_axes=None if shape else DYNAMIC_AXES)
    return onnx.load_from_string(buffer.getvalue())


def reference(dynamic: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    return run(dynamic, image.transpose(2, 0, 1)[None].astype(np.float32))[0][0].transpose(1, 2, 0)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def measured_margin(dynamic: onnx.ModelProto, scale: int) -> int:
    """Largest |output pixel // scale - input pixel| over output pixels a perturbation reaches."""
    image = random_image(40, 40)
    base = reference(dynamic, image)
    reach = 0
    for y, x in ((20, 20), (21, 21)):
        bumped = image.copy()
        bumped[y, x] += 1.0
        rows, cols = np.nonzero(np.abs(reference(dynamic, bumped) - base).max(axis=2) > 1e-6)
        reach = max(reach, np.abs(rows // scale - y).max(), np.abs(cols // scale - x).max())
    return int(reach)


@pytest.fixture(scope="module")
def plain():
    module = plain_sr()
    return export(module), export(module, TILE)


@pytest.fixture(scope="module")
def strided():
    module = strided_sr()
    return export(module), export(module, (48, 64))


@pytest.mark.parametrize("builder, margin, stride", [(plain_sr, 3, 1), (strided_sr, 6, 2)])
def test_receptive_margin_matches_perturbation(builder, margin, stride):
    dynamic = export(builder())
    assert graph_analysis.receptive_margin(dynamic) == (margin, False)
    assert graph_analysis.receptive_field(export(builder(), (48, 64))).stride == stride
    assert measured_margin(dynamic, 2) == margin


@pytest.mark.parametrize("form", FORMS)
def test_receptive_margin_same_for_every_pixel_shuffle_form(plain, form):
    rewritten, count = rewrite_pixel_shuffle(plain[1], form)
    assert count == 1
    assert graph_analysis.receptive_margin(rewritten) == (3, False)


@pytest.mark.parametrize("pool, flagged",
                         [("adaptive", True), ("mean_hw", True), ("mean_c", False)])
def test_global_pooling_is_flagged(pool, flagged):
    model = export(attention_sr(pool), TILE)
    assert graph_analysis.receptive_margin(model) == (1, flagged)


def test_fit_path_is_one_plain_run(plain):
    _, fixed = plain
    image = random_image(*TILE)
    with OnnxRuntimeRunner(fixed) as runner:
        output, record = up.upscale(runner, image, TILE, 2, 1)
    np.testing.assert_array_equal(output, run(fixed, image.transpose(2, 0, 1)[None])[0][0]
                                  .transpose(1, 2, 0))
    assert record == {"path": "fit", "padded": list(TILE), "tiles": 1, "overlap": 0}


def test_pad_path_matches_reference_away_from_pad_edge(plain):
    dynamic, fixed = plain
    image, margin = random_image(17, 27), 3
    with OnnxRuntimeRunner(fixed) as runner:
        output, record = up.upscale(runner, image, TILE, 2, 1)
    expected = reference(dynamic, image)
    assert output.shape == expected.shape == (34, 54, 3)
    assert record["path"] == "pad" and record["padded"] == list(TILE)
    inner = np.s_[:(17 - margin) * 2, :(27 - margin) * 2]
    np.testing.assert_allclose(output[inner], expected[inner], atol=1e-5)
    assert not np.allclose(output, expected, atol=1e-5)  # the padded edge does differ


def test_tile_path_with_default_overlap_is_exact(plain):
    dynamic, fixed = plain
    image = random_image(50, 70, seed=3)
    with OnnxRuntimeRunner(fixed) as runner:
        output, record = up.upscale(runner, image, TILE, 2, 1)
    assert record == {"path": "tile", "padded": [50, 70], "tiles": 9, "overlap": 8}
    np.testing.assert_allclose(output, reference(dynamic, image), atol=1e-5)


def seams(length: int, tile: int, overlap: int) -> list[int]:
    """Seam rows: grid every tile - overlap, last tile flush, seam mid-overlap."""
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    return [(a + b + tile) // 2 for a, b in zip(starts, starts[1:])]


def test_tile_path_with_small_overlap_is_exact_away_from_seams(plain):
    dynamic, fixed = plain
    image, margin, overlap = random_image(50, 70, seed=4), 3, 2
    with OnnxRuntimeRunner(fixed) as runner:
        output, record = up.upscale(runner, image, TILE, 2, 1, overlap=overlap)
    expected = reference(dynamic, image)
    assert record["overlap"] == overlap

    def far(length: int, tile: int) -> np.ndarray:
        pixel = np.arange(length)[:, None]
        cuts = np.array(seams(length, tile, overlap))[None]
        ok = ((pixel <= cuts - margin - 1) | (pixel >= cuts + margin)).all(axis=1)
        return np.repeat(ok, 2)

    mask = far(50, TILE[0])[:, None] & far(70, TILE[1])[None, :]
    np.testing.assert_allclose(output[mask], expected[mask], atol=1e-5)
    assert not np.allclose(output, expected, atol=1e-5)  # seams with too little context differ


def test_tile_and_pad_mixed_dimensions(plain):
    dynamic, fixed = plain
    image, margin = random_image(15, 90, seed=5), 3
    with OnnxRuntimeRunner(fixed) as runner:
        output, record = up.upscale(runner, image, TILE, 2, 1)
    assert record["path"] == "tile" and record["padded"] == [24, 90] and record["tiles"] == 4
    expected = reference(dynamic, image)
    inner = np.s_[:(15 - margin) * 2]
    np.testing.assert_allclose(output[inner], expected[inner], atol=1e-5)


def test_strided_graph_tiles_on_its_stride_grid(strided):
    dynamic, fixed = strided
    image = random_image(100, 150, seed=6)
    with OnnxRuntimeRunner(fixed) as runner:
        output, record = up.upscale(runner, image, (48, 64), 2, 1)
        odd, odd_record = up.upscale(runner, random_image(101, 149), (48, 64), 2, 1)
        with pytest.raises(UserError, match="stride 2"):
            up.upscale(runner, image, (48, 64), 2, 1, overlap=7)
    assert record["overlap"] == 16 and record["tiles"] == 9
    np.testing.assert_allclose(output, reference(dynamic, image), atol=1e-5)
    assert odd.shape == (202, 298, 3) and odd_record["padded"] == [102, 150]


def test_input_range_scales_feed_and_output(plain):
    _, fixed = plain
    image = random_image(*TILE)
    with OnnxRuntimeRunner(fixed) as runner:
        unit, _ = up.upscale(runner, image, TILE, 2, 1)
        wide, _ = up.upscale(runner, image, TILE, 2, 255)
    # conv biases are not scaled with the input, so the graph is only affine: compare the map
    expected = run(fixed, image.transpose(2, 0, 1)[None] * 255)[0][0].transpose(1, 2, 0) / 255
    np.testing.assert_allclose(wide, expected, atol=1e-5)
    assert not np.allclose(unit, wide)


def test_runtimes_agree_and_time_each_run(plain):
    _, fixed = plain
    x = random_image(*TILE).transpose(2, 0, 1)[None]
    outputs = {}
    for name in RUNTIMES:
        with get_runner(name, fixed, threads=1) as runner:
            outputs[name] = runner.infer(x)
            runner.infer(x)
            assert len(runner.inference_times) == 2
            assert runner.last_inference_time() > 0
        assert not runner.is_active
    np.testing.assert_allclose(outputs["ort"], outputs["openvino"], atol=1e-4)


def test_runner_errors(tmp_path):
    with pytest.raises(UserError, match="unknown runtime"):
        get_runner("tensorflow", "model.onnx")
    with pytest.raises(UserError, match="no such ONNX file"):
        get_runner("ort", tmp_path / "missing.onnx").activate()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    for name in RUNTIMES:
        with pytest.raises(UserError, match="cannot load"):
            get_runner(name, garbage).activate()
    with pytest.raises(RuntimeError, match="not active"):
        get_runner("ort", garbage).infer(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(UserError, match="pip install tensorrt-cu13"):
        import_optional("no_such_runtime_module", "tensorrt-cu13")


def test_upscale_files_writes_pngs_and_records(plain, tmp_path):
    _, fixed = plain
    model_path = tmp_path / "sr.onnx"
    save_onnx(fixed, model_path, Record("onnx-fp32", scale=2, input_range=1))
    images = []
    for name, (h, w) in {"small": (20, 30), "exact": TILE, "large": (40, 50)}.items():
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), (random_image(h, w) * 255).astype(np.uint8))
        images.append(path)
    out_dir = tmp_path / "out" / "x2"
    records = up.upscale_files(model_path, images, out_dir, runtime="openvino")
    assert [r["path"] for r in records] == ["pad", "fit", "tile"]
    for record, (h, w) in zip(records, [(20, 30), TILE, (40, 50)]):
        assert record["size"] == [h, w] and record["output_size"] == [2 * h, 2 * w]
        written = cv2.imread(record["output"])
        assert written.shape == (2 * h, 2 * w, 3) and record["output"].endswith("_x2.png")
        assert record["seconds"] > 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["exact_x2.png", "large_x2.png",
                                                         "small_x2.png"]


def test_upscale_files_without_sidecar_and_missing_image(plain, tmp_path):
    _, fixed = plain
    model_path = tmp_path / "bare.onnx"
    onnx.save(fixed, str(model_path))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((10, 10, 3), np.uint8))
    with pytest.warns(UserWarning, match="input range"):
        records = up.upscale_files(model_path, [image], tmp_path)
    assert records[0]["output_size"] == [20, 20]
    with pytest.raises(UserError, match="no such image"):
        up.upscale_files(model_path, [tmp_path / "nope.png"], tmp_path)
    (tmp_path / "sub").mkdir()
    twin = tmp_path / "sub" / "a.png"
    twin.write_bytes(image.read_bytes())
    with pytest.raises(UserError, match="same output name"):
        up.upscale_files(model_path, [image, twin], tmp_path)
