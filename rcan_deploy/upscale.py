"""Run a fixed-shape SR graph on images of any size: fit, pad or tile.

- Same size as the graph input: one run (``fit``).
- Smaller in both dimensions: pad bottom/right (reflect; edge where the pad is longer than the
  image) up to the graph shape, run once, crop the output (``pad``).
- Larger in a dimension: cover it with graph-sized tiles on a regular grid whose last tile is
  flush with the border, overlapping by ``overlap`` input pixels (a dimension smaller than the
  graph is padded as above). Each output pixel comes from the tile in whose centre part it lies:
  the seam between two tiles sits in the middle of their overlap (``tile``).

How the overlap is chosen: the receptive-field radius ``m`` of the graph
(:func:`rcan_deploy.graph_analysis.receptive_field`)
is how far, in input pixels, an output pixel can see. A seam in the middle of the overlap leaves
``overlap // 2`` pixels of real context on each side, so the default overlap is ``2 m`` rounded
up to a multiple of 8 and of the graph's total stride (tiles then sample a strided body on the
same grid as the whole image would), capped at a third of the tile. With that overlap the tiled
output of a model without global pooling equals whole-image inference exactly, except within
``m`` input pixels of a padded image border; with a smaller overlap it differs near the seams.

Models with global pooling (RCAN's channel attention averages each feature map over the whole
image) see different pooled statistics in every tile or padded image, so their output differs
slightly from whole-image inference everywhere, not only near seams and padding.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

from .backends import Runner, get_runner
from .data.io import read_image, to_float, to_uint8, write_image
from .errors import UserError
from .graph_analysis import ReceptiveField, receptive_field
from .onnx_utils import graph_scale, input_shape, load_model
from .record import read_record

_OVERLAP_ALIGN = 8


def default_overlap(field: ReceptiveField, graph_hw: tuple[int, int]) -> int:
    """Twice the margin, rounded up to a multiple of lcm(8, stride), capped at a third of the
    smaller graph side (see the module docstring)."""
    align = math.lcm(_OVERLAP_ALIGN, field.stride)
    wanted = math.ceil(2 * field.margin / align) * align
    return min(wanted, min(graph_hw) // 3 // align * align)


def upscale(runner: Runner, image: np.ndarray, graph_hw: tuple[int, int], scale: int,
            input_range: int, overlap: int | None = None,
            field: ReceptiveField | None = None) -> tuple[np.ndarray, dict]:
    """Super-resolve an HxWx3 float RGB image in 0..1 with an active runner whose graph takes
    1x3x``graph_hw`` inputs in 0..``input_range``.

    Returns the float32 (H*scale)x(W*scale)x3 RGB output in 0..1 (not clipped) and a record
    {path: fit|pad|tile, padded: [H, W], tiles, overlap}. Tiling needs the graph's receptive
    field: pass ``field`` or let it be computed from ``runner.model``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"expected an HxWx3 RGB image, got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    graph_h, graph_w = graph_hw
    if (height, width) == (graph_h, graph_w):
        return _run(runner, image, scale, input_range), _record("fit", image, 1, 0)
    if height <= graph_h and width <= graph_w:
        padded = _pad_to(image, graph_h, graph_w)
        output = _run(runner, padded, scale, input_range)
        return output[:height * scale, :width * scale], _record("pad", padded, 1, 0)
    if field is None:
        field = receptive_field(_as_proto(runner.model))
    overlap = _check_overlap(overlap, field, graph_hw)
    padded = _pad_to(image, _tiled_length(height, graph_h, field.stride),
                     _tiled_length(width, graph_w, field.stride))
    rows = _tiles(padded.shape[0], graph_h, overlap)
    cols = _tiles(padded.shape[1], graph_w, overlap)
    output = np.empty((padded.shape[0] * scale, padded.shape[1] * scale, 3), np.float32)
    for top, row_lo, row_hi in rows:
        for left, col_lo, col_hi in cols:
            tile = _run(runner, padded[top:top + graph_h, left:left + graph_w], scale, input_range)
            output[row_lo * scale:row_hi * scale, col_lo * scale:col_hi * scale] = tile[
                (row_lo - top) * scale:(row_hi - top) * scale,
                (col_lo - left) * scale:(col_hi - left) * scale]
    record = _record("tile", padded, len(rows) * len(cols), overlap)
    return output[:height * scale, :width * scale], record


