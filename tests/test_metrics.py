"""PSNR/SSIM against independent formula code (numpy + scipy), edge cases, vacc protocol."""

import math

import cv2
import numpy as np
import pytest
from scipy.signal import convolve2d

from rcan_deploy import metrics
from rcan_deploy.errors import UserError


def reference_y(rgb_uint8):
    r, g, b = (rgb_uint8[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 65.481 * r + 128.553 * g + 24.966 * b + 16.0


def gaussian_window(size=11, sigma=1.5):
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def reference_ssim_plane(x, y):
    window = gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(a):
        return convolve2d(a, window, mode="valid")

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


def reference_psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    hr = cv2.GaussianBlur(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), (5, 5), 1.0)
    noise = rng.normal(0, 6, hr.shape)
    sr = np.clip(hr.astype(np.float64) + noise, 0, 255)  # float SR output
    return sr, hr


def test_rgb_to_y_matches_bt601_formula_and_is_rgb_order():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_allclose(metrics.rgb_to_y(img), reference_y(img), atol=1e-12)
    as_float = metrics.rgb_to_y(img.astype(np.float32))
    np.testing.assert_allclose(as_float, reference_y(img), atol=1e-4)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert metrics.rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    assert metrics.rgb_to_y(red[..., ::-1])[0, 0] == pytest.approx(16 + 24.966)  # BGR reads blue


def test_psnr_y_matches_reference(pair):
    sr, hr = pair
    sr8 = np.clip(np.round(sr), 0, 255).astype(np.uint8)
    crop = 2
    expected = reference_psnr(reference_y(sr8)[crop:-crop, crop:-crop],
                              reference_y(hr)[crop:-crop, crop:-crop])
    assert metrics.psnr(sr, hr, crop) == pytest.approx(expected, abs=1e-10)
    assert metrics.psnr(sr8, hr, crop) == pytest.approx(expected, abs=1e-10)


def test_ssim_matches_scipy_valid_convolution(pair):
    sr, hr = pair
    sr8 = np.clip(np.round(sr), 0, 255).astype(np.uint8)
    crop = 3
    ys, yh = (reference_y(a)[crop:-crop, crop:-crop] for a in (sr8, hr))
    assert metrics.ssim(sr, hr, crop) == pytest.approx(reference_ssim_plane(ys, yh), abs=1e-9)
    rgb = np.mean([reference_ssim_plane(sr8[crop:-crop, crop:-crop, c].astype(np.float64),
                                        hr[crop:-crop, crop:-crop, c].astype(np.float64))
                   for c in range(3)])
    assert metrics.ssim(sr, hr, crop, y_channel=False) == pytest.approx(rgb, abs=1e-9)


def test_identical_images_give_inf_psnr_and_ssim_one(pair):
    _, hr = pair
    assert metrics.psnr(hr, hr, 2) == math.inf
    assert metrics.ssim(hr, hr, 2) == pytest.approx(1.0, abs=1e-12)
    assert metrics.vacc_psnr(hr.astype(np.float32), hr) == math.inf


@pytest.mark.parametrize("shift", [1, 3, 10])
def test_constant_shift_gives_exact_psnr(shift):
    hr = np.full((20, 20, 3), 100, np.uint8)
    hr[::2] = 50
    sr = hr + np.uint8(shift)
    assert metrics.psnr(sr, hr, 4, y_channel=False) == pytest.approx(20 * math.log10(255 / shift),
                                                                     abs=1e-12)


def test_border_crop_ignores_border_only_differences(pair):
    _, hr = pair
    sr = hr.copy()
    sr[:2] = 255 - sr[:2]
    sr[:, -2:] = 0
    assert metrics.psnr(sr, hr, 2) == math.inf
    assert metrics.psnr(sr, hr, 1) < 40
    assert metrics.ssim(sr, hr, 2) == pytest.approx(1.0)
    assert metrics.ssim(sr, hr, 0) < 1.0


def test_float_sr_is_rounded_in_standard_protocol_only(pair):
    _, hr = pair
    sr = hr.astype(np.float64) + 0.4  # rounds back to hr
    assert metrics.psnr(sr, hr, 2) == math.inf
    assert metrics.vacc_psnr(sr, hr) == pytest.approx(20 * math.log10(255 / 0.4))


def test_vacc_protocol_known_case():
    hr = np.zeros((32, 40, 3), np.uint8)
    hr[:, 20:] = 200
    sr = np.full((32, 40, 3), 0.0)
    sr[:, 20:] = 300.0  # clipped to 255 without rounding
    sr[0, 0, 0] = -7.0  # clipped to 0
    assert metrics.vacc_psnr(sr, hr) == pytest.approx(10 * math.log10(255**2 / (55**2 / 2)))
    clipped = np.clip(sr, 0, 255)
    expected = np.mean([reference_ssim_plane(clipped[..., c], hr[..., c].astype(np.float64))
                        for c in range(3)])
    assert metrics.vacc_ssim(sr, hr) == pytest.approx(expected, abs=1e-9)


def test_vacc_reference_resizes_bilinear_and_evaluate_dispatches(pair):
    sr, hr = pair
    big = metrics.vacc_reference(hr, (80, 96))
    np.testing.assert_array_equal(big, cv2.resize(hr, (96, 80), interpolation=cv2.INTER_LINEAR))
    sr_big = cv2.resize(sr, (96, 80), interpolation=cv2.INTER_CUBIC)
    result = metrics.evaluate(sr_big, hr, 2, "vacc")
    assert result == {"psnr": metrics.vacc_psnr(sr_big, big),
                      "ssim": metrics.vacc_ssim(sr_big, big)}
    standard = metrics.evaluate(sr, hr, 2, "standard")
    assert standard == {"psnr": metrics.psnr(sr, hr, 2), "ssim": metrics.ssim(sr, hr, 2)}


def test_user_errors(pair):
    sr, hr = pair
    with pytest.raises(UserError, match="differ in size"):
        metrics.psnr(sr[:-1], hr, 2)
    with pytest.raises(UserError, match="protocol"):
        metrics.evaluate(sr, hr, 2, "matlab")
    with pytest.raises(UserError, match="HxWx3"):
        metrics.rgb_to_y(hr[..., 0])
