"""Official RCAN (yulunzhang/RCAN, EDSR-PyTorch ``rcan.py``) in its own state_dict layout.

Input and output are RGB in 0..255. Keys: ``sub_mean``, ``head.0``, ``body.{g}.body.{b}.body.{0,2}``
(+ ``body.3.conv_du.{0,2}`` with channel attention), ``body.{g}.body.{n_resblocks}``,
``body.{n_resgroups}``, ``tail.0.{0,2,4}`` (upsampler convs), ``tail.1``, ``add_mean``.
The SR4K variants use the same names with a stride-2 ``head.0``, no ``conv_du`` and a single
``tail.0.0`` conv followed by PixelShuffle(2 * scale).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CALayer, MeanShift, Residual, conv3x3, rcab_layers, upsampler
from .config import RCANConfig

NATIVE_RANGE = 255


class OfficialRCAN(nn.Module):
    """RCAN with the official module names; ``forward`` takes RGB 0..255 NCHW."""

    def __init__(self, config: RCANConfig, rgb_range: float = 255.0) -> None:
        super().__init__()
        self.config = config
        c = config.n_feats
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(conv3x3(3, c, stride=config.head_stride))
        groups: list[nn.Module] = []
        for _ in range(config.n_resgroups):
            blocks: list[nn.Module] = []
            for _ in range(config.n_resblocks):
                attention = CALayer(c, config.reduction) if config.attention == "ca" else None
                blocks.append(Residual("body", nn.Sequential(*rcab_layers(c, attention))))
            groups.append(Residual("body", nn.Sequential(*blocks, conv3x3(c, c))))
        self.body = nn.Sequential(*groups, conv3x3(c, c))
        self.tail = nn.Sequential(upsampler(c, config.shuffle_factors()), conv3x3(c, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        x = x + self.body(x)
        return self.add_mean(self.tail(x))
