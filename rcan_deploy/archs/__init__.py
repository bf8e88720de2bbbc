"""RCAN architectures: one module per checkpoint layout and a registry of named variants.

>>> from rcan_deploy.archs import build_model, variant_config
>>> model = build_model("official", variant_config("rcan-sr4k", scale=2))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from .config import VARIANT_HELP, VARIANTS, RCANConfig, canonical_variant, match_variant, variant_config

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Source:
    """A checkpoint layout: the module and class that build it (imported on first use, so that
    importing the registry does not load torch) and the input range its forward expects."""

    name: str
    module: str
    cls: str
    native_range: int
    description: str

    def builder(self, config: RCANConfig, **forward) -> "nn.Module":
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.cls)(config,
                                                                                       **forward)


SOURCES: dict[str, Source] = {
    "official": Source("official", "official", "OfficialRCAN", 255,
                       "yulunzhang/RCAN plain state_dict, RGB 0..255, MeanShift 1x1 convs"),
    "basicsr": Source("basicsr", "basicsr", "BasicSRRCAN", 1,
                      "BasicSR {'params'|'params_ema'}, RGB 0..1"),
    "rcan-pytorch": Source("rcan-pytorch", "rcan_pytorch", "RCANPyTorch", 1,
                           "Lornatang RCAN-PyTorch .pth.tar {'state_dict'}, RGB 0..1"),
}


def get_source(name: str) -> Source:
    """Look up a layout by name; error naming ``--source`` for unknown names."""
    if name not in SOURCES:
        raise UserError(f"--source {name!r}: unknown; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def build_model(source: str, config: RCANConfig, forward: dict | None = None) -> "nn.Module":
    """Build an RCAN network in the given layout, in eval mode, with default initialisation."""
    if config.attention == "cbam" and (source != "rcan-pytorch" or config.upsampler != "single"):
        raise UserError("CBAM attention exists only in the rcan-pytorch layout (variant rcan-cbam)")
    if config.head_stride == 2 and source == "rcan-pytorch":
        raise UserError("the SR4K variants exist in the official and basicsr layouts only")
    forward = dict(forward or {})
    if "rgb_mean" in forward:
        forward["rgb_mean"] = tuple(forward["rgb_mean"])
    return get_source(source).builder(config, **forward).eval()


__all__ = ["RCANConfig", "SOURCES", "Source", "VARIANTS", "VARIANT_HELP", "build_model",
           "canonical_variant", "get_source", "match_variant", "variant_config"]
