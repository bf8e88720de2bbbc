"""Download the named sets: resumable, size- and sha256-checked, installed atomically.

Sizes and sha256 sums come from ``calibration/sets.yaml``. A download goes to
``<data root>/<file>.part`` and resumes from there with an HTTP Range request when it was
interrupted (the ``.part`` file is kept for that); a wrong size or checksum deletes the file.

- DIV2K (``archives`` of each DIV2K set): each archive is extracted into a temporary folder inside
  the data root and its top folder renamed into ``<data root>/DIV2K/``, so ``DIV2K/`` only ever
  holds complete folders.
- ``photos`` (``packages``): the Debian packages are downloaded (see ``debian.archive_roots`` for
  where from), the listed files copied out of them into a temporary folder and checked, and the
  folder renamed to ``<data root>/photos``.

Downloaded archives and packages are deleted once their content is installed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from ..defaults import progress_off
from ..errors import UserError, os_reason as _reason
from .datasets import (DIV2K_SETS, SPLIT_ROLES, default_data_root, missing_photos,
                       set_definitions)
from .debian import archive_roots, read_members

DIV2K_BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
LR_SCALES = (2, 3, 4)  # scales of DIV2K's bicubic LR archives (calibration/sets.yaml)
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_RETRY_WAIT_S = 2.0


class _NotFound(UserError):
    """HTTP 404: the file is not at this URL (another mirror may have it)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_attempt(url: str, part: Path, size: int, progress: bool | None) -> None:
    """One HTTP request appending to ``part`` (Range from its size); network errors propagate."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        if response.status == 206:
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
        else:  # a full response, also when the server ignored the range: start again
            have = 0
            total = response.headers.get("Content-Length", "")
        if total.isdigit() and int(total) != size:
            raise UserError(f"{url}: the server has {int(total)} bytes, expected {size} "
                            "(is the checksum table out of date?)")
        with open(part, "ab" if have else "wb") as handle, \
                tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name[: -len(".part")], disable=progress_off(progress)) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                handle.write(chunk)
                bar.update(len(chunk))


def _download(url: str, target: Path, size: int, sha256: str, progress: bool | None,
              attempts: int) -> None:
    """Download ``url`` to ``target`` through ``target.part``, resuming; verify size and sha256."""
    part = target.with_name(target.name + ".part")
    reason = ""
    for attempt in range(attempts):
        if part.exists() and part.stat().st_size > size:
            part.unlink()
        if part.exists() and part.stat().st_size == size:
            break
        if attempt:
            time.sleep(_RETRY_WAIT_S * attempt)
        try:
            _download_attempt(url, part, size, progress)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # range not satisfiable: the partial file is unusable
                part.unlink(missing_ok=True)
                reason = "HTTP 416"
                continue
            if exc.code < 500:
                error = _NotFound if exc.code == 404 else UserError
                raise error(f"{url}: HTTP {exc.code} {exc.reason}") from None
            reason = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        else:
            reason = "connection closed early"
    have = part.stat().st_size if part.exists() else 0
    if have < size:
        raise UserError(f"{url}: download stopped at {have} of {size} bytes ({reason}); "
                        f"run the command again to resume from {part}")
    if have > size or _sha256(part) != sha256:
        part.unlink()
        raise UserError(f"{url}: {'size' if have > size else 'sha256'} mismatch, "
                        "the downloaded file was deleted")
    part.replace(target)


def _merge_into(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``; merge folder contents where ``destination`` exists."""
    if not destination.exists():
        source.replace(destination)
        return
    if source.is_dir() and destination.is_dir():
        for child in sorted(source.iterdir()):
            _merge_into(child, destination / child.name)
        return
    source.replace(destination)