def upscale_files(model_path: str | Path, image_paths: list[str | Path], out_dir: str | Path,
                  runtime: str = "ort", overlap: int | None = None) -> list[dict]:
    """Super-resolve image files with an ONNX SR graph; write 8-bit ``<stem>_x{scale}.png``
    files into ``out_dir`` (created if missing). Scale and input range come from the model's
    sidecar; a graph with a dynamic input shape runs each image whole.

    Returns one record per image: image, output, size [H, W], output_size, the upscale record
    (path, padded, tiles, overlap) and seconds."""
    image_paths = [Path(p) for p in image_paths]
    missing = [str(p) for p in image_paths if not p.is_file()]
    if missing:
        raise UserError(f"no such image: {', '.join(missing)}")
    stems = [p.stem for p in image_paths]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise UserError(f"images share a file name stem (same output name): {', '.join(clashes)}")
    model = load_model(model_path)
    scale, input_range = _scale_and_range(model, model_path)
    graph_hw = input_shape(model)[2:]
    fixed = all(isinstance(d, int) and d > 0 for d in graph_hw)
    field = receptive_field(model) if fixed else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with get_runner(runtime, model_path) as runner:
        for path in image_paths:
            image = to_float(read_image(path))
            start = time.perf_counter()
            output, record = upscale(runner, image, tuple(graph_hw) if fixed else image.shape[:2],
                                     scale, input_range, overlap, field)
            seconds = time.perf_counter() - start
            target = out_dir / f"{path.stem}_x{scale}.png"
            write_image(target, to_uint8(output))
            records.append({"image": str(path), "output": str(target),
                            "size": list(image.shape[:2]), "output_size": list(output.shape[:2]),
                            **record, "seconds": round(seconds, 4)})
    return records


def _as_proto(model) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _check_overlap(overlap: int | None, field: ReceptiveField, graph_hw: tuple[int, int]) -> int:
    if overlap is None:
        return default_overlap(field, graph_hw)
    if not 0 <= overlap < min(graph_hw):
        raise UserError(f"overlap {overlap}: expected 0 <= overlap < {min(graph_hw)} (tile side)")
    if overlap % field.stride:
        raise UserError(f"overlap {overlap}: must be a multiple of the graph stride {field.stride}")
    return overlap


def _tiled_length(length: int, tile: int, stride: int) -> int:
    """Length to pad a dimension to: the tile when shorter, else so that the flush last tile
    starts on the stride grid."""
    return tile if length <= tile else length + (tile - length) % stride


def _tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) per tile along one dimension: starts every tile - overlap,
    the last flush with the end; each seam in the middle of the two tiles' overlap."""
    step = tile - overlap
    count = max(math.ceil((length - tile) / step), 0) + 1
    starts = [min(i * step, length - tile) for i in range(count)]
    seams = [(nxt + prev + tile) // 2 for prev, nxt in zip(starts, starts[1:])]
    return list(zip(starts, [0, *seams], [*seams, length]))


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad bottom/right to height x width: reflect, or edge where reflecting cannot fill."""
    for axis, size in ((0, height), (1, width)):
        extra = size - image.shape[axis]
        if extra > 0:
            widths = [(0, 0)] * 3
            widths[axis] = (0, extra)
            image = np.pad(image, widths, mode="reflect" if extra < image.shape[axis] else "edge")
    return image


def _run(runner: Runner, image: np.ndarray, scale: int, input_range: int) -> np.ndarray:
    x = image.transpose(2, 0, 1)[None].astype(np.float32) * input_range
    y = runner.infer(x)
    expected = (1, 3, image.shape[0] * scale, image.shape[1] * scale)
    if y.shape != expected:
        raise UserError(f"graph output {list(y.shape)} for input {list(x.shape)}: expected "
                        f"{list(expected)} (x{scale})")
    return y[0].transpose(1, 2, 0) / input_range


def _record(path: str, padded: np.ndarray, tiles: int, overlap: int) -> dict:
    return {"path": path, "padded": list(padded.shape[:2]), "tiles": tiles, "overlap": overlap}


def _scale_and_range(model: onnx.ModelProto, model_path: str | Path) -> tuple[int, int]:
    """Scale (sidecar, else graph shapes) and input range (sidecar, else 1 with a warning)."""
    record = read_record(model_path)
    scale = graph_scale(model, record, model_path)
    input_range = record.input_range if record else None
    if input_range is None:
        warnings.warn(f"{model_path}: sidecar gives no input_range; assuming inputs in 0..1",
                      stacklevel=2)
        input_range = 1
    return scale, int(input_range)
