"""BasicSR RCAN (``basicsr/archs/rcan_arch.py``) in its own state_dict layout.

Input and output are RGB in 0..1; the DIV2K mean is a constant, not a tensor of the checkpoint.
Keys: ``conv_first``, ``body.{g}.residual_group.{b}.rcab.{0,2}`` (+ ``rcab.3.attention.{1,3}``),
``body.{g}.conv``, ``conv_after_body``, ``upsample.{0,2,4}``, ``conv_last``. SR4K: stride-2
``conv_first``, no attention, a single ``upsample.0`` conv with PixelShuffle(2 * scale).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DIV2K_RGB_MEAN, PoolAttention, Residual, conv3x3, rcab_layers, upsampler
from .config import RCANConfig

NATIVE_RANGE = 1


class _ResidualGroup(nn.Module):
    def __init__(self, config: RCANConfig, res_scale: float) -> None:
        super().__init__()
        c = config.n_feats
        blocks = []
        for _ in range(config.n_resblocks):
            attention = (PoolAttention("attention", c, config.reduction)
                         if config.attention == "ca" else None)
            blocks.append(Residual("rcab", nn.Sequential(*rcab_layers(c, attention)), res_scale))
        self.residual_group = nn.Sequential(*blocks)
        self.conv = conv3x3(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.residual_group(x))


class BasicSRRCAN(nn.Module):
    """RCAN with BasicSR module names; ``forward`` takes RGB 0..1 NCHW. ``img_range``,
    ``rgb_mean`` and ``res_scale`` are BasicSR's constructor arguments (not in checkpoints)."""

    def __init__(self, config: RCANConfig, img_range: float = 255.0,
                 rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN,
                 res_scale: float = 1.0) -> None:
        super().__init__()
        self.config = config
        self.img_range = img_range
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, 3, 1, 1),
                             persistent=False)
        c = config.n_feats
        self.conv_first = conv3x3(3, c, stride=config.head_stride)
        self.body = nn.Sequential(*[_ResidualGroup(config, res_scale)
                                    for _ in range(config.n_resgroups)])
        self.conv_after_body = conv3x3(c, c)
        self.upsample = upsampler(c, config.shuffle_factors())
        self.conv_last = conv3x3(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first((x - self.mean) * self.img_range)
        x = x + self.conv_after_body(self.body(x))
        return self.conv_last(self.upsample(x)) / self.img_range + self.mean
