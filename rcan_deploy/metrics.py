"""PSNR and SSIM for super-resolution, in two protocols (DESIGN.md sections 4 and 5).

``standard`` (paper / BasicSR / MATLAB convention): the SR output is rounded and clipped to uint8,
``scale`` pixels are cropped on every border, and both metrics are computed on the BT.601 Y
channel (float, not rounded). SSIM uses an 11x11 Gaussian window (sigma 1.5) with 'valid'
borders, C1 = (0.01*255)^2, C2 = (0.03*255)^2 and sigma terms as E[x^2] - mu^2.

``vacc`` (VastModelZOO's RCAN table): the float SR output is clipped to 0..255 without rounding,
the HR image is resized (bilinear) to the SR size, and PSNR / SSIM are computed over the three
RGB channels with no border crop. Its numbers are not comparable with paper numbers.

All images are HxWx3 RGB arrays on the 0..255 scale.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import UserError

PROTOCOLS = ("standard", "vacc")

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0  # per 0..255 R, G, B
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
_WINDOW = cv2.getGaussianKernel(11, 1.5) @ cv2.getGaussianKernel(11, 1.5).T
_VALID = 5  # pixels the 11x11 window loses on each side


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 RGB image (uint8, or float on the 0..255 scale) as float64
    HxW on the 0..255 scale, not rounded: Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B
    in 0..1). The channel order is RGB (BasicSR's ``to_y_channel`` expects BGR)."""
    _check_rgb(img, "image")
    return img.astype(np.float64) @ _Y_WEIGHTS + 16.0


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool = True) -> float:
    """PSNR in dB of two HxWx3 RGB images; float input is rounded and clipped to uint8 first.

    ``crop_border`` pixels are dropped on every side; inf when the images are identical."""
    sr, hr = _standard_planes(sr, hr, crop_border, y_channel)
    return _psnr(sr, hr)


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool = True) -> float:
    """Gaussian SSIM of two HxWx3 RGB images (Y only, or the mean over R, G, B); float input
    is rounded and clipped to uint8 first; ``crop_border`` pixels dropped on every side."""
    sr, hr = _standard_planes(sr, hr, crop_border, y_channel)
    return _ssim(sr, hr)


def vacc_reference(hr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The vacc protocol's reference: ``hr`` resized (cv2 bilinear) to ``out_hw`` = (H, W)."""
    _check_rgb(hr, "HR image")
    height, width = out_hw
    if hr.shape[:2] == (height, width):
        return hr
    return cv2.resize(hr, (width, height), interpolation=cv2.INTER_LINEAR)


def vacc_psnr(sr_float: np.ndarray, hr: np.ndarray) -> float:
    """vacc-protocol PSNR: SR clipped to 0..255 (not rounded), all RGB channels, no crop."""
    return _psnr(*_vacc_planes(sr_float, hr))


def vacc_ssim(sr_float: np.ndarray, hr: np.ndarray) -> float:
    """vacc-protocol SSIM: SR clipped to 0..255 (not rounded), mean over R, G, B, no crop."""
    return _ssim(*_vacc_planes(sr_float, hr))


def evaluate(sr: np.ndarray, hr: np.ndarray, scale: int, protocol: str = "standard") -> dict:
    """PSNR and SSIM of a float SR output (HxWx3 RGB, 0..255 scale) against a uint8 HR image.

    ``standard``: Y channel, ``scale`` pixels cropped, SR rounded; ``vacc``: HR resized to the
    SR size, RGB, no crop, SR only clipped."""
    if protocol == "standard":
        return {"psnr": psnr(sr, hr, scale), "ssim": ssim(sr, hr, scale)}
    if protocol == "vacc":
        reference = vacc_reference(hr, sr.shape[:2])
        return {"psnr": vacc_psnr(sr, reference), "ssim": vacc_ssim(sr, reference)}
    raise UserError(f"unknown metric protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def _check_rgb(img: np.ndarray, what: str) -> None:
    if img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"{what}: expected an HxWx3 RGB array, got shape {tuple(img.shape)}")


def _check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    _check_rgb(sr, "SR image")
    _check_rgb(hr, "HR image")
    if sr.shape != hr.shape:
        raise UserError(f"SR image {sr.shape[1]}x{sr.shape[0]} and HR image "
                        f"{hr.shape[1]}x{hr.shape[0]} differ in size (HR not mod-cropped?)")


def _as_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    return np.clip(np.round(img.astype(np.float64)), 0, 255).astype(np.uint8)


def _standard_planes(sr, hr, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (Y: HxW, else HxWx3), uint8-quantised and border-cropped."""
    _check_pair(sr, hr)
    if crop_border < 0 or 2 * crop_border >= min(sr.shape[:2]):
        raise UserError(f"crop border {crop_border} does not fit an image of "
                        f"{sr.shape[1]}x{sr.shape[0]}")
    planes = []
    for img in (_as_uint8(sr), _as_uint8(hr)):
        img = img[crop_border:img.shape[0] - crop_border, crop_border:img.shape[1] - crop_border]
        planes.append(rgb_to_y(img) if y_channel else img.astype(np.float64))
    return planes[0], planes[1]


def _vacc_planes(sr_float: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _check_pair(sr_float, hr)
    return np.clip(sr_float.astype(np.float64), 0, 255), hr.astype(np.float64)


def _psnr(sr: np.ndarray, hr: np.ndarray) -> float:
    mse = np.mean((sr - hr) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def _ssim(sr: np.ndarray, hr: np.ndarray) -> float:
    """Mean SSIM of float64 planes HxW or HxWxC (channels averaged)."""
    if min(sr.shape[:2]) <= 2 * _VALID:
        raise UserError(f"SSIM needs images larger than 11x11, got {sr.shape[1]}x{sr.shape[0]}")
    if sr.ndim == 2:
        return _ssim_plane(sr, hr)
    return float(np.mean([_ssim_plane(sr[..., c], hr[..., c]) for c in range(sr.shape[2])]))


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    def blur(plane: np.ndarray) -> np.ndarray:
        return cv2.filter2D(plane, -1, _WINDOW)[_VALID:-_VALID, _VALID:-_VALID]

    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / (
        (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))
    return float(ssim_map.mean())
