"""Artifact records: the typed, versioned JSON sidecar ``X.json`` of every artifact ``X``.

One schema (``SCHEMA_VERSION``), one way to derive a child's record from its parent's
(:meth:`Record.derive`), one writer (:func:`publish`) and one reader (:func:`read_record`), which
validates the types and checks that the sidecar's sha256 is the file's. See the README section
"Artifact records" for the fields.

``publish`` writes the artifact and its sidecar to temporary names, then, holding a lock on the
folder, removes the old sidecar, renames the artifact and renames the sidecar. Whatever happens
in between (a kill, a concurrent writer to the same name), a sidecar never describes another
file than the one next to it; at worst an artifact has no sidecar yet.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .artifacts import (check_destination, command_line, io_error, remove_stale_temps,
                        sha256_file, sidecar_path, temp_path, tool_versions)
from .errors import UserError

SCHEMA_VERSION = 1
KINDS = ("checkpoint", "onnx-fp32", "onnx-int8-qdq", "tensorrt-engine")
FP32_KIND = "onnx-fp32"
INPUT_RANGES = (1, 255)
# What a derived artifact copies from its parent: what the network is and computes.
INHERITED = ("source", "variant", "config", "native_input_range", "weights", "scale",
             "input_range")
# Sections whose type readers rely on (any other section is free-form JSON).
_SECTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "export": dict, "verification": dict, "graph": dict, "rewrite": dict,
    "rewrite_verification": dict, "optimize": dict, "calibration": dict, "quantization": dict,
    "scales": dict, "heldout": dict, "sensitivity": dict, "global_pooling": bool,
    "precision": str, "tensorrt": dict, "gpu": dict, "build": dict, "io": dict,
    "model_card": bool, "recipe": dict, "history": list, "costs": dict, "architecture": dict,
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEAD = ("schema_version", "kind", "artifact", "sha256", "created", "command")


@dataclass
class Record:
    """The sidecar of one artifact. ``sections`` holds the kind-specific parts (``export``,
    ``verification``, ``quantization``, ...), written as top-level JSON keys."""

    kind: str
    scale: int | None = None
    input_range: int | None = None
    source: str | None = None
    variant: str | None = None
    config: dict | None = None
    native_input_range: int | None = None
    weights: dict | None = None
    parent: dict | None = None  # {"path", "sha256", "kind"} of the file this was made from
    input_shape: list | None = None
    output_shape: list | None = None
    sections: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    sha256: str | None = None
    created: str | None = None
    command: str | None = None
    versions: dict | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def new(cls, kind: str, **values: Any) -> "Record":
        """A record from flat values: record fields by name, anything else a section; ``scale``
        defaults to ``config.scale``."""
        names = {f.name for f in fields(cls)} - {"sections", "kind"}
        record = cls(kind, **{k: v for k, v in values.items() if k in names},
                     sections={k: v for k, v in values.items() if k not in names})
        if record.scale is None and isinstance(record.config, dict):
            record.scale = record.config.get("scale")
        return record

    @property
    def has_provenance(self) -> bool:
        """Whether the record says which network (layout and weights) this is."""
        return self.source is not None

    def to_json(self) -> dict[str, Any]:
        """The sidecar as written: head fields, the network, parent, shapes, sections, versions."""
        data = {name: getattr(self, name) for name in _HEAD}
        data.update({name: getattr(self, name) for name in INHERITED})
        data.update(parent=self.parent, input_shape=self.input_shape,
                    output_shape=self.output_shape)
        data.update(self.sections)
        data["versions"] = self.versions
        return json.loads(json.dumps(data, default=str))

    @classmethod
    def from_json(cls, data: Any, where: str | Path = "sidecar") -> "Record":
        """Validate a parsed sidecar (any schema version up to ours) and build the record."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: not an rcan-deploy sidecar (a JSON {_json_type(data)}, "
                            "expected an object)")
        version = data.get("schema_version", 0)
        if not _is_int(version) or version < 0:
            raise UserError(f"{where}: schema_version {version!r} is not a version number")
        if version > SCHEMA_VERSION:
            raise UserError(f"{where}: written by a newer rcan-deploy (schema version {version} "
                            f"> {SCHEMA_VERSION}); upgrade rcan-deploy")
        data = _upgrade(dict(data)) if version < SCHEMA_VERSION else dict(data)
        data.setdefault("kind", None)  # _validate names it
        known = {f.name for f in fields(cls)} - {"sections"}
        record = cls(**{k: v for k, v in data.items() if k in known},
                     sections={k: v for k, v in data.items() if k not in known})
        _validate(record, where)
        return record


