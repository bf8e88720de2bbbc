"""Files: atomic writes, destination checks, hashes, tool versions.

Files are written to a temporary name in the same folder (``.NAME.PID.RANDOM.tmp``) and renamed,
so an interrupted or failed command never leaves a half-written file under a final name; the
temporary files of killed runs are removed by the next write of the same name. Artifact
sidecars are :mod:`rcan_deploy.record`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import secrets
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

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


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EFBIG, errno.EIO, errno.ENOTDIR, errno.EISDIR}


def io_error(path: str | Path, action: str, exc: OSError) -> UserError:
    """A one-line UserError for an OS error while reading or writing ``path``."""
    reason = exc.strerror or type(exc).__name__
    return UserError(f"{path}: cannot {action} ({reason})")


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name next to ``path`` that carries this process's id."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files of ``path`` left by processes that no longer run (killed)."""
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            try:
                entry.unlink()
            except OSError:
                pass


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (a temporary file's writer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_destination(path: str | Path, inputs: Iterable[str | Path | None] = (),
                      flag: str = "--out") -> Path:
    """Check before any work that ``path`` can be written as an artifact: a file name (not a
    folder, not a sidecar name) in an existing, writable folder, and neither one of the
    command's ``inputs`` nor one of their sidecars. One-line UserError otherwise."""
    text = str(path)
    path = Path(path)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise UserError(f"{flag} {text}: names a folder, expected an output file name")
    if path.name.endswith(".json"):
        raise UserError(f"{flag} {text}: .json names are sidecars; choose another file name "
                        "(its sidecar will be NAME.json)")
    check_folder_writable(path.parent, flag, text)
    check_not_input(path, inputs, flag)
    return path


def check_not_input(path: Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> None:
    """UserError when writing ``path`` (or its sidecar) would overwrite one of ``inputs`` or of
    their sidecars."""
    text = str(path)
    targets = {_identity(path), _identity(sidecar_path(path))}
    for source in inputs:
        if source is None:
            continue
        for candidate in (Path(source), sidecar_path(source)):
            if _identity(candidate) in targets:
                raise UserError(f"{flag} {text}: would overwrite the input {candidate}; choose "
                                "another output name")


def check_folder_creatable(folder: Path, flag: str = "--out") -> None:
    """UserError unless ``folder`` is a folder that exists and is writable, or can be created
    (its nearest existing parent is a writable folder)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, expected a folder")
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("/"))
    check_folder_writable(existing, flag, str(folder))


def check_folder_writable(folder: Path, flag: str = "--out", shown: str | None = None) -> None:
    """UserError unless ``folder`` exists, is a folder, and a file can be created in it."""
    shown = shown or str(folder)
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.exists():
        raise UserError(f"{flag} {shown}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{flag} {shown}: {folder} is a file, not a folder")
    probe = folder / f".rcan-deploy-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{flag} {shown}: cannot write in {folder} "
                        f"({exc.strerror or type(exc).__name__})") from None


def _identity(path: Path) -> tuple:
    """(device, inode) of an existing file, else its absolute path: equal for the same file."""
    try:
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return (os.path.abspath(path),)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.
    Temporary files of killed runs are removed; a full disk or a read-only folder is a
    one-line UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an output file name")
    if not path.parent.exists():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    remove_stale_temps(path)
    tmp_path = temp_path(path)
    try:
        try:
            tmp_path.touch(mode=0o600)
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_umask())  # give artifacts normal modes
            os.replace(tmp_path, path)
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS:
                raise io_error(path, "write", exc) from None
            raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON (not an artifact record: reports, manifests) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
