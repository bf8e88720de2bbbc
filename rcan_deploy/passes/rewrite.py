"""``rcan-deploy rewrite``: graph passes on any ONNX file, verified against the original."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import defaults
from ..artifacts import check_destination
from ..errors import UserError, VerificationError
from ..onnx_utils import input_shape, load_model, max_abs_error, output_shape, run, simplify
from ..record import derive, read_record, save_onnx
from .pixel_shuffle import FORMS

# Whole-graph verification of a rewrite of a fixed-shape graph runs the graph at its own shape;
# above this many conv MACs (the SR4K graphs at 1080p need ~1.6e11) it is skipped and recorded.
VERIFY_MACS_LIMIT = 2e11


@dataclass(frozen=True)
class RewriteOptions:
    """Which passes to apply: a pixel-shuffle form (:data:`FORMS`) and/or MeanShift folding;
    ``seed`` of the verification input."""

    pixel_shuffle: str | None = None
    fold_meanshift: bool = False
    seed: int = 0

    def check(self) -> None:
        if self.pixel_shuffle is None and not self.fold_meanshift:
            raise UserError("nothing to do: pass --pixel-shuffle FORM and/or --fold-meanshift")
        if self.pixel_shuffle not in (None, *FORMS):
            raise UserError(f"--pixel-shuffle {self.pixel_shuffle!r}: expected one of "
                            f"{', '.join(FORMS)}")


def rewrite_file(model_path: str | Path, out: str | Path, options: RewriteOptions) -> dict:
    """Apply the passes to ``model_path``, verify on ONNX Runtime, write ``out`` + record."""
    from ..costs import model_info
    from .meanshift import fold_meanshift
    from .pixel_shuffle import rewrite_pixel_shuffle

    options.check()
    check_destination(out, [model_path])
    original = load_model(model_path)
    parent = read_record(model_path)
    model, passes = original, {}
    if options.pixel_shuffle is not None:
        model, passes["pixel_shuffle"] = rewrite_pixel_shuffle(model, options.pixel_shuffle)
    if options.fold_meanshift:
        model, passes["fold_meanshift"] = fold_meanshift(model)
    model = simplify(model)
    shape = input_shape(original)
    dynamic = not all(isinstance(d, int) and d > 0 for d in shape)
    if dynamic:
        shape = [1, 3, *defaults.VERIFY_SHAPE]
    macs = 0 if dynamic else model_info(original)["macs"]
    verification: dict = {"shape": shape, "seed": options.seed}
    if macs > VERIFY_MACS_LIMIT:
        verification["skipped"] = f"{macs / 1e9:.0f} GMACs at the fixed shape > limit"
    else:
        value_range = (parent.input_range if parent else None) or 1
        x = (np.random.default_rng(options.seed).random(shape) * value_range).astype(np.float32)
        expected = run(original, x)[0]
        error = max_abs_error(expected, run(model, x)[0])
        tolerance = 1e-5 * max(1.0, float(np.max(np.abs(expected))))
        verification.update(max_abs_error=error, tolerance=tolerance, against=str(model_path))
        if not error <= tolerance:
            raise VerificationError(f"rewritten graph differs from {model_path} by {error:.3g} "
                                    f"> {tolerance:.3g}; nothing written")
    record = derive(model_path, parent.kind if parent else "onnx-fp32", parent)
    record.input_shape, record.output_shape = input_shape(model), output_shape(model)
    record.sections.update(rewrite={"passes": passes, **{k: getattr(options, k) for k in
                                                         ("pixel_shuffle", "fold_meanshift")}},
                           rewrite_verification=verification)
    return save_onnx(model, out, record)
