"""MATLAB bicubic imresize: against a plain loop of the DESIGN.md section 5 formula and hand values."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from rcan_deploy.data import imresize, mod_crop


def _cubic(x):
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _mirror(index_1based, length):
    k = (index_1based - 1) % (2 * length)
    return k if k < length else 2 * length - 1 - k


def _taps(in_length, out_length, scale):
    """Per output pixel: list of (0-based input index, weight), all-zero tap columns dropped."""
    width = 4 / scale if scale < 1 else 4
    rows = []
    for x in range(1, out_length + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        raw = []
        for j in range(math.ceil(width) + 2):
            d = u - (left + j)
            raw.append((left + j, scale * _cubic(scale * d) if scale < 1 else _cubic(d)))
        total = sum(w for _, w in raw)
        rows.append([(_mirror(i, in_length), w / total) for i, w in raw])
    keep = [j for j in range(len(rows[0])) if any(row[j][1] != 0 for row in rows)]
    return [[row[j] for j in keep] for row in rows]


def _reference(img, scales, out_shape, integer):
    """Straightforward loops: one dimension at a time, smaller scale first (rows on ties)."""
    out = img.astype(np.float64)
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        taps = _taps(out.shape[axis], out_shape[axis], scales[axis])
        moved = np.moveaxis(out, axis, 0)
        result = np.zeros((out_shape[axis],) + moved.shape[1:])
        for o, row in enumerate(taps):
            for pos in np.ndindex(*moved.shape[1:]):
                acc = 0.0
                for i, w in row:
                    acc += w * moved[(i,) + pos]
                result[(o,) + pos] = acc
        out = np.moveaxis(result, 0, axis)
        if integer:
            out = np.floor(np.clip(out, 0, 255) + 0.5)
    return out


def _astronaut_crop(height, width):
    import skimage

    path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    return np.ascontiguousarray(cv2.imread(str(path))[200:200 + height, 180:180 + width, ::-1])


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2])
def test_float_matches_loop_reference(scale):
    img = np.random.default_rng(1).random((13, 17, 3))
    out = imresize(img, scale)
    expected_shape = (math.ceil(13 * scale), math.ceil(17 * scale))
    ref = _reference(img, (scale, scale), expected_shape, integer=False)
    assert out.dtype == np.float32 and out.shape == expected_shape + (3,)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2])
def test_uint8_matches_loop_reference_with_per_pass_rounding(scale):
    img = _astronaut_crop(24, 30)
    out = imresize(img, scale)
    ref = _reference(img, (scale, scale), out.shape[:2], integer=True)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref.astype(np.uint8))
    # per-pass rounding stays within 1 level of the float path
    via_float = np.floor(np.clip(imresize(img / 255.0, scale), 0, 1) * 255 + 0.5)
    assert np.abs(out.astype(int) - via_float.astype(int)).max() <= 1


def test_output_shape_with_unequal_scales_resizes_smaller_scale_first():
    img = _astronaut_crop(20, 24)
    out = imresize(img, output_shape=(7, 15))
    ref = _reference(img, (7 / 20, 15 / 24), (7, 15), integer=True)
    np.testing.assert_array_equal(out, ref.astype(np.uint8))


def test_hand_computed_one_dimensional_values():
    # 1/2: u = 1.5, 3.5; normalised weights 0.5*cubic(0.5*d) with mirrored taps (by hand).
    column = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
    np.testing.assert_array_equal(imresize(column, 0.5).ravel(), [1.4609375, 3.5390625])
    np.testing.assert_array_equal(imresize(column.T, 0.5).ravel(), [1.4609375, 3.5390625])
    # x2: u = 0.75, 1.25, 1.75, 2.25; cubic weights (-0.0234375, 0.2265625, 0.8671875, -0.0703125)
    pair = np.array([1.0, 3.0]).reshape(2, 1)
    upscaled = imresize(pair, 2)  # 4x2: the width of 1 becomes 2 identical columns
    np.testing.assert_array_equal(upscaled[:, 0], [0.8125, 1.40625, 2.59375, 3.1875])
    np.testing.assert_array_equal(upscaled[:, 1], upscaled[:, 0])


def test_constant_image_stays_constant_and_shapes_follow_ceil():
    img = np.full((1356, 2040, 3), 77, np.uint8)
    for scale, shape in ((1 / 2, (678, 1020)), (1 / 3, (452, 680)), (1 / 4, (339, 510))):
        out = imresize(img, scale)
        assert out.shape == shape + (3,) and (out == 77).all()
    assert imresize(np.zeros((7, 5)), 1 / 2).shape == (4, 3)


def test_rejects_bad_arguments():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        imresize(img)
    with pytest.raises(ValueError):
        imresize(img, 0.5, output_shape=(4, 4))
    with pytest.raises(ValueError):
        imresize(img.astype(np.int32), 0.5)


def test_mod_crop():
    img = np.zeros((13, 17, 3))
    assert mod_crop(img, 4).shape == (12, 16, 3)
    assert mod_crop(img, 3).shape == (12, 15, 3)
