"""Image files in and out. Inside the library images are HxWx3 **RGB** arrays.

Integer images keep the sample type they were stored with (uint8 or uint16); ``to_float`` maps them
to float32 in 0..1 and ``to_uint8`` maps back with MATLAB ``im2uint8`` rounding.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import cv2
import numpy as np

from ..artifacts import atomic_path
from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 RGB, uint8 or uint16 as stored; gray repeated, alpha dropped."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # cv2.imread cannot report why a file failed
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected an image file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise UserError(f"{path}: not a readable image (PNG, JPEG, BMP or TIFF expected)")
    if img.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path}: {img.dtype} samples are not supported (8- or 16-bit expected)")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    channels = img.shape[2]
    if channels in (2, 4):
        warnings.warn(f"{path}: alpha channel dropped", stacklevel=2)
    if channels <= 2:
        return np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file; PNG sizes come from the header without decoding."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(24)
    except OSError:
        header = b""  # read_image reports the problem
    if header[:8] == _PNG_SIGNATURE and header[12:16] == b"IHDR":
        width, height = struct.unpack(">II", header[16:24])
        return height, width
    return read_image(path).shape[:2]


def to_float(img: np.ndarray) -> np.ndarray:
    """float32 in 0..1: uint8 / 255, uint16 / 65535; float images pass through as float32."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535)
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32, copy=False)
    raise TypeError(f"expected a uint8, uint16 or float image, got {img.dtype}")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """MATLAB ``im2uint8`` for float images in 0..1: scale by 255, saturate, round half up."""
    scaled = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0), 0.0, 1.0) * 255.0
    return np.floor(scaled + 0.5).astype(np.uint8)


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write an HxWx3 RGB uint8 or uint16 image as PNG, atomically (temporary file + rename)."""
    if img.dtype not in (np.uint8, np.uint16) or img.ndim != 3 or img.shape[2] != 3:
        raise TypeError(f"expected an HxWx3 uint8 or uint16 image, got {img.dtype} {img.shape}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        encoded.tofile(tmp)
