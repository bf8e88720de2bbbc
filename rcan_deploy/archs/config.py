"""Architecture hyper-parameters shared by every RCAN layout, and the named variants."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..errors import UserError

ATTENTIONS = ("ca", "none", "cbam")
UPSAMPLERS = ("stages", "single")


@dataclass(frozen=True)
class RCANConfig:
    """Hyper-parameters of one RCAN network, independent of the checkpoint layout.

    Args:
        n_resgroups: residual groups (paper 10).
        n_resblocks: RCAB blocks per group (paper 20).
        n_feats: feature channels (paper 64).
        reduction: channel-attention squeeze factor (paper 16); unused without attention.
        scale: output upscaling factor (2, 3, 4, 8; SR4K any).
        attention: "ca" (paper channel attention), "none" (SR4K), "cbam" (RCAN-PyTorch CBAM).
        head_stride: stride of the head conv; 2 for the SR4K variants (body at half size).
        upsampler: "stages" (paper: x2 stages or one x3 stage) or "single" (one conv and one
            PixelShuffle by head_stride * scale).
    """

    n_resgroups: int = 10
    n_resblocks: int = 20
    n_feats: int = 64
    reduction: int = 16
    scale: int = 2
    attention: str = "ca"
    head_stride: int = 1
    upsampler: str = "stages"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise UserError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.upsampler not in UPSAMPLERS:
            raise UserError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if self.head_stride not in (1, 2):
            raise UserError(f"head_stride must be 1 or 2, got {self.head_stride}")
        if self.scale < 1 or (self.upsampler == "stages" and not _paper_scale(self.scale)):
            raise UserError(f"--scale {self.scale}: the paper upsampler supports 2, 3, 4, 8 (2^n)")
        if self.attention != "none" and self.n_feats // self.reduction < 1:
            raise UserError(f"reduction {self.reduction} is larger than n_feats {self.n_feats}")

    def shuffle_factors(self) -> list[int]:
        """PixelShuffle factor of each upsampler stage."""
        if self.upsampler == "single":
            return [self.head_stride * self.scale]
        if self.scale == 3:
            return [3]
        return [2] * int(math.log2(self.scale))

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        att = {"ca": "CA", "none": "no CA", "cbam": "CBAM"}[self.attention]
        text = f"{self.n_resgroups}x{self.n_resblocks}, {self.n_feats} feats, {att}, x{self.scale}"
        return text + (", stride-2 head" if self.head_stride == 2 else "")


def _paper_scale(scale: int) -> bool:
    return scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)


_SR4K = dict(attention="none", head_stride=2, upsampler="single")

# Named variants: hyper-parameters without the scale (given separately, default 2).
VARIANTS: dict[str, dict] = {
    "rcan": dict(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16),
    "rcan-slim": dict(n_resgroups=3, n_resblocks=2, n_feats=32, reduction=16),
    "rcan-sr4k": dict(n_resgroups=3, n_resblocks=2, n_feats=32, **_SR4K),
    "rcan2-sr4k": dict(n_resgroups=2, n_resblocks=2, n_feats=16, **_SR4K),
    "rcan-cbam": dict(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16,
                      attention="cbam", upsampler="single"),
}
VARIANT_HELP = {
    "rcan": "paper RCAN: 10 groups x 20 blocks, 64 feats, channel attention r16",
    "rcan-slim": "paper structure, slim: 3 x 2, 32 feats, channel attention",
    "rcan-sr4k": "VastModelZOO SR4K edge RCAN: 3 x 2, 32 feats, no CA, stride-2 head",
    "rcan2-sr4k": "VastModelZOO SR4K edge RCAN2: 2 x 2, 16 feats, no CA, stride-2 head",
    "rcan-cbam": "RCAN-PyTorch rcan_cbam: 10 x 20, 64 feats, CBAM, one PixelShuffle",
}


def canonical_variant(name: str) -> str:
    """Normalise a variant name (``rcan_cbam`` -> ``rcan-cbam``); error for unknown names."""
    key = name.strip().lower().replace("_", "-")
    if key not in VARIANTS:
        raise UserError(f"--variant {name!r}: unknown; choose one of {', '.join(VARIANTS)}")
    return key


def variant_config(name: str, scale: int = 2) -> RCANConfig:
    """The configuration of a named variant at a given scale."""
    return RCANConfig(scale=scale, **VARIANTS[canonical_variant(name)])


def match_variant(config: RCANConfig) -> str | None:
    """Name of the variant that ``config`` is (at any scale), or None for a custom network."""
    for name, params in VARIANTS.items():
        if replace(RCANConfig(**params), scale=config.scale) == config:
            return name
    return None
