"""Debian binary packages: where to download one (apt knows the mirror) and how to read files out.

A ``.deb`` is an ``ar`` archive whose ``data.tar.{xz,gz,bz2}`` member holds the installed tree;
both are read here with the standard library (``tarfile``), nothing is installed. Mirror URLs
are never written in this project: ``--mirror`` / ``$RCAN_DEPLOY_DEBIAN_MIRROR`` name an archive
root (the folder that holds ``pool/``), else apt says where it downloads from.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import UserError

MIRROR_ENV = "RCAN_DEPLOY_DEBIAN_MIRROR"
_AR_MAGIC = b"!<arch>\n"
_CHUNK = 1 << 20


def mirror_bases(indextargets: str) -> list[str]:
    """Archive roots (the URL before ``/dists/``) in the output of ``apt-get indextargets``."""
    bases: list[str] = []
    for line in indextargets.splitlines():
        if line.startswith("URI:") and "/dists/" in line:
            base = line[len("URI:"):].strip().split("/dists/")[0]
            if base not in bases:
                bases.append(base)
    return bases


def _apt_get(*args: str) -> str:
    """stdout of ``apt-get ARGS``, or "" when apt is missing or fails."""
    try:
        done = subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def archive_roots(mirror: str | None = None) -> list[str]:
    """Debian archive roots to download from (a package is ``<root>/<its pool/ path>``).

    ``mirror`` (else ``$RCAN_DEPLOY_DEBIAN_MIRROR``) alone when set; otherwise the roots of apt's
    sources, which also serve packages that apt's lists no longer name while the mirror keeps them.
    """
    base = mirror or os.environ.get(MIRROR_ENV)
    if base:
        return [base.rstrip("/")]
    roots = mirror_bases(_apt_get("indextargets", "--format", "URI: $(URI)"))
    if not roots:
        raise UserError(f"no Debian mirror known (apt is not available or has no sources); pass "
                        f"--mirror URL or set {MIRROR_ENV} to a Debian archive root (the folder "
                        "that holds pool/)")
    return roots


class _Window(io.RawIOBase):
    """Reads ``size`` bytes of ``handle`` from its current position."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle, self._left = handle, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._handle.readinto(memoryview(buffer)[: min(len(buffer), self._left)])
        self._left -= count
        return count


def _ar_members(handle: BinaryIO, name: str) -> Iterator[tuple[str, int]]:
    """(member name, size) of each ``ar`` member, with ``handle`` at the start of its data."""
    if handle.read(len(_AR_MAGIC)) != _AR_MAGIC:
        raise UserError(f"{name}: not a Debian package (no ar header)")
    while header := handle.read(60):
        if len(header) < 60 or header[58:60] != b"`\n" or not header[48:58].strip().isdigit():
            raise UserError(f"{name}: damaged Debian package (bad ar member header)")
        size = int(header[48:58])
        start = handle.tell()
        yield header[:16].decode("ascii", "replace").strip().rstrip("/"), size
        handle.seek(start + size + (size & 1))  # members are padded to an even size


def read_members(deb: Path, wanted: dict[str, Path]) -> dict[str, str]:
    """Copy files out of a ``.deb``: ``wanted`` maps a path in the package (``usr/share/...``) to
    a destination file. Returns the sha256 of each copied file by its package path."""
    digests: dict[str, str] = {}
    with open(deb, "rb") as handle:
        for member, size in _ar_members(handle, deb.name):
            if not member.startswith("data.tar"):
                continue
            if member.rsplit(".", 1)[-1] not in ("tar", "xz", "gz", "bz2"):
                raise UserError(f"{deb.name}: {member} is compressed in a way Python's tarfile "
                                "cannot read")
            stream = io.BufferedReader(_Window(handle, size), _CHUNK)
            try:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    for info in tar:
                        path = info.name.removeprefix("./")
                        if path not in wanted or not info.isfile():
                            continue
                        digests[path] = _copy(tar.extractfile(info), wanted[path])
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise UserError(f"{deb.name}: cannot read {member} ({exc})") from None
            break
        else:
            raise UserError(f"{deb.name}: not a Debian package (no data.tar member)")
    missing = sorted(set(wanted) - set(digests))
    if missing:
        raise UserError(f"{deb.name}: has no regular file {missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return digests


def _copy(source: BinaryIO, destination: Path) -> str:
    digest = hashlib.sha256()
    with open(destination, "wb") as out:
        for block in iter(lambda: source.read(_CHUNK), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()
