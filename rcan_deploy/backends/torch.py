"""PyTorch runner: the network an ONNX graph was exported from, rebuilt from its sidecars."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ModelSource, Runner, import_optional, model_path


class TorchRunner(Runner):
    """Runs the PyTorch network behind an ONNX file (FP32 or INT8 QDQ: always the FP32
    network) at any input size, on CUDA when available, else CPU.

    The FP32 graph is found through the sidecar chain; its sidecar gives the layout, variant,
    scale and weights (checkpoint path, checked by sha256, or the random seed). Inputs and
    outputs use the graph's value range (``input_range`` of ``model``'s sidecar) and are
    converted to and from the network's native range. ``threads`` sets torch's CPU threads."""

    name = "torch"

    def __init__(self, model: ModelSource, threads: int | None = None):
        super().__init__(model)
        self.threads = threads
        self.network = None

    def activate_impl(self) -> None:
        from ..errors import UserError
        from ..record import chain_value, lineage

        torch = import_optional("torch", "torch")
        path = model_path(self.model)
        if path is None:
            raise UserError("the torch runtime needs an ONNX file with a sidecar, not a ModelProto")
        chain = lineage(path)
        fp32 = chain[-1]
        if fp32.record is None:
            raise UserError(f"{fp32.path}: no sidecar says which network it was exported from, so "
                            "the torch runtime cannot rebuild it")
        resolved = _rebuild(fp32.path, fp32.record)
        graph_range = chain_value(chain, "input_range") or resolved.native_range
        self.factor = resolved.native_range / graph_range
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.network = resolved.model.eval().to(self.device)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = self.network(torch.from_numpy(x).to(self.device) * self.factor) / self.factor
        return y.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self.network = None


def _rebuild(fp32_path, record):
    """The ResolvedModel that an FP32 graph's record describes, checked against the record."""
    from ..artifacts import sha256_file, sidecar_path
    from ..checkpoints import resolve_model
    from ..errors import UserError

    side = sidecar_path(fp32_path)
    weights = record.weights or {}
    config = dict(record.config or {})
    forward = config.pop("forward", None)
    if record.source is None or "scale" not in config or not weights:
        raise UserError(f"{side}: needs source, config.scale and weights to rebuild the network")
    variant = record.variant
    variant = None if variant == "custom" else variant
    if "random" in weights:
        resolved = resolve_model(record.source, variant, config["scale"],
                                 random_weights=True, seed=int(weights["random"]),
                                 forward=forward)
    else:
        if not Path(weights.get("path", "")).is_file():
            raise UserError(f"{side}: checkpoint {weights.get('path')} does not exist")
        if weights.get("sha256") and sha256_file(weights["path"]) != weights["sha256"]:
            raise UserError(f"{weights['path']}: sha256 differs from the one in {side} "
                            "(checkpoint changed since the export)")
        # a shipped checkpoint is resolved as the export did (converted to the graph's layout)
        resolved = resolve_model(record.source, variant, config["scale"],
                                 None if weights.get("shipped") else weights["path"],
                                 param_key=weights.get("param_key"), forward=forward)
    if resolved.config.as_dict() != config:
        raise UserError(f"{side}: rebuilt network {resolved.config.describe()} differs from the "
                        f"recorded config")
    return resolved
