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
from typing import Iterator

import numpy as np
import onnx

from .artifacts import check_folder_creatable, check_not_input
from .backends import Runner, get_runner
from .data.io import PngWriter, read_image, to_float, to_uint8
from .errors import UserError
from .graph_analysis import ReceptiveField, receptive_field, sr_graph
from .onnx_utils import load_model
from .record import read_record

_OVERLAP_ALIGN = 8
_ROWS_PER_WRITE = 16


def default_overlap(field: ReceptiveField, graph_hw: tuple[int, int]) -> int:
    """Twice the margin, rounded up to a multiple of lcm(8, stride), capped at a third of the
    smaller graph side (see the module docstring)."""
    align = math.lcm(_OVERLAP_ALIGN, field.stride)
    wanted = math.ceil(2 * field.margin / align) * align
    return min(wanted, min(graph_hw) // 3 // align * align)


def upscale_bands(runner: Runner, image: np.ndarray, graph_hw: tuple[int, int], scale: int,
                  input_range: int, overlap: int | None = None,
                  field: ReceptiveField | None = None) -> tuple[dict, Iterator[np.ndarray]]:
    """Super-resolve an HxWx3 RGB image (uint8, uint16 or float in 0..1) with an active runner
    whose graph takes 1x3x``graph_hw`` inputs in 0..``input_range``, one row of tiles at a time.

    Returns the record {path: fit|pad|tile, padded: [H, W], tiles, overlap} and an iterator of
    float32 output bands (rows of the (H*scale)x(W*scale)x3 RGB output in 0..1, not clipped, top
    to bottom). Only the current tile and band are held in float: the memory beyond the image is
    one band, about graph height x scale x W x scale x 12 bytes. Tiling needs the graph's
    receptive field: pass ``field`` or let it be computed from ``runner.model``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"expected an HxWx3 RGB image, got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    graph_h, graph_w = graph_hw
    if height <= graph_h and width <= graph_w:
        path = "fit" if (height, width) == (graph_h, graph_w) else "pad"
        padded_hw = (graph_h, graph_w)

        def whole() -> Iterator[np.ndarray]:
            tile = _window(image, 0, 0, graph_h, graph_w, padded_hw)
            yield _run(runner, tile, scale, input_range)[:height * scale, :width * scale]

        return _record(path, padded_hw, 1, 0), whole()
    if field is None:
        field = receptive_field(_as_proto(runner.model))
    overlap = _check_overlap(overlap, field, graph_hw)
    padded_hw = (_tiled_length(height, graph_h, field.stride),
                 _tiled_length(width, graph_w, field.stride))
    rows = _tiles(padded_hw[0], graph_h, overlap)
    cols = _tiles(padded_hw[1], graph_w, overlap)

    def bands() -> Iterator[np.ndarray]:
        for top, row_lo, row_hi in rows:
            row_hi = min(row_hi, height)
            if row_lo >= row_hi:
                continue
            band = np.empty(((row_hi - row_lo) * scale, width * scale, 3), np.float32)
            for left, col_lo, col_hi in cols:
                col_hi = min(col_hi, width)
                if col_lo >= col_hi:
                    continue
                tile = _run(runner, _window(image, top, left, graph_h, graph_w, padded_hw),
                            scale, input_range)
                band[:, col_lo * scale:col_hi * scale] = tile[
                    (row_lo - top) * scale:(row_hi - top) * scale,
                    (col_lo - left) * scale:(col_hi - left) * scale]
            yield band

    return _record("tile", padded_hw, len(rows) * len(cols), overlap), bands()


def upscale(runner: Runner, image: np.ndarray, graph_hw: tuple[int, int], scale: int,
            input_range: int, overlap: int | None = None,
            field: ReceptiveField | None = None) -> tuple[np.ndarray, dict]:
    """The whole float32 output of :func:`upscale_bands` and its record."""
    record, bands = upscale_bands(runner, image, graph_hw, scale, input_range, overlap, field)
    return np.concatenate(list(bands), axis=0), record


def upscale_files(model_path: str | Path, image_paths: list[str | Path], out_dir: str | Path,
                  runtime: str = "ort", overlap: int | None = None) -> list[dict]:
    """Super-resolve image files with an ONNX SR graph; write 8-bit ``<stem>_x{scale}.png``
    files into ``out_dir`` (created if missing; removed again when a failure leaves it empty).
    Scale and input range come from the model's sidecar; a graph with a dynamic input shape
    runs each image whole. Outputs are streamed band by band (see :func:`upscale_bands`).

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
    graph = sr_graph(model_path)
    scale, input_range = _scale_and_range(graph, model_path)
    graph_hw = graph.input_shape[2:]
    field = receptive_field(graph.model) if graph.fixed else None
    out_dir = Path(out_dir)
    targets = [out_dir / f"{path.stem}_x{scale}.png" for path in image_paths]
    check_folder_creatable(out_dir)
    for target in targets:
        check_not_input(target, [model_path, *image_paths])
    created = _make_folder(out_dir)
    records = []
    try:
        with get_runner(runtime, model_path) as runner:
            for path, target in zip(image_paths, targets):
                image = read_image(path)
                start = time.perf_counter()
                hw = tuple(graph_hw) if graph.fixed else image.shape[:2]
                record, bands = upscale_bands(runner, image, hw, scale, input_range, overlap,
                                              field)
                out_hw = (image.shape[0] * scale, image.shape[1] * scale)
                with PngWriter(target, *out_hw) as png:
                    for band in bands:
                        for row in range(0, len(band), _ROWS_PER_WRITE):  # small 8-bit copies
                            png.write(to_uint8(band[row:row + _ROWS_PER_WRITE]))
                records.append({"image": str(path), "output": str(target),
                                "size": list(image.shape[:2]), "output_size": list(out_hw),
                                **record, "seconds": round(time.perf_counter() - start, 4)})
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return records


def _make_folder(folder: Path) -> bool:
    """Create ``folder`` (and parents); True when it did not exist. One-line UserError when it
    cannot be made (a file in the way, no permission)."""
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"--out {folder}: cannot create the folder "
                        f"({exc.strerror or type(exc).__name__})") from None
    return True


