"""The Python API behind every CLI command: each command is one function here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import defaults
from .artifacts import read_sidecar, save_onnx, sha256_file
from .errors import UserError, VerificationError
from .onnx_utils import input_shape, load_model

# Whole-graph verification of a rewrite of a fixed-shape graph runs the graph at its own shape;
# above this many conv MACs (the SR4K graphs at 1080p need ~1.6e11) it is skipped and recorded.
VERIFY_MACS_LIMIT = 2e11


def export(out: str | Path = defaults.FP32_ONNX, *, source: str | None = None,
           variant: str | None = None, scale: int | None = None, weights: str | Path | None = None,
           random_weights: bool = False, param_key: str | None = None,
           shape: tuple[int, int] = defaults.SHAPE, opset: int = defaults.OPSET,
           pixel_shuffle: str = "keep", input_range: str = "native",
           fold_meanshift: bool = False, seed: int = 0) -> dict:
    """Build (or load) an RCAN network and write a verified fixed-shape ONNX graph + sidecar."""
    from .checkpoints import resolve_model
    from .exporter import ExportOptions
    from .exporter import export as export_to

    resolved = resolve_model(source, variant, scale, weights, random_weights, param_key, seed)
    options = ExportOptions(shape=tuple(shape), opset=opset, pixel_shuffle=pixel_shuffle,
                            input_range=input_range, fold_meanshift=fold_meanshift, seed=seed)
    return export_to(resolved, out, options).record


def rewrite(model_path: str | Path, out: str | Path, *, pixel_shuffle: str | None = None,
            fold_meanshift: bool = False, seed: int = 0) -> dict:
    """Apply graph passes to any ONNX file, verify the result against the original, write it."""
    import numpy as np

    from .costs import model_info
    from .onnx_utils import max_abs_error, output_shape, run, simplify
    from .passes.meanshift import fold_meanshift as fold
    from .passes.pixel_shuffle import rewrite_pixel_shuffle

    if pixel_shuffle is None and not fold_meanshift:
        raise UserError("nothing to do: pass --pixel-shuffle FORM and/or --fold-meanshift")
    original = load_model(model_path)
    model, passes = original, {}
    if pixel_shuffle is not None:
        model, passes["pixel_shuffle"] = rewrite_pixel_shuffle(model, pixel_shuffle)
    if fold_meanshift:
        model, passes["fold_meanshift"] = fold(model)
    model = simplify(model)
    shape = input_shape(original)
    dynamic = not all(isinstance(d, int) and d > 0 for d in shape)
    if dynamic:
        shape = [1, 3, *defaults.VERIFY_SHAPE]
    macs = 0 if dynamic else model_info(original)["macs"]
    parent = read_sidecar(model_path) or {}
    verification: dict = {"shape": shape, "seed": seed}
    if macs > VERIFY_MACS_LIMIT:
        verification["skipped"] = f"{macs / 1e9:.0f} GMACs at the fixed shape > limit"
    else:
        value_range = parent.get("input_range", 1)
        x = (np.random.default_rng(seed).random(shape) * value_range).astype(np.float32)
        expected = run(original, x)[0]
        error = max_abs_error(expected, run(model, x)[0])
        tolerance = 1e-5 * max(1.0, float(np.max(np.abs(expected))))
        verification.update(max_abs_error=error, tolerance=tolerance, against=str(model_path))
        if not error <= tolerance:
            raise VerificationError(f"rewritten graph differs from {model_path} by {error:.3g} "
                                    f"> {tolerance:.3g}; nothing written")
    record = {**{k: v for k, v in parent.items()
                 if k not in ("artifact", "sha256", "created", "command", "versions")},
              "kind": parent.get("kind", "onnx"),
              "parent": {"path": str(model_path), "sha256": sha256_file(model_path)},
              "rewrite": {"passes": passes, "pixel_shuffle": pixel_shuffle,
                          "fold_meanshift": fold_meanshift},
              "input_shape": input_shape(model), "output_shape": output_shape(model),
              "rewrite_verification": verification}
    return save_onnx(model, out, record)


@dataclass
class CheckResult:
    """Ops and largest rank of a graph and the limits it breaks; truthy when it passes."""

    ops: dict
    max_rank: int
    max_rank_tensor: str | None
    violations: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.violations


def check(model_path: str | Path, *, max_rank: int | None = None,
          forbid_ops: tuple[str, ...] | list[str] = ()) -> CheckResult:
    """Report ops and largest tensor rank; list what breaks ``max_rank``/``forbid_ops``."""
    from .passes.check import check_graph, graph_report

    model = load_model(model_path)
    report = graph_report(model)
    violations = check_graph(model, max_rank=max_rank, forbid_ops=forbid_ops)
    return CheckResult(report["ops"], report["max_rank"], report["max_rank_tensor"], violations)


def info(model_path: str | Path, *, shape: tuple[int, int] | None = None) -> dict:
    """Params and conv MACs (total and per layer) at the graph's shape, with reference rows."""
    from .costs import model_info, reference_rows

    result = model_info(load_model(model_path), shape)
    sidecar = read_sidecar(model_path) or {}
    result["source"] = sidecar.get("source")
    result["variant"] = sidecar.get("variant")
    same_shape = result["input_shape"] == [1, 3, *defaults.SHAPE]
    scale = (sidecar.get("config") or {}).get("scale")
    rows = reference_rows(sidecar.get("source"), sidecar.get("variant")) if same_shape else []
    result["reference"] = [r for r in rows if sidecar.get("source") and r["scale"] == str(scale)]
    return result
