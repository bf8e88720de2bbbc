"""Deterministic calibration crops: LR patches that INT8 calibration runs through the network.

Defaults (the same as ``crops`` in ``calibration/sets.yaml``): 64 crops of 128x128 LR pixels,
seed 0. Crop ``i`` comes from image ``i mod K`` of the K images, in name order, whose LR image is
at least ``crop_size`` in both dimensions (smaller images are skipped); its top-left corner is
uniform within that LR image, drawn as ``y`` then ``x`` from ``numpy.random.default_rng(seed)``.
The same set, count, size and seed give a byte-identical array.

Crop sets are cached under ``<cache root>/crops/`` (cache root: ``cache_dir``, else
``$RCAN_DEPLOY_CACHE``, else ``~/.cache/rcan_deploy``) as ``.npz`` (array ``crops``) plus a
``.json`` manifest; the file name carries a hash of the set description, the HR/LR files' sizes
and mtimes, the count, the size and the seed.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..artifacts import atomic_path, write_json
from ..errors import UserError, os_reason as _reason
from .datasets import Dataset, default_cache_root
from ..defaults import progress_off

DEFAULT_N_CROPS = 64
DEFAULT_CROP_SIZE = 128
DEFAULT_SEED = 0
_SAMPLING = ("round-robin over the images (name order) whose LR image is at least crop_size; "
             "top-left (y, x) uniform, from numpy.random.default_rng(seed)")


@dataclass(frozen=True)
class CropSet:
    """Calibration crops: ``array`` (N, 3, S, S) float32 RGB LR in 0..1 and its ``manifest``."""

    array: np.ndarray
    manifest: dict[str, Any]
    path: Path


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _cache_key(dataset: Dataset, n_crops: int, crop_size: int, seed: int) -> str:
    files = []
    for pair in dataset:
        for path in (pair.hr_path, pair.lr_path):
            if path is not None:
                try:
                    stat = path.stat()
                except OSError as exc:
                    raise UserError(f"{path}: cannot read ({_reason(exc)})") from None
                files.append([str(path), stat.st_size, stat.st_mtime_ns])
    identity = {"dataset": dataset.describe(), "files": files, "n_crops": n_crops,
                "crop_size": crop_size, "seed": seed, "sampling": _SAMPLING}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(npz_path: Path, manifest_path: Path) -> CropSet | None:
    """The cached crop set, or None when it is missing or does not match its manifest."""
    if not (npz_path.is_file() and manifest_path.is_file()):
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        with np.load(npz_path) as stored:
            array = stored["crops"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if _array_sha256(array) != manifest.get("sha256"):
        return None
    return CropSet(array, manifest, npz_path)


def _cut_crops(dataset: Dataset, n_crops: int, crop_size: int, seed: int,
               progress: bool) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    sizes = [(pair, pair.lr_size()) for pair in dataset]
    eligible = [(pair, size) for pair, size in sizes if min(size) >= crop_size]
    skipped = [pair.name for pair, size in sizes if min(size) < crop_size]
    if not eligible:
        largest = max(sizes, key=lambda item: min(item[1]))[1]
        raise UserError(f"{dataset.name}: no LR image at scale {dataset.scale} is at least "
                        f"{crop_size}x{crop_size} (largest {largest[1]}x{largest[0]}); "
                        "use a smaller crop size")
    rng = np.random.default_rng(seed)
    plan: dict[int, list[tuple[int, int, int]]] = {}  # eligible image -> (crop, y, x)
    crops = []
    for index in range(n_crops):
        image = index % len(eligible)
        pair, (height, width) = eligible[image]
        y = int(rng.integers(0, height - crop_size + 1))
        x = int(rng.integers(0, width - crop_size + 1))
        plan.setdefault(image, []).append((index, y, x))
        crops.append({"image": pair.name, "y": y, "x": x})
    array = np.empty((n_crops, 3, crop_size, crop_size), dtype=np.float32)
    for image in tqdm(sorted(plan), desc="calibration crops", unit="image",
                      disable=progress_off(progress)):
        lr = eligible[image][0].load_lr()
        for index, y, x in plan[image]:
            array[index] = lr[y:y + crop_size, x:x + crop_size].transpose(2, 0, 1)
    return array, crops, skipped


def calibration_crops(dataset: Dataset, n_crops: int = DEFAULT_N_CROPS,
                      crop_size: int = DEFAULT_CROP_SIZE, seed: int = DEFAULT_SEED,
                      cache_dir: str | Path | None = None,
                      progress: bool | None = False) -> CropSet:
    """``n_crops`` deterministic ``crop_size`` LR crops of ``dataset`` (cached; see module doc)."""
    limits = (("n_crops", n_crops, 1), ("crop_size", crop_size, 1), ("seed", seed, 0))
    for label, value, low in limits:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"{label} must be an integer >= {low}, got {value!r}")
    n_crops, crop_size, seed = int(n_crops), int(crop_size), int(seed)
    folder = (Path(cache_dir) if cache_dir else default_cache_root()) / "crops"
    key = _cache_key(dataset, n_crops, crop_size, seed)
    stem = f"{dataset.name}-x{dataset.scale}-{n_crops}x{crop_size}-seed{seed}-{key}"
    npz_path, manifest_path = folder / f"{stem}.npz", folder / f"{stem}.json"
    cached = _read_cache(npz_path, manifest_path)
    if cached is not None:
        return cached

    array, crops, skipped = _cut_crops(dataset, n_crops, crop_size, seed, progress)
    manifest = {
        "dataset": dataset.describe(),
        "n_crops": n_crops,
        "crop_size": crop_size,
        "seed": seed,
        "layout": "N,3,S,S float32 RGB in 0..1 (LR)",
        "sampling": _SAMPLING,
        "skipped_too_small": skipped,
        "crops": crops,
        "sha256": _array_sha256(array),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(npz_path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, crops=array)
        write_json(manifest_path, manifest)
    except OSError as exc:
        raise UserError(f"{folder}: cannot write the crop cache ({_reason(exc)}); "
                        "set RCAN_DEPLOY_CACHE to a writable folder") from None
    return CropSet(array, manifest, npz_path)