def _extract(archive: Path, div2k_dir: Path, expected: str) -> None:
    """Unzip ``archive`` inside the data root, then rename its content into ``div2k_dir``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.stem}.", dir=archive.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)
        except zipfile.BadZipFile:
            raise UserError(f"{archive}: not a valid zip archive") from None
        if not (staging / expected).is_dir():
            raise UserError(f"{archive}: does not contain {expected}/")
        div2k_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(staging.iterdir()):
            _merge_into(entry, div2k_dir / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_div2k(name: str, data_root: str | Path | None = None, base_url: str = DIV2K_BASE_URL,
                progress: bool | None = None, lr_scales: Iterable[int] = (),
                checksums: dict[str, dict[str, object]] | None = None, attempts: int = 3) -> Path:
    """Download and extract ``div2k_valid`` or ``div2k_train`` (HR, plus LR bicubic ``lr_scales``).

    ``checksums`` maps archive file names to ``{"size": bytes, "sha256": hex}`` and replaces the
    table in ``calibration/sets.yaml``. Folders already in place are not downloaded again.
    Returns ``<data root>/DIV2K``.
    """
    if name not in DIV2K_SETS:
        raise UserError(f"unknown DIV2K set '{name}' (choose {' or '.join(DIV2K_SETS)})")
    if attempts < 1:
        raise UserError(f"attempts must be at least 1, got {attempts}")
    definition = set_definitions()["sets"][name]
    table = checksums if checksums is not None else definition["archives"]
    data_root = Path(data_root).expanduser() if data_root else default_data_root()
    div2k_dir = data_root / Path(definition["hr_dir"]).parent
    hr_name = Path(definition["hr_dir"]).name  # DIV2K_valid_HR
    lr_name = Path(definition["lr_dir"]).name  # DIV2K_valid_LR_bicubic
    wanted = [(f"{hr_name}.zip", hr_name)]
    wanted += [(f"{lr_name}_X{s}.zip", f"{lr_name}/X{s}") for s in lr_scales]
    for archive_name, folder in wanted:
        if (div2k_dir / folder).is_dir():
            continue
        if archive_name not in table:
            raise UserError(f"{archive_name}: no size/sha256 known for this archive")
        size, sha256 = int(table[archive_name]["size"]), str(table[archive_name]["sha256"])
        try:
            data_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{data_root}: cannot create the folder ({_reason(exc)})") from None
        archive = data_root / archive_name
        complete = archive.is_file() and archive.stat().st_size == size
        if not (complete and _sha256(archive) == sha256):
            part = archive.with_name(archive.name + ".part")
            missing = size - (part.stat().st_size if part.exists() else 0)
            free = shutil.disk_usage(data_root).free
            needed = missing + size  # the rest of the download plus its extracted copy
            if free < needed:
                raise UserError(f"{data_root}: {archive_name} needs about {needed / 1e9:.1f} GB "
                                f"free, only {free / 1e9:.1f} GB left")
            _download(base_url.rstrip("/") + "/" + archive_name, archive, size, sha256, progress,
                      attempts)
        _extract(archive, div2k_dir, folder)
        archive.unlink()
    return div2k_dir


def _data_root(data_root: str | Path | None) -> Path:
    root = Path(data_root).expanduser() if data_root else default_data_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{root}: cannot create the folder ({exc.strerror})") from None
    return root


def _fetch_package(entry: dict, target: Path, roots: list[str], progress: bool | None,
                   attempts: int) -> None:
    """Download one package to ``target`` from the first archive root that has it."""
    size, sha256 = int(entry["size"]), str(entry["sha256"])
    for root in roots:
        try:
            _download(f"{root}/{entry['filename']}", target, size, sha256, progress, attempts)
            return
        except _NotFound:
            continue
    raise UserError(f"{target.name}: not found on the Debian mirror{'s' if len(roots) > 1 else ''} "
                    f"tried ({roots[0]}); pass --mirror URL of an archive that still holds it "
                    "(Debian keeps old releases on its archive server)")


def _replace_folder(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside, then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.replace(old / target.name)
    staging.replace(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch_photos(data_root: str | Path | None = None, mirror: str | None = None,
                 progress: bool | None = None, attempts: int = 3,
                 definition: dict | None = None) -> Path:
    """Install the ``photos`` set as ``<data root>/photos`` from the Debian packages that ship it.

    ``mirror`` is a Debian archive root (default ``$RCAN_DEPLOY_DEBIAN_MIRROR``, else the mirror
    apt uses); ``definition`` replaces the ``photos`` entry of ``calibration/sets.yaml``. Each
    package is checked by size and sha256, each copied image by sha256; the folder appears
    complete or not at all, with ``manifest.json`` (sources, credits, licences). An installed set
    is left as it is. Returns the folder.
    """
    if attempts < 1:
        raise UserError(f"attempts must be at least 1, got {attempts}")
    definition = definition if definition is not None else set_definitions()["sets"]["photos"]
    files: dict[str, dict] = definition["files"]
    data_root = _data_root(data_root)
    target = data_root / definition["folder"]
    if target.is_dir() and not missing_photos(target, files):
        return target
    packages = list(dict.fromkeys(info["package"] for info in files.values()))
    unknown = [name for name in packages if name not in definition["packages"]]
    if unknown:
        raise UserError(f"photos: package {unknown[0]} is not listed under 'packages'")
    entries = {name: definition["packages"][name] for name in packages}
    needed = sum(int(info["bytes"]) for info in files.values()) + sum(
        int(entry["size"]) for entry in entries.values())
    free = shutil.disk_usage(data_root).free
    if free < needed:
        raise UserError(f"{data_root}: the photos set needs about {needed / 1e6:.0f} MB free, "
                        f"only {free / 1e6:.0f} MB left")
    debs: dict[str, Path] = {}
    roots: list[str] = []
    for name, entry in entries.items():
        debs[name] = data_root / Path(entry["filename"]).name
        if not (debs[name].is_file() and debs[name].stat().st_size == int(entry["size"])
                and _sha256(debs[name]) == entry["sha256"]):
            roots = roots or archive_roots(mirror)
            _fetch_package(entry, debs[name], roots, progress, attempts)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=data_root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the installed set is an ordinary folder
        for package, deb in debs.items():
            wanted = {info["path"]: staging / name for name, info in files.items()
                      if info["package"] == package}
            digests = read_members(deb, wanted)
            for name, info in files.items():
                if info["package"] == package and digests[info["path"]] != info["sha256"]:
                    raise UserError(f"{deb.name}: {info['path']} has sha256 "
                                    f"{digests[info['path']][:12]}..., expected "
                                    f"{info['sha256'][:12]}... (is sets.yaml out of date?)")
        splits = {split: definition[split] for split in SPLIT_ROLES["photos"].values()}
        manifest = {"set": "photos", "description": definition.get("description", ""),
                    "packages": entries, "files": files, "splits": splits}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for deb in debs.values():
        deb.unlink()
    return target
