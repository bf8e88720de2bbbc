"""Artifacts and their JSON sidecars: atomic writes, hashes, tool versions, provenance chain.

Every artifact ``X`` gets ``X.json`` recording how it was made. Files are written to a temporary
name in the same folder and renamed, so an interrupted or failed command never leaves a
half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

_TOOLS = ("rcan-deploy", "torch", "onnx", "onnxruntime", "onnxsim", "onnx-graphsurgeon", "numpy")


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar that describes ``path``."""
    return Path(str(path) + ".json")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def tool_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and of the packages that shape an artifact (plus ``extra`` ones)."""
    versions = {"python": platform.python_version()}
    for name in (*_TOOLS, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an output file name")
    if not path.parent.exists():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give artifacts normal modes
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_onnx(model, path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``model`` to ``path`` and its sidecar (``meta`` + hash, versions, command line)."""
    import onnx

    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        sidecar = {
            "artifact": path.name,
            "sha256": sha256_file(tmp),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(),
            **meta,
            "versions": tool_versions(),
        }
        sidecar = json.loads(json.dumps(sidecar, default=str))  # what readers will see
        write_json(sidecar_path(path), sidecar)
    return sidecar


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``path`` as a dict, or None when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{side}: sidecar is not valid JSON ({exc.msg})") from None
