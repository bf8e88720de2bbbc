"""MATLAB ``imresize(img, scale, 'bicubic')`` (antialiasing on), reproduced exactly.

The SR convention (DESIGN.md section 5) makes LR images with MATLAB's bicubic resize of the
mod-cropped HR image; other downsamplers give visibly different LR images and worse SR numbers.
Per dimension, with kernel ``cubic`` (Keys, a = -0.5):

- output length ``ceil(in * scale)``; kernel width 4, or ``4 / scale`` with weights
  ``scale * cubic(scale * d)`` when downscaling;
- output pixel ``x`` (1-based) samples input coordinate ``u = x / scale + 0.5 * (1 - 1 / scale)``
  with taps ``floor(u - width / 2) + [0, ceil(width) + 2)``; weights are normalised per output
  pixel, tap columns that are zero for every output pixel are dropped, and indices outside the
  image are mirrored (symmetric padding);
- dimensions are resized in order of increasing scale factor (rows first when equal).

Integer images are resized like MATLAB does them: every pass is computed in float64 and rounded and
saturated to the input type before the next pass. Float images stay float64 between passes and
come back as float32. Each pass is a product with the banded (out x in) weight matrix, cut into
dense bands of a few output pixels and applied with ``numpy.einsum`` (single-threaded, no BLAS
thread oversubscription): a 2040x1356 RGB image takes about 0.2 s at 1/2.
"""

from __future__ import annotations

import math

import numpy as np

_KERNEL_WIDTH = 4.0
_BLOCK_ROWS = 8  # output pixels per dense band of the weight matrix


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0)))


def _contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices, both (out_length, taps), for one dimension."""
    antialias = scale < 1.0
    width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)  # 1-based, as in MATLAB
    distance = u[:, None] - indices
    weights = scale * _cubic(scale * distance) if antialias else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]
    keep = np.any(weights != 0.0, axis=0)
    return weights[:, keep], indices[:, keep]


_Band = tuple[int, int, int, np.ndarray]


def _band_blocks(weights: np.ndarray, indices: np.ndarray) -> list[_Band]:
    """The (out x in) weight matrix as dense bands ``(out_start, in_start, in_stop, band)``."""
    blocks = []
    for start in range(0, weights.shape[0], _BLOCK_ROWS):
        block_idx = indices[start:start + _BLOCK_ROWS]
        lo, hi = int(block_idx.min()), int(block_idx.max()) + 1
        band = np.zeros((block_idx.shape[0], hi - lo))
        rows = np.repeat(np.arange(block_idx.shape[0]), block_idx.shape[1])
        block_weights = weights[start:start + _BLOCK_ROWS].ravel()
        np.add.at(band, (rows, (block_idx - lo).ravel()), block_weights)
        blocks.append((start, lo, hi, band))
    return blocks


def _resize_rows(img: np.ndarray, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Resize axis 0 of a C-contiguous float64 array with one dimension's weights."""
    flat = img.reshape(img.shape[0], -1)
    out = np.empty((weights.shape[0], flat.shape[1]))
    for start, lo, hi, band in _band_blocks(weights, indices):
        np.einsum("ok,kn->on", band, flat[lo:hi], out=out[start:start + band.shape[0]])
    return out.reshape((weights.shape[0],) + img.shape[1:])


def imresize(img: np.ndarray, scale: float | None = None,
             output_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Resize an HxW or HxWxC image like MATLAB ``imresize(img, scale, 'bicubic')``.

    Give either ``scale`` (one factor for both dimensions; output ``ceil(in * scale)``) or
    ``output_shape`` ``(height, width)``. uint8/uint16 in, same type out (each pass rounded and
    saturated, as MATLAB does); float in (0..1), float32 out.
    """
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if img.ndim not in (2, 3) or min(img.shape) < 1:
        raise ValueError(f"expected a non-empty HxW or HxWxC image, got shape {img.shape}")
    integer = np.issubdtype(img.dtype, np.integer)
    if integer and img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"integer images must be uint8 or uint16, got {img.dtype}")
    in_shape = img.shape[:2]
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        out_shape = tuple(int(math.ceil(scale * n)) for n in in_shape)
    else:
        out_shape = tuple(int(n) for n in output_shape)
        if len(out_shape) != 2 or min(out_shape) < 1:
            raise ValueError(f"output_shape must be (height, width) >= 1, got {output_shape}")
        scales = tuple(o / i for o, i in zip(out_shape, in_shape))

    info = np.iinfo(img.dtype) if integer else None
    out = img.astype(np.float64)
    for axis in sorted((0, 1), key=lambda a: scales[a]):  # stable: rows first on ties
        weights, indices = _contributions(in_shape[axis], out_shape[axis], scales[axis])
        if axis == 0:
            out = _resize_rows(out, weights, indices)
        else:
            out = _resize_rows(np.ascontiguousarray(out.swapaxes(0, 1)), weights, indices)
            out = np.ascontiguousarray(out.swapaxes(0, 1))
        if integer:
            out = np.floor(np.clip(out, info.min, info.max) + 0.5)
    return out.astype(img.dtype) if integer else out.astype(np.float32)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop height and width (from the bottom and right) to multiples of ``scale``."""
    height, width = img.shape[:2]
    return img[: height - height % scale, : width - width % scale]
