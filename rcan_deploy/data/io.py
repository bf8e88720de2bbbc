"""Image files in and out. Inside the library images are HxWx3 **RGB** arrays.

Integer images keep the sample type they were stored with (uint8 or uint16); ``to_float`` maps them
to float32 in 0..1 and ``to_uint8`` maps back with MATLAB ``im2uint8`` rounding.
"""

from __future__ import annotations

import os
import struct
import sys
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..artifacts import atomic_path, io_error
from ..errors import UserError, os_reason as _reason

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
        raise UserError(f"{path}: cannot read ({_reason(exc)})") from None
    with quiet_native_stderr():  # libpng prints warnings (iCCP profiles, ...) from C
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    del data  # the encoded bytes: free them before any conversion
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
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second copy
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGRA -> RGB


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


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the block (Python's
    own ``sys.stderr`` is unaffected)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class PngWriter:
    """Write an 8-bit RGB PNG row band by row band (bounded memory), atomically: the file appears
    under its name only when all ``height`` rows were written and the block succeeded.

    OpenCV and Pillow encode whole images only; the PNG format itself is simple enough to
    stream: IHDR, then zlib-compressed rows (filter type 1, "Sub") in IDAT chunks, then IEND."""

    def __init__(self, path: str | Path, height: int, width: int) -> None:
        self.path, self.height, self.width = Path(path), height, width
        self.rows = 0

    def __enter__(self) -> "PngWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = open(tmp, "wb")
            self._file.write(_PNG_SIGNATURE)
            self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0))
        except OSError as exc:
            self._atomic.__exit__(type(exc), exc, None)
            raise io_error(self.path, "write", exc) from None
        self._zlib = zlib.compressobj(6)
        return self

    def write(self, rows: np.ndarray) -> None:
        """Append an (h, width, 3) uint8 band of rows."""
        if rows.dtype != np.uint8 or rows.shape[1:] != (self.width, 3):
            raise TypeError(f"expected (h, {self.width}, 3) uint8 rows, got {rows.dtype} "
                            f"{rows.shape}")
        filtered = np.empty((len(rows), self.width * 3 + 1), np.uint8)
        filtered[:, 0] = 1  # Sub: each byte minus the same channel of the pixel to its left
        flat = rows.reshape(len(rows), -1)
        filtered[:, 1:4] = flat[:, :3]
        filtered[:, 4:] = flat[:, 3:] - flat[:, :-3]
        self._chunk(b"IDAT", self._zlib.compress(filtered.tobytes()))
        self.rows += len(rows)

    def __exit__(self, kind, exc, trace) -> None:
        try:
            if kind is None:
                if self.rows != self.height:
                    raise RuntimeError(f"{self.path}: {self.rows} of {self.height} rows written")
                self._chunk(b"IDAT", self._zlib.flush())
                self._chunk(b"IEND", b"")
            self._file.close()
        except OSError as error:
            self._file.close()
            self._atomic.__exit__(type(error), error, None)
            raise io_error(self.path, "write", error) from None
        except BaseException as error:
            self._atomic.__exit__(type(error), error, None)
            raise
        self._atomic.__exit__(kind, exc, trace)

    def _chunk(self, kind: bytes, data: bytes) -> None:
        if kind == b"IDAT" and not data:
            return
        self._file.write(struct.pack(">I", len(data)) + kind + data
                         + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
