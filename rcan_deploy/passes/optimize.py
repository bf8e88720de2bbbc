"""The graph optimizer behind ``rcan-deploy optimize`` and the default ``export``.

Passes, in order: MeanShift folding (:mod:`.meanshift`), folding of per-channel affine ops after
convs (:mod:`.affine`), exact fusion of linear upsampler tails (:mod:`.fuse_upsampler`), then the
requested pixel-shuffle form (:mod:`.pixel_shuffle`), which therefore rewrites the small fused
shuffle. Every optimized graph is checked against its input on ONNX Runtime at a small size
(whole image, so every border is in the check): a fixed-shape graph is optimized as a copy with
symbolic height and width, verified, and only then fixed to its shape again, so verification
never depends on the deployment size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import defaults
from ..errors import UserError, VerificationError
from ..onnx_utils import input_shape, max_abs_error, run, simplify
from .affine import fold_affine
from .fuse_upsampler import fuse_upsampler
from .meanshift import fold_meanshift
from .pixel_shuffle import PIXEL_SHUFFLE_CHOICES, native_pixel_shuffle, rewrite_pixel_shuffle

# Largest accepted |optimized - input| relative to max(1, max |input graph output|).
RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class OptimizeOptions:
    """Which passes run (``pixel_shuffle``: keep, or one of the rewrite forms); the value range
    (None: from the record, else 1) and seed of the verification input."""

    fold_meanshift: bool = True
    fuse_upsampler: bool = True
    pixel_shuffle: str = "keep"
    input_range: int | None = None
    seed: int = 0

    def check(self) -> None:
        if self.pixel_shuffle not in PIXEL_SHUFFLE_CHOICES:
            raise UserError(f"--pixel-shuffle {self.pixel_shuffle!r}: expected one of "
                            f"{', '.join(PIXEL_SHUFFLE_CHOICES)}")


def optimize_graph(model: onnx.ModelProto, options: OptimizeOptions = OptimizeOptions()
                   ) -> tuple[onnx.ModelProto, list[dict]]:
    """Apply the passes to ``model`` (not verified here); return it and one record per pass."""
    options.check()
    passes = []
    if options.fold_meanshift:
        model, count = fold_meanshift(model)
        passes.append({"name": "fold_meanshift", "sites": count})
    if options.fuse_upsampler:
        model, count = fold_affine(model)
        passes.append({"name": "fold_affine", "sites": count})
        model, sites = fuse_upsampler(model)
        passes.append({"name": "fuse_upsampler", "sites": sites})
    if options.pixel_shuffle != "keep":
        model, count = rewrite_pixel_shuffle(model, options.pixel_shuffle)
        passes.append({"name": "pixel_shuffle", "form": options.pixel_shuffle, "sites": count})
    return model, passes


def verify_equal(reference: onnx.ModelProto, candidate: onnx.ModelProto, value_range: float,
                 seed: int, shape: tuple[int, int] = defaults.VERIFY_SHAPE,
                 against: str = "input graph") -> dict:
    """Check ``candidate`` against ``reference`` on one random 1x3xHxW input in 0..value_range;
    raise VerificationError beyond the tolerance, else return what was checked."""
    x = (np.random.default_rng(seed).random((1, 3, *shape)) * value_range).astype(np.float32)
    expected = run(reference, x)[0]
    error = max_abs_error(expected, run(candidate, x)[0])
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
    if not error <= tolerance:
        raise VerificationError(f"optimized graph differs from the {against} by {error:.3g} "
                                f"(max abs at {shape[0]}x{shape[1]}) > {tolerance:.3g}; nothing "
                                "written")
    return {"shape": [1, 3, *shape], "seed": seed, "max_abs_error": error,
            "tolerance": tolerance, "against": against}


def _runs(model: onnx.ModelProto, shape: tuple[int, int]) -> bool:
    try:
        run(model, np.zeros((1, 3, *shape), np.float32))
    except Exception:  # ORT raises its own types for shape conflicts
        return False
    return True


def optimize_verified(model: onnx.ModelProto, options: OptimizeOptions = OptimizeOptions(), *,
                      value_range: float = 1.0, seed: int = 0
                      ) -> tuple[onnx.ModelProto, list[dict], dict]:
    """Optimize ``model`` (fixed or dynamic input) and verify it at a small size; return the
    optimized model (fixed to the input's shape again when it was fixed), the pass records and
    the verification record."""
    from ..quant.graph import dynamic_copy

    shape = input_shape(model)
    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"optimize needs a graph with one 1x3xHxW image input, got {shape}")
    fixed = all(isinstance(d, int) and d > 0 for d in shape)
    native, _ = native_pixel_shuffle(model)
    dynamic = dynamic_copy(native) if fixed else native
    if not _runs(dynamic, defaults.VERIFY_SHAPE):
        raise UserError(f"the graph does not run at {defaults.VERIFY_SHAPE[0]}x"
                        f"{defaults.VERIFY_SHAPE[1]} with a symbolic input size (fixed-shape "
                        "constants other than pixel shuffles), so it cannot be optimized and "
                        "verified; export it with dynamic height and width")
    optimized, passes = optimize_graph(dynamic, options)
    optimized = simplify(optimized)
    verification = verify_equal(dynamic, optimized, value_range, seed)
    if fixed:
        optimized = simplify(optimized, list(shape))
    return optimized, passes, verification


def optimize_file(model_path: str | Path, out: str | Path, options: OptimizeOptions) -> dict:
    """Optimize the graph in ``model_path``, verify it, write ``out`` and its record: the
    passes, the verification, the MACs the graph executes (``costs``) and the published
    network's (``architecture``, kept from the parent's record, else the input graph's)."""
    from ..artifacts import check_destination
    from ..costs import cost_totals, model_info
    from ..onnx_utils import load_model, output_shape
    from ..record import derive, read_record, save_onnx

    check_destination(out, [model_path])
    original = load_model(model_path)
    parent = read_record(model_path)
    value_range = options.input_range or (parent.input_range if parent else None) or 1
    model, passes, verification = optimize_verified(original, options, value_range=value_range,
                                                    seed=options.seed)
    record = derive(model_path, parent.kind if parent else "onnx-fp32", parent)
    record.input_shape, record.output_shape = input_shape(model), output_shape(model)
    record.sections["optimize"] = {"passes": passes, "verification": verification}
    if all(isinstance(d, int) for d in record.input_shape):
        record.sections["costs"] = cost_totals(model_info(model))
        record.sections.setdefault("architecture", cost_totals(model_info(original)))
    return save_onnx(model, out, record)
