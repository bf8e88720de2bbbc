"""Follow artifact sidecars: engine -> INT8 QDQ graph -> FP32 graph.

Every derived artifact's sidecar names the file it was made from in ``parent: {path, sha256}``.
The path is stored as it was given on the command line, so it is tried as written (relative to
the current folder) and relative to the child's folder; a candidate whose sha256 matches wins.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..artifacts import read_sidecar, sha256_file, sidecar_path
from ..errors import UserError

FP32_KIND = "onnx-fp32"


def artifact_chain(path: str | Path) -> list[tuple[Path, dict]]:
    """``[(path, sidecar), (parent, its sidecar), ...]`` up to the first FP32 graph."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    chain: list[tuple[Path, dict]] = []
    while True:
        sidecar = read_sidecar(path)
        if sidecar is None:
            raise UserError(f"{path}: no sidecar {sidecar_path(path).name}, so its FP32 reference "
                            "is unknown (pass --reference FP32.onnx)")
        chain.append((path, sidecar))
        if sidecar.get("kind") == FP32_KIND:
            return chain
        parent = sidecar.get("parent")
        if not isinstance(parent, dict) or "path" not in parent:
            raise UserError(f"{sidecar_path(path)}: kind {sidecar.get('kind')!r} and no parent "
                            "entry, so its FP32 reference is unknown (pass --reference FP32.onnx)")
        path = parent_file(path, parent)
        if any(path.resolve() == seen.resolve() for seen, _ in chain):
            raise UserError(f"{sidecar_path(chain[-1][0])}: parent links loop back to {path}")


def find_fp32_reference(path: str | Path) -> Path:
    """The FP32 ONNX graph that ``path`` (an INT8 graph, an engine, ...) was made from."""
    return artifact_chain(path)[-1][0]


def chain_value(chain: list[tuple[Path, dict]], key: str):
    """The first value of ``key`` along the chain (the artifact's own sidecar first), or None."""
    return next((sidecar[key] for _, sidecar in chain if sidecar.get(key) is not None), None)


def parent_file(child: Path, parent: dict) -> Path:
    """The file a sidecar's ``parent`` entry names (see the module docstring)."""
    written = Path(parent["path"])
    candidates = [written] if written.is_absolute() else [written, child.parent / written]
    existing = [c for c in candidates if c.is_file()]
    if not existing:
        raise UserError(f"{sidecar_path(child)}: parent {written} does not exist (looked in "
                        f"{', '.join(str(c) for c in candidates)})")
    expected = parent.get("sha256")
    matching = [c for c in existing if expected is None or sha256_file(c) == expected]
    if not matching:
        warnings.warn(f"{existing[0]}: sha256 differs from the one recorded in "
                      f"{sidecar_path(child).name} (changed since {child.name} was made)",
                      stacklevel=3)
        return existing[0]
    return matching[0]