def derive(parent_path: str | Path, kind: str, parent: Record | None = None,
           parent_kind: str | None = FP32_KIND) -> Record:
    """The record of an artifact made from the file ``parent_path`` whose record is ``parent``
    (None for a graph brought without sidecar, of kind ``parent_kind``): the same network
    (``INHERITED`` fields and the ``architecture`` section), a parent link with the file's
    sha256, no other sections."""
    values = {name: getattr(parent, name) for name in INHERITED} if parent else {}
    child = Record(kind, **values)
    if parent and parent.sections.get("architecture"):  # the published network's own costs
        child.sections["architecture"] = parent.sections["architecture"]
    child.parent = {"path": str(parent_path), "sha256": sha256_file(parent_path),
                    "kind": parent.kind if parent else parent_kind}
    return child


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _upgrade(data: dict) -> dict:
    """Schema 0 (sidecars written before versioning) -> 1: top-level scale, sha256 of model
    cards, ``recipe.lr`` renamed ``learning_rate``."""
    config = data.get("config")
    if data.get("scale") is None and isinstance(config, dict) and _is_int(config.get("scale")):
        data["scale"] = config["scale"]
    checkpoint = data.get("checkpoint")
    if data.get("kind") == "checkpoint" and isinstance(checkpoint, dict):
        data.setdefault("sha256", checkpoint.get("sha256"))
        data.setdefault("artifact", checkpoint.get("path"))
        data.setdefault("native_input_range", 255 if data.get("source") == "official" else 1)
        data.setdefault("input_range", data["native_input_range"])
    recipe = data.get("recipe")
    if isinstance(recipe, dict) and "lr" in recipe:
        data["recipe"] = {("learning_rate" if k == "lr" else k): v for k, v in recipe.items()}
    data["schema_version"] = SCHEMA_VERSION
    return data


def _validate(record: Record, where) -> None:
    """One-line UserError naming the first field of the wrong type or value."""
    def bad(name: str, expected: str) -> UserError:
        value = getattr(record, name, None) if name in {f.name for f in fields(Record)} \
            else record.sections.get(name)
        return UserError(f"{where}: field {name!r} is {json.dumps(value, default=str)[:60]}, "
                         f"expected {expected}")

    if record.kind not in KINDS:
        raise bad("kind", " or ".join(KINDS))
    if record.sha256 is not None and not (isinstance(record.sha256, str)
                                          and _HEX64.fullmatch(record.sha256)):
        raise bad("sha256", "64 lowercase hex digits")
    for name in ("artifact", "created", "command", "source", "variant"):
        if getattr(record, name) is not None and not isinstance(getattr(record, name), str):
            raise bad(name, "a string")
    if record.scale is not None and not (_is_int(record.scale) and 2 <= record.scale <= 16):
        raise bad("scale", "an integer 2..16")
    for name in ("input_range", "native_input_range"):
        if getattr(record, name) is not None and getattr(record, name) not in INPUT_RANGES:
            raise bad(name, "1 or 255")
    for name in ("config", "weights", "versions"):
        if getattr(record, name) is not None and not isinstance(getattr(record, name), dict):
            raise bad(name, "an object")
    if record.config is not None and record.scale is not None and \
            record.config.get("scale") not in (None, record.scale):
        raise bad("scale", f"config.scale {record.config.get('scale')!r}")
    for name in ("input_shape", "output_shape"):
        shape = getattr(record, name)
        if shape is not None and not (isinstance(shape, list) and all(
                (_is_int(d) and d >= 0) or isinstance(d, str) for d in shape)):
            raise bad(name, "a list of dimensions")
    parent = record.parent
    if parent is not None and not (isinstance(parent, dict) and isinstance(parent.get("path"), str)
                                   and (parent.get("sha256") is None
                                        or (isinstance(parent["sha256"], str)
                                            and _HEX64.fullmatch(parent["sha256"])))):
        raise bad("parent", "an object with path and sha256")
    for name, kind in _SECTION_TYPES.items():
        if name in record.sections and record.sections[name] is not None \
                and not isinstance(record.sections[name], kind):
            expected = "object" if kind is dict else getattr(kind, "__name__", kind)
            raise bad(name, f"a JSON {expected}")
    heldout = record.sections.get("heldout") or {}
    for key, value in heldout.items():
        if isinstance(value, float) and not math.isfinite(value) and key != "drop":
            raise bad("heldout", "finite numbers")


