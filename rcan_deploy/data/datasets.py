"""Image-pair sets for SR evaluation and calibration.

``get_dataset`` knows four named sets, defined in ``calibration/sets.yaml``:

- ``div2k_valid`` / ``div2k_train``: the DIV2K layout under a data root (``data_root``, else
  ``$RCAN_DEPLOY_DATA``, else ``~/.cache/rcan_deploy/data``); LR images come from
  ``DIV2K_*_LR_bicubic/X<s>/`` when that folder exists, else they are made from the HR images;
- ``samples``: natural colour photographs inside the installed scikit-image package, with a fixed
  ``train`` / ``heldout`` split;
- ``photos``: 41 photographs (1-20 MP) from Debian packages, installed under the data root by
  ``rcan-deploy data fetch photos``, with a fixed ``calib`` / ``val`` / ``test`` split;

and any folder of images (HR only, or ``HR/`` with ``LR/``, ``LR/X<s>/`` or ``LR_bicubic/X<s>/``).

HR images are mod-cropped to the scale. Missing LR images are made with MATLAB bicubic
(``imresize(hr, 1/scale)`` on the stored integer image, as MATLAB makes DIV2K's own LR files) and
cached as PNG under ``$RCAN_DEPLOY_CACHE`` (default ``~/.cache/rcan_deploy``) in
``lr/<set>/X<s>/``; a cache entry carries the HR file's size and mtime in its name, so a changed
HR image is made again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from ..errors import UserError, os_reason as _reason
from .imresize import imresize, mod_crop
from .io import IMAGE_SUFFIXES, image_size, read_image, to_float, write_image

DIV2K_SETS = ("div2k_valid", "div2k_train")
NAMED_SETS = (*DIV2K_SETS, "samples", "photos")
FETCHABLE_SETS = (*DIV2K_SETS, "photos")  # what `rcan-deploy data fetch` installs
# Splits by set and the role each plays: "calibration" (PTQ statistics), "selection" (choosing a
# recipe or mixed precision), "heldout" (evaluation only).
SPLIT_ROLES = {
    "samples": {"calibration": "train", "heldout": "heldout"},
    "photos": {"calibration": "calib", "selection": "val", "heldout": "test"},
}
# default_set_name takes the first of these that is present; the last one is the fallback.
DEFAULT_SETS = ("div2k_valid", "photos", "samples")
LR_FROM_FILES = "files"
LR_GENERATED = "matlab-bicubic"


def default_data_root() -> Path:
    """Where named data sets live: ``$RCAN_DEPLOY_DATA``, else ``~/.cache/rcan_deploy/data``."""
    env = os.environ.get("RCAN_DEPLOY_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rcan_deploy" / "data"


def default_cache_root() -> Path:
    """Cache root (made LR images, crops): ``$RCAN_DEPLOY_CACHE``, else ``~/.cache/rcan_deploy``."""
    env = os.environ.get("RCAN_DEPLOY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rcan_deploy"


@lru_cache(maxsize=1)
def set_definitions() -> dict[str, Any]:
    """The parsed ``calibration/sets.yaml`` (shipped as ``rcan_deploy/calibration_sets.yaml``)."""
    text = resources.files("rcan_deploy").joinpath("calibration_sets.yaml").read_text()
    return yaml.safe_load(text)


@dataclass(frozen=True)
class ImagePair:
    """One HR image and where its LR image comes from (a file, or MATLAB bicubic of the HR)."""

    name: str
    hr_path: Path
    scale: int
    lr_path: Path | None = None
    lr_cache_dir: Path | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lr, hr)`` float32 RGB in 0..1; HR mod-cropped, LR exactly HR size / scale."""
        hr_full = read_image(self.hr_path)
        hr = mod_crop(hr_full, self.scale)
        if self.lr_path is None:
            return to_float(self._generated_lr(hr)), to_float(hr)
        lr = read_image(self.lr_path)
        height, width = hr_full.shape[:2]
        low = (height // self.scale, width // self.scale)
        high = (-(-height // self.scale), -(-width // self.scale))
        if not (low[0] <= lr.shape[0] <= high[0] and low[1] <= lr.shape[1] <= high[1]):
            raise UserError(f"{self.lr_path}: LR size {lr.shape[1]}x{lr.shape[0]} does not match "
                            f"{self.hr_path.name} ({width}x{height}) at scale {self.scale}")
        return to_float(lr[: low[0], : low[1]]), to_float(hr)

    def load_lr(self) -> np.ndarray:
        """The LR image alone (file as stored, or made and cached), float32 RGB in 0..1."""
        if self.lr_path is not None:
            return to_float(read_image(self.lr_path))
        cached = self._cache_file()
        if cached is not None and cached.is_file():
            return to_float(read_image(cached))
        return to_float(self._generated_lr(mod_crop(read_image(self.hr_path), self.scale)))

    def lr_size(self) -> tuple[int, int]:
        """(height, width) of the LR image, from file headers where possible."""
        if self.lr_path is not None:
            return image_size(self.lr_path)
        height, width = image_size(self.hr_path)
        return height // self.scale, width // self.scale

    def _cache_file(self) -> Path | None:
        if self.lr_cache_dir is None:
            return None
        try:
            stat = self.hr_path.stat()
        except OSError:
            return None  # reading the HR image reports the problem
        return self.lr_cache_dir / f"{self.name}x{self.scale}.{stat.st_size}-{stat.st_mtime_ns}.png"

    def _generated_lr(self, hr: np.ndarray) -> np.ndarray:
        """MATLAB bicubic LR of the (integer, mod-cropped) HR image, through the cache."""
        cached = self._cache_file()
        if cached is not None and cached.is_file():
            return read_image(cached)
        lr = imresize(hr, 1.0 / self.scale)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                prefix = f"{self.name}x{self.scale}"
                for stale in cached.parent.iterdir():  # entries made from older versions of the HR
                    if stale.suffix == ".png" and stale.name.rsplit(".", 2)[0] == prefix:
                        stale.unlink(missing_ok=True)
                write_image(cached, lr)
            except OSError as exc:
                raise UserError(f"{cached.parent}: cannot write the LR cache ({_reason(exc)}); "
                                "set RCAN_DEPLOY_CACHE to a writable folder") from None
        return lr


@dataclass(frozen=True)
class Dataset:
    """An ordered set of image pairs at one scale."""

    name: str
    root: Path
    scale: int
    pairs: tuple[ImagePair, ...]
    lr_source: str
    split: str | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ImagePair]:
        return iter(self.pairs)

    def __getitem__(self, index: int) -> ImagePair:
        return self.pairs[index]

    def describe(self) -> dict[str, Any]:
        """Small JSON-ready description for sidecars and cache keys."""
        return {"name": self.name, "root": str(self.root), "scale": self.scale,
                "count": len(self.pairs), "split": self.split, "lr_source": self.lr_source}


def split_for(name: str, role: str) -> str | None:
    """The split of set ``name`` that plays ``role`` (``calibration``, ``selection``,
    ``heldout``); None for a set without that role (DIV2K, folders)."""
    return SPLIT_ROLES.get(name, {}).get(role)


def get_dataset(name_or_dir: str, scale: int = 2, data_root: str | Path | None = None,
                split: str | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """A named set (``div2k_valid``, ``div2k_train``, ``samples``, ``photos``) or a folder.

    ``split`` applies to ``samples`` (``train`` / ``heldout``) and ``photos`` (``calib`` /
    ``val`` / ``test``); ``cache_dir`` overrides ``$RCAN_DEPLOY_CACHE`` as the cache root (made LR
    images go to ``<cache_dir>/lr/``).
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise UserError(f"scale must be an integer >= 2, got {scale!r}")
    scale = int(scale)
    if split is not None:
        if name_or_dir not in SPLIT_ROLES:
            raise UserError(f"split '{split}' is defined only for the "
                            f"{' and '.join(repr(n) for n in SPLIT_ROLES)} sets")
        splits = tuple(SPLIT_ROLES[name_or_dir].values())
        if split not in splits:
            raise UserError(f"split must be one of {', '.join(splits)} for '{name_or_dir}', "
                            f"got '{split}'")
    lr_cache_root = (Path(cache_dir) if cache_dir else default_cache_root()) / "lr"
    root = Path(data_root).expanduser() if data_root else default_data_root()
    if name_or_dir in DIV2K_SETS:
        return _div2k(name_or_dir, scale, root, lr_cache_root)
    if name_or_dir == "samples":
        return _samples(scale, split, lr_cache_root)
    if name_or_dir == "photos":
        return _photos(scale, split, root, lr_cache_root)
    return _folder(Path(name_or_dir).expanduser(), scale, lr_cache_root)


def _div2k(name: str, scale: int, data_root: Path, lr_cache_root: Path) -> Dataset:
    definition = set_definitions()["sets"][name]
    hr_rel = Path(definition["hr_dir"])  # DIV2K/DIV2K_valid_HR
    candidates = (data_root / hr_rel, data_root / hr_rel.name)  # data root may be DIV2K/ itself
    hr_dir = next((c for c in candidates if c.is_dir()), None)
    if hr_dir is None:
        raise UserError(f"data set {name} not found: {candidates[0]} does not exist; download it "
                        f"with 'rcan-deploy data fetch {name} --data-root DIR' and pass "
                        "--data-root DIR (or set RCAN_DEPLOY_DATA=DIR)")
    expected = [f"{number:04d}" for number in range(definition["first"], definition["last"] + 1)]
    stems = [stem for stem in expected if (hr_dir / f"{stem}.png").is_file()]
    if not stems:
        raise UserError(f"{hr_dir}: none of the {name} images "
                        f"{expected[0]}.png..{expected[-1]}.png is there")
    if len(stems) < len(expected):
        warnings.warn(f"{hr_dir}: only {len(stems)} of the {len(expected)} {name} images are there",
                      stacklevel=3)
    lr_dir = hr_dir.parent / Path(definition["lr_dir"]).name / f"X{scale}"
    cache = lr_cache_root / name / f"X{scale}"
    pairs = []
    for stem in stems:
        lr_path = None
        if lr_dir.is_dir():
            lr_path = lr_dir / f"{stem}x{scale}.png"
            if not lr_path.is_file():
                raise UserError(f"{lr_path}: missing, although {lr_dir} exists (complete it, or "
                                "remove the folder to use LR images made with MATLAB bicubic)")
        pairs.append(ImagePair(stem, hr_dir / f"{stem}.png", scale, lr_path, cache))
    lr_source = LR_FROM_FILES if lr_dir.is_dir() else LR_GENERATED
    return Dataset(name, hr_dir.parent.resolve(), scale, tuple(pairs), lr_source)


def samples_folder() -> Path:
    """The ``data`` folder of the installed scikit-image package (not imported)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'samples' set needs scikit-image: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _samples(scale: int, split: str | None, lr_cache_root: Path) -> Dataset:
    definition = set_definitions()["sets"]["samples"]
    folder = samples_folder()
    files = [*definition["train"], *definition["heldout"]] if split is None else definition[split]
    pairs = []
    for file_name in sorted(files):
        path = folder / file_name
        if not path.is_file():
            version = metadata.version("scikit-image")
            raise UserError(f"{path}: missing from scikit-image {version} (the 'samples' set lists "
                            f"the files of scikit-image {definition['version_seen']})")
        cache = lr_cache_root / "samples" / f"X{scale}"
        pairs.append(ImagePair(path.stem, path, scale, None, cache))
    return Dataset("samples", folder.resolve(), scale, tuple(pairs), LR_GENERATED, split)


def missing_photos(folder: Path, files: dict[str, Any]) -> list[str]:
    """Listed photographs that are not in ``folder`` with their listed byte size."""
    missing = []
    for name, info in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != int(info["bytes"]):
            missing.append(name)
    return missing


def _photos(scale: int, split: str | None, data_root: Path, lr_cache_root: Path) -> Dataset:
    definition = set_definitions()["sets"]["photos"]
    folder = data_root / definition["folder"]
    files = definition["files"]
    missing = missing_photos(folder, files)
    if len(missing) == len(files):
        raise UserError(f"data set photos not found: {folder} holds none of its {len(files)} "
                        "images; download it with 'rcan-deploy data fetch photos --data-root "
                        "DIR' and pass --data-root DIR (or set RCAN_DEPLOY_DATA=DIR)")
    if missing:
        raise UserError(f"{folder}: {len(missing)} of the {len(files)} photos are missing or "
                        f"changed ({missing[0]}, ...); run 'rcan-deploy data fetch photos' again")
    names = [name for role in SPLIT_ROLES["photos"].values() for name in definition[role]]
    names = names if split is None else definition[split]
    cache = lr_cache_root / "photos" / f"X{scale}"
    pairs = tuple(ImagePair(Path(name).stem, folder / name, scale, None, cache)
                  for name in sorted(names))
    return Dataset("photos", folder.resolve(), scale, pairs, LR_GENERATED, split)


def _images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem, sorted by file name; a repeated stem is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():
            continue
        if path.stem in found:
            raise UserError(f"{folder}: two images named '{path.stem}' ({found[path.stem].name}, "
                            f"{path.name})")
        found[path.stem] = path
    return found


def _folder(folder: Path, scale: int, lr_cache_root: Path) -> Dataset:
    if not folder.is_dir():
        known = ", ".join(NAMED_SETS)
        if folder.exists():
            raise UserError(f"{folder}: is a file; expected a folder of images or a named set "
                            f"({known})")
        raise UserError(f"unknown data set '{folder}': not a folder and not a named set ({known})")
    hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
    lr_dir = None
    if hr_dir != folder:
        lr_candidates = (folder / "LR_bicubic" / f"X{scale}", folder / "LR" / f"X{scale}",
                         folder / "LR")
        lr_dir = next((c for c in lr_candidates if c.is_dir()), None)
    hr_images = _images_by_stem(hr_dir)
    if not hr_images:
        raise UserError(f"{hr_dir}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found")
    resolved = hr_dir.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    cache = lr_cache_root / f"{folder.resolve().name}-{digest}" / f"X{scale}"
    lr_images = _images_by_stem(lr_dir) if lr_dir is not None else {}
    pairs = []
    for stem, hr_path in hr_images.items():
        lr_path = None
        if lr_dir is not None:
            lr_path = lr_images.get(f"{stem}x{scale}") or lr_images.get(stem)
            if lr_path is None:
                raise UserError(f"{lr_dir}: no LR image for {hr_path.name} (expected "
                                f"{stem}x{scale}.png or {stem}.png)")
        pairs.append(ImagePair(stem, hr_path, scale, lr_path, cache))
    lr_source = LR_GENERATED if lr_dir is None else LR_FROM_FILES
    return Dataset(folder.resolve().name, resolved, scale, tuple(pairs), lr_source)


def set_available(name: str, scale: int = 2, data_root: str | Path | None = None) -> bool:
    """Whether the named set (or folder) can be loaded as it is now."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an incomplete DIV2K still counts as present
            get_dataset(name, scale, data_root)
    except UserError:
        return False
    return True


def default_set_name(scale: int = 2, data_root: str | Path | None = None,
                     order: tuple[str, ...] = DEFAULT_SETS) -> str:
    """The first set of ``order`` present under the data root; else the last one of ``order``."""
    return next((name for name in order[:-1] if set_available(name, scale, data_root)), order[-1])
