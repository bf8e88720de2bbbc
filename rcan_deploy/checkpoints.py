"""Read RCAN checkpoints of any supported layout, infer the architecture, load strictly.

Layouts: official plain state_dict; BasicSR ``{'params', 'params_ema'}``; RCAN-PyTorch
``.pth.tar`` ``{'state_dict', 'ema_state_dict', ...}``. A ``module.`` prefix (DataParallel,
AveragedModel) is stripped. The architecture (groups, blocks, features, reduction, scale,
attention, SR4K-ness) is inferred from tensor names and shapes, so the file alone is enough.
Loading is strict: a missing, unexpected or mis-shaped tensor is an error naming the keys.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import defaults
from .archs import RCANConfig, build_model, canonical_variant, get_source, match_variant, variant_config
from .artifacts import sha256_file
from .errors import UserError, short_reason

# Container keys, in order of preference when the user does not choose (--param-key).
PARAM_KEYS = ("params_ema", "params", "state_dict", "ema_state_dict")
_DROPPED_KEYS = ("n_averaged",)  # AveragedModel bookkeeping in RCAN-PyTorch EMA checkpoints


@dataclass(frozen=True)
class _Layout:
    """Key patterns that identify a layout and reveal its hyper-parameters."""

    head: str
    block: str  # regex with groups (g, b) matching the first conv of every block
    attention: dict[str, str]  # attention kind -> key of its squeeze conv in block 0 of group 0
    upsampler: str  # regex with one group (stage index) matching upsampler conv weights


_LAYOUTS = {
    "official": _Layout(
        head="head.0.weight",
        block=r"body\.(\d+)\.body\.(\d+)\.body\.0\.weight",
        attention={"ca": "body.0.body.0.body.3.conv_du.0.weight"},
        upsampler=r"tail\.0\.(\d+)\.weight"),
    "basicsr": _Layout(
        head="conv_first.weight",
        block=r"body\.(\d+)\.residual_group\.(\d+)\.rcab\.0\.weight",
        attention={"ca": "body.0.residual_group.0.rcab.3.attention.1.weight"},
        upsampler=r"upsample\.(\d+)\.weight"),
    "rcan-pytorch": _Layout(
        head="conv1.weight",
        block=r"trunk\.(\d+)\.residual_group\.(\d+)\.(?:residual_channel_attention_block\.0|conv1)\.weight",
        attention={
            "ca": "trunk.0.residual_group.0.residual_channel_attention_block.3."
                  "channel_attention_layer.1.weight",
            "cbam": "trunk.0.residual_group.0.cbam.channel_attention.shared_mlp.0.weight"},
        upsampler=r"upsampling\.(?:(\d+)\.)?upsample_block\.0\.weight"),
}


@dataclass
class ResolvedModel:
    """A built network and how it was obtained (recorded in every artifact's sidecar)."""

    model: nn.Module
    source: str
    config: RCANConfig
    variant: str  # registered variant name, or "custom"
    weights: dict = field(default_factory=dict)  # path, sha256, param_key; or {"random": seed}
    input_range: int | None = None  # the network's own range when it is not the layout's
    forward: dict = field(default_factory=dict)  # BasicSR img_range, rgb_mean, res_scale

    @property
    def native_range(self) -> int:
        return self.input_range or get_source(self.source).native_range

    def describe(self) -> dict:
        config = {**self.config.as_dict(), **({"forward": self.forward} if self.forward else {})}
        return {"source": self.source, "variant": self.variant, "config": config,
                "native_input_range": self.native_range, "weights": self.weights}


def read_state_dict(path: str | Path, param_key: str | None = None) -> tuple[dict, str | None]:
    """Tensors of a checkpoint file (container unwrapped, ``module.`` stripped) and the key used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file")
    if _is_torchscript(path):
        obj, used_format = _torchscript_state(path), "torchscript"
    else:
        obj, used_format = _load_plain(path), None
    if used_format:
        obj = {"state_dict": obj}
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"--weights {path}: expected a dict of tensors, found {type(obj).__name__}")
    used = None
    containers = [k for k in PARAM_KEYS if isinstance(obj.get(k), dict)]
    if param_key is not None:
        if not isinstance(obj.get(param_key), dict):
            found = ", ".join(containers) or "none (a plain state_dict)"
            raise UserError(f"--param-key {param_key}: not in {path}; it holds: {found}")
        used = param_key
    elif containers:
        used = containers[0]
    state = obj[used] if used else obj
    tensors = {_strip_prefix(k): v for k, v in state.items()
               if isinstance(v, torch.Tensor) and k not in _DROPPED_KEYS}
    if not tensors:
        raise UserError(f"--weights {path}: holds no tensors (keys: {_first(list(obj))})")
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise UserError(f"--weights {path}: tensor {key} is {str(tensor.dtype)[6:]}; RCAN "
                            "weights are floating point (the file is not an RCAN checkpoint, or "
                            "was edited)")
        if not torch.isfinite(tensor).all():
            raise UserError(f"--weights {path}: tensor {key} holds NaN or infinite values (a "
                            "diverged training run?)")
    return tensors, used


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torchscript_state(path: Path) -> dict:
    """The tensors of a TorchScript module (no Python code of the file runs)."""
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit raises RuntimeError subclasses with C++ traces
        raise UserError(f"--weights {path}: a TorchScript archive that torch cannot load "
                        f"({short_reason(exc)})") from None
    return dict(module.state_dict())


def _load_plain(path: Path):
    """``torch.load`` with ``weights_only``: tensors and containers only, no pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            detail = str(exc).split("WeightsUnpickler error:")[-1]
            raise UserError(f"--weights {path}: not a readable PyTorch checkpoint "
                            f"({short_reason(Exception(detail))})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a pickled {found.group(1)} object" if found else "pickled Python objects"
        raise UserError(f"--weights {path}: holds {what}, not a state_dict; load it in the code "
                        "that made it and save the weights alone with "
                        "torch.save(model.state_dict(), 'weights.pt')") from None
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise UserError(f"--weights {path}: not a readable PyTorch checkpoint "
                        f"({short_reason(exc)})") from None


def _strip_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _first(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def detect_source(state: dict) -> str:
    """Which layout a state_dict is in, from its key names."""
    for name, layout in _LAYOUTS.items():
        if layout.head in state:
            return name
    raise UserError("tensors match no RCAN layout (expected head.0.* official, conv_first.* "
                    f"basicsr or conv1.* rcan-pytorch); first keys: {_first(sorted(state))}")


def infer_config(source: str, state: dict) -> RCANConfig:
    """Hyper-parameters of the network a state_dict of layout ``source`` belongs to.

    The stride of the head conv is not visible in tensor shapes: in the official and BasicSR
    layouts a single upsampler conv with PixelShuffle factor >= 4 is the SR4K design (stride-2
    head, factor 2 * scale); the paper upsampler uses x2 stages and a single conv only for x3.
    """
    layout = _LAYOUTS[source]
    head = state[layout.head]
    if head.ndim != 4 or head.shape[1] != 3:
        raise UserError(f"{layout.head} has shape {list(head.shape)}, expected [C, 3, 3, 3]")
    n_feats = int(head.shape[0])
    blocks = [tuple(map(int, m.groups())) for k in state if (m := re.fullmatch(layout.block, k))]
    if not blocks:
        raise UserError(f"no residual blocks found (no key like {layout.block!r})")
    n_resgroups = max(g for g, _ in blocks) + 1
    n_resblocks = sum(1 for g, _ in blocks if g == 0)
    attention, reduction = "none", 16
    for kind, key in layout.attention.items():
        if key in state:
            attention, reduction = kind, n_feats // int(state[key].shape[0])
    stages = sorted((int(m.group(1) or 0), v) for k, v in state.items()
                    if (m := re.fullmatch(layout.upsampler, k)))
    if not stages:
        raise UserError(f"no upsampler conv found (no key like {layout.upsampler!r})")
    factors = []
    for _, weight in stages:
        ratio = weight.shape[0] / max(int(weight.shape[1]), 1)
        factor = math.isqrt(int(ratio))
        if weight.ndim != 4 or factor * factor != ratio or factor < 2:
            raise UserError(f"upsampler conv of shape {list(weight.shape)} is not C -> r^2*C")
        factors.append(factor)
    head_stride, upsampler = 1, "stages"
    if len(factors) == 1 and (factors[0] >= 4 or attention == "cbam"):
        upsampler = "single"
        if source != "rcan-pytorch":
            if factors[0] % 2:
                raise UserError(f"single upsampler factor {factors[0]} is odd: not an SR4K net")
            head_stride = 2
    elif len(factors) > 1 and set(factors) != {2}:
        raise UserError(f"upsampler factors {factors}: expected x2 stages")
    scale = math.prod(factors) // head_stride
    return RCANConfig(n_resgroups=n_resgroups, n_resblocks=n_resblocks, n_feats=n_feats,
                      reduction=reduction, scale=scale, attention=attention,
                      head_stride=head_stride, upsampler=upsampler)


def load_strict(model: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped tensor is an error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_first(missing, 3)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_first(unexpected, 3)}")
    if wrong:
        problems.append(f"wrong shape {len(wrong)} (checkpoint vs model): {_first(wrong, 2)}")
    if problems:
        raise UserError(f"{what}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_checkpoint(path: str | Path, source: str | None = None, variant: str | None = None,
                    scale: int | None = None, param_key: str | None = None,
                    forward: dict | None = None) -> ResolvedModel:
    """Build the network a checkpoint holds and load it strictly.

    ``source``, ``variant`` and ``scale`` are optional checks: when given and the checkpoint
    says otherwise, the result is an error rather than a silently different network.
    """
    state, used_key = read_state_dict(path, param_key)
    try:
        detected = detect_source(state)
    except UserError as exc:
        raise UserError(f"--weights {path}: {exc}") from None
    check_forward(detected, forward)
    if detected == "basicsr" and "mean" in state:  # a TorchScript BasicSR RCAN keeps rgb_mean
        mean = [float(v) for v in state.pop("mean").flatten()]
        forward = {"rgb_mean": tuple(mean), **(forward or {})} if len(mean) == 3 else forward
    if source is not None and get_source(source).name != detected:
        raise UserError(f"--source {source}, but {path} is in the {detected} layout")
    config = infer_config(detected, state)
    name = match_variant(config)
    if scale is not None and scale != config.scale:
        raise UserError(f"--scale {scale}, but {path} is a x{config.scale} network")
    if variant is not None:
        wanted = canonical_variant(variant)
        if variant_config(wanted, config.scale) != config:
            raise UserError(f"--variant {wanted}, but {path} is {config.describe()}"
                            f" ({name or 'no registered variant'})")
    model = build_model(detected, config, forward)
    load_strict(model, state, f"{path} does not fit {detected} RCAN {config.describe()}")
    weights = {"path": str(path), "sha256": sha256_file(path), "param_key": used_key}
    native = _official_range(state) if detected == "official" else None
    return ResolvedModel(model, detected, config, name or "custom", weights, native,
                         dict(forward or {}))


def _official_range(state: dict) -> int:
    """The rgb_range an official checkpoint was trained with: its ``sub_mean`` bias is
    -rgb_range * mean, so |bias| <= 1 means inputs in 0..1, else 0..255."""
    bias = state.get("sub_mean.bias")
    return 1 if bias is not None and float(bias.abs().max()) <= 1.5 else 255


def shipped_checkpoint(variant: str, scale: int) -> Path | None:
    """The checkpoint this project trained for ``variant`` x``scale`` (official layout), if any."""
    path = Path(str(resources.files("rcan_deploy").joinpath("shipped_models"))) / \
        f"{variant}_x{scale}.pt"
    return path if path.is_file() else None


def convert_official(resolved: "ResolvedModel", target: str) -> nn.Module:
    """The official-layout network rebuilt in another layout with the same function.

    BasicSR keeps the DIV2K mean as a constant, so the official MeanShift convs must hold their
    default values (identity, +-255 * mean); the tensors are matched in registration order.
    """
    state = resolved.model.state_dict()
    default = build_model("official", resolved.config).state_dict()
    for key in ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"):
        if not torch.allclose(state[key], default[key], atol=1e-5):
            raise UserError(f"{key} differs from the default mean shift: the checkpoint cannot "
                            f"be expressed in the {target} layout; export it with --source official")
    if target != "basicsr":
        raise UserError(f"conversion from the official layout to {target} is not supported")
    model = build_model(target, resolved.config)
    tensors = [v for k, v in state.items() if not k.startswith(("sub_mean.", "add_mean."))]
    target_keys = list(model.state_dict())
    load_strict(model, dict(zip(target_keys, tensors)), f"official -> {target} conversion")
    return model


@dataclass(frozen=True)
class ModelSpec:
    """Which network a command works on: a checkpoint (``weights``, any layout; ``source``,
    ``variant`` and ``scale`` are checks), or a named variant with its shipped checkpoint, or
    seeded random weights. ``img_range``, ``rgb_mean`` and ``res_scale`` are BasicSR's
    constructor arguments, which its checkpoints do not store (standard configs use the
    defaults: 255, the DIV2K mean, 1)."""

    source: str | None = None
    variant: str | None = None
    scale: int | None = None
    weights: str | Path | None = None
    random_weights: bool = False
    param_key: str | None = None
    seed: int = 0
    img_range: float | None = None
    rgb_mean: tuple[float, float, float] | None = None
    res_scale: float | None = None

    def resolve(self) -> "ResolvedModel":
        forward = {k: v for k, v in (("img_range", self.img_range), ("rgb_mean", self.rgb_mean),
                                     ("res_scale", self.res_scale)) if v is not None}
        return resolve_model(self.source, self.variant, self.scale, self.weights,
                             self.random_weights, self.param_key, self.seed, forward)


def check_forward(source: str, forward: dict | None) -> None:
    """BasicSR's forward constants apply to the basicsr layout only, and must be sane."""
    if not forward:
        return
    if source != "basicsr":
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in forward)
        raise UserError(f"{flags} apply to --source basicsr only (the {source} layout keeps its "
                        "mean shift in the checkpoint)")
    if "img_range" in forward and not (math.isfinite(forward["img_range"])
                                       and forward["img_range"] > 0):
        raise UserError(f"--img-range {forward['img_range']}: expected a positive number")
    if "res_scale" in forward and not math.isfinite(forward["res_scale"]):
        raise UserError(f"--res-scale {forward['res_scale']}: expected a finite number")
    mean = forward.get("rgb_mean")
    if mean is not None and (len(mean) != 3 or not all(math.isfinite(m) for m in mean)):
        raise UserError(f"--rgb-mean {mean}: expected three finite numbers R,G,B")


def resolve_model(source: str | None = None, variant: str | None = None,
                  scale: int | None = None, weights: str | Path | None = None,
                  random_weights: bool = False, param_key: str | None = None,
                  seed: int = 0, forward: dict | None = None) -> ResolvedModel:
    """The network a command works on: from ``weights``, or freshly initialised with ``seed``."""
    if weights is not None and random_weights:
        raise UserError("--weights and --random-weights exclude each other; pass one")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int)
                              or not 2 <= scale <= 16):
        raise UserError(f"--scale {scale}: expected an integer 2..16")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed}: expected an integer 0..2**32-1")
    if weights is not None:
        return load_checkpoint(weights, source, variant, scale, param_key, forward)
    name = canonical_variant(variant or defaults.VARIANT)
    if param_key is not None:
        raise UserError("--param-key applies only with --weights")
    source = get_source(source or defaults.SOURCE).name
    scale = defaults.SCALE if scale is None else scale
    check_forward(source, forward)
    if not random_weights:
        shipped = shipped_checkpoint(name, scale)
        if shipped is None:
            raise UserError(f"no shipped checkpoint for {name} x{scale}: pass --weights PATH "
                            "(a checkpoint) or --random-weights")
        if forward:
            raise UserError("--img-range, --rgb-mean and --res-scale describe a BasicSR "
                            "checkpoint: pass it with --weights")
        resolved = load_checkpoint(shipped, "official", name, scale)
        resolved.weights["shipped"] = True
        if source != "official":
            resolved.model = convert_official(resolved, source).eval()
            resolved.source, resolved.input_range = source, None
            resolved.weights["converted_from"] = "official"
        return resolved
    config = variant_config(name, scale)
    torch.manual_seed(seed)
    return ResolvedModel(build_model(source, config, forward), source, config, name,
                         {"random": seed}, forward=dict(forward or {}))