def _window(image: np.ndarray, top: int, left: int, height: int, width: int,
            padded_hw: tuple[int, int]) -> np.ndarray:
    """The ``height`` x ``width`` window at (top, left) of the image padded bottom/right to
    ``padded_hw`` (reflect, or edge where reflecting cannot fill), as float32 in 0..1; only the
    window is copied."""
    rows = _pad_index(np.arange(top, top + height), image.shape[0], padded_hw[0])
    cols = _pad_index(np.arange(left, left + width), image.shape[1], padded_hw[1])
    return to_float(image[np.ix_(rows, cols)])


def _pad_index(index: np.ndarray, length: int, padded: int) -> np.ndarray:
    """Source indices of padded positions: reflect (``numpy.pad`` mode) when the pad is shorter
    than the image, else edge."""
    if padded - length < length:
        return np.where(index < length, index, 2 * (length - 1) - index)
    return np.minimum(index, length - 1)


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


def _run(runner: Runner, image: np.ndarray, scale: int, input_range: int) -> np.ndarray:
    x = image.transpose(2, 0, 1)[None].astype(np.float32) * input_range
    y = runner.infer(x)
    expected = (1, 3, image.shape[0] * scale, image.shape[1] * scale)
    if y.shape != expected:
        raise UserError(f"graph output {list(y.shape)} for input {list(x.shape)}: expected "
                        f"{list(expected)} (x{scale})")
    return y[0].transpose(1, 2, 0) / input_range


def _record(path: str, padded_hw: tuple[int, int], tiles: int, overlap: int) -> dict:
    return {"path": path, "padded": list(padded_hw), "tiles": tiles, "overlap": overlap}


def _scale_and_range(graph, model_path: str | Path) -> tuple[int, int]:
    """Scale (sidecar, checked against the graph's shapes, else the shapes) and input range
    (sidecar, else 1 with a warning)."""
    record = read_record(model_path)
    where = f"{model_path}.json" if record and record.scale else "--scale"
    scale = graph.check_scale(record.scale if record else None, where)
    input_range = record.input_range if record else None
    if input_range is None:
        warnings.warn(f"{model_path}: no sidecar gives its input range; assuming inputs in 0..1",
                      stacklevel=3)
        input_range = 1
    return scale, int(input_range)