def read_record(path: str | Path, *, verify: bool = True) -> Record | None:
    """The validated record of ``path``, or None when it has no sidecar. With ``verify`` (the
    default) the file's sha256 must be the one the sidecar records."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "msg", None) or type(exc).__name__
        raise UserError(f"{side}: sidecar is not valid JSON ({reason})") from None
    except OSError as exc:
        raise io_error(side, "read", exc) from None
    record = Record.from_json(data, side)
    if verify:
        verify_file(path, record)
    return record


def verify_file(path: Path, record: Record) -> None:
    """UserError when ``path`` is not the file its sidecar describes (sha256 differs)."""
    if record.sha256 is None:
        raise UserError(f"{sidecar_path(path)}: records no sha256, so it cannot vouch for {path}")
    if path.is_file() and sha256_file(path) != record.sha256:
        raise UserError(f"{path}: sha256 differs from its sidecar {sidecar_path(path).name} (the "
                        "file changed after the sidecar was written); make it again or delete "
                        "the sidecar")


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on a folder (flock on its descriptor) while a pair is renamed into it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def publish(path: str | Path, record: Record, write: Callable[[Path], None],
            extra_versions: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write an artifact with ``write(tmp_path)`` and its sidecar from ``record`` (hash, time,
    command line and tool versions filled in), publish both as a pair; return the sidecar."""
    path = Path(path)
    check_destination(path)
    remove_stale_temps(path)
    remove_stale_temps(sidecar_path(path))
    tmp, tmp_side = temp_path(path), temp_path(sidecar_path(path))
    try:
        try:
            write(tmp)
            record.artifact = path.name
            record.sha256 = sha256_file(tmp)
            record.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            record.command = command_line()
            record.versions = tool_versions(extra_versions)
            data = record.to_json()
            tmp_side.write_text(json.dumps(data, indent=2) + "\n")
            for written in (tmp, tmp_side):
                os.chmod(written, 0o666 & ~_umask())  # mkstemp-style 0600 -> normal modes
            with _folder_lock(path.parent):
                sidecar_path(path).unlink(missing_ok=True)
                os.replace(tmp, path)
                os.replace(tmp_side, sidecar_path(path))
        except OSError as exc:
            raise io_error(path, "write", exc) from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_onnx(model, path: str | Path, record: Record) -> dict[str, Any]:
    """Publish an ONNX model and its record (see :func:`publish`)."""
    import onnx

    def write(tmp: Path) -> None:
        onnx.save(model, str(tmp))

    return publish(path, record, write)


# --- lineage: artifact -> parent -> ... -> FP32 graph --------------------------------------

@dataclass
class Link:
    """One artifact of a lineage: its file, its record (None: a graph without sidecar)."""

    path: Path
    record: Record | None


def parent_file(child: Path, parent: dict) -> Path:
    """The file a record's ``parent`` entry names: tried as written (relative to the current
    folder) and relative to the child's folder; the one whose sha256 matches wins. UserError
    when none exists or none matches (the parent was replaced since the child was made)."""
    written = Path(parent["path"])
    candidates = [written] if written.is_absolute() else [written, child.parent / written]
    existing = [c for c in dict.fromkeys(candidates) if c.is_file()]
    if not existing:
        raise UserError(f"{sidecar_path(child)}: parent {written} does not exist (looked in "
                        f"{', '.join(str(c) for c in candidates)})")
    expected = parent.get("sha256")
    for candidate in existing:
        if expected is None or sha256_file(candidate) == expected:
            return candidate
    raise UserError(f"{existing[0]}: sha256 differs from the parent recorded in "
                    f"{sidecar_path(child).name}: it was replaced after {child.name} was made, so "
                    "the chain is broken (make the child again, or pass --reference)")


def lineage(path: str | Path) -> list[Link]:
    """``[path, its parent, ...]`` up to the first FP32 graph (or a parent without sidecar),
    every link checked by sha256. UserError when ``path`` has no record or a link is broken."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    chain: list[Link] = []
    while True:
        record = read_record(path)
        if record is None:
            if not chain:
                raise UserError(f"{path}: no sidecar {sidecar_path(path).name}, so its FP32 "
                                "reference is unknown (pass --reference FP32.onnx)")
            chain.append(Link(path, None))  # a graph brought without sidecar: the end
            return chain
        chain.append(Link(path, record))
        if record.kind == FP32_KIND:
            return chain
        if record.parent is None:
            raise UserError(f"{sidecar_path(path)}: kind {record.kind} and no parent entry, so "
                            "its FP32 reference is unknown (pass --reference FP32.onnx)")
        path = parent_file(path, record.parent)
        if any(path.resolve() == link.path.resolve() for link in chain):
            raise UserError(f"{sidecar_path(chain[-1].path)}: parent links loop back to {path}")


def chain_value(chain: list[Link], name: str):
    """The first non-None value of record field (or section) ``name`` along the chain."""
    for link in chain:
        if link.record is None:
            continue
        value = getattr(link.record, name, None) if name in {f.name for f in fields(Record)} \
            else link.record.sections.get(name)
        if value is not None:
            return value
    return None
