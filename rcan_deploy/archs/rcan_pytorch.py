"""RCAN-PyTorch (Lornatang) layout, including its ``rcan_cbam`` variant.

Input and output are RGB in 0..1; ``mean`` is a registered buffer [1, 3, 1, 1] of the checkpoint.
Keys: ``conv1``, ``trunk.{g}.residual_group.{b}.residual_channel_attention_block.{0,2}``
(+ ``.3.channel_attention_layer.{1,3}``), ``trunk.{g}.residual_group.{B}``, ``conv2``,
``upsampling.{i}.upsample_block.0``, ``conv3``. The CBAM variant's blocks hold ``conv1``,
``conv2``, ``cbam.channel_attention.shared_mlp.{0,2}`` (no bias) and
``cbam.spatial_attention.conv`` (7x7, 2 -> 1, no bias); its upsampler is one
``upsampling.upsample_block.0`` conv + PixelShuffle(scale), and its output is clamped to 0..1.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DIV2K_RGB_MEAN, PoolAttention, Residual, conv3x3, rcab_layers
from .config import RCANConfig

NATIVE_RANGE = 1


class _UpsampleBlock(nn.Module):
    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.upsample_block = nn.Sequential(conv3x3(channels, channels * factor * factor),
                                            nn.PixelShuffle(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample_block(x)


class _ChannelAttentionCBAM(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.shared_mlp = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.shared_mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        peak = self.shared_mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + peak)


class _SpatialAttentionCBAM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class _CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.channel_attention = _ChannelAttentionCBAM(channels, reduction)
        self.spatial_attention = _SpatialAttentionCBAM()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


class _RCABCBAM(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.cbam = _CBAM(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cbam(self.conv2(self.relu(self.conv1(x))))


def _block(config: RCANConfig) -> nn.Module:
    c = config.n_feats
    if config.attention == "cbam":
        return _RCABCBAM(c, config.reduction)
    attention = (PoolAttention("channel_attention_layer", c, config.reduction)
                 if config.attention == "ca" else None)
    return Residual("residual_channel_attention_block", nn.Sequential(*rcab_layers(c, attention)))


class RCANPyTorch(nn.Module):
    """RCAN with RCAN-PyTorch module names; ``forward`` takes RGB 0..1 NCHW."""

    def __init__(self, config: RCANConfig) -> None:
        super().__init__()
        self.config = config
        c = config.n_feats
        self.conv1 = conv3x3(3, c, stride=config.head_stride)
        self.trunk = nn.Sequential(*[
            Residual("residual_group", nn.Sequential(
                *[_block(config) for _ in range(config.n_resblocks)], conv3x3(c, c)))
            for _ in range(config.n_resgroups)])
        self.conv2 = conv3x3(c, c)
        stages = [_UpsampleBlock(c, r) for r in config.shuffle_factors()]
        # The CBAM variant registers its single upsample block directly, not in a list.
        self.upsampling = stages[0] if config.attention == "cbam" else nn.Sequential(*stages)
        self.conv3 = conv3x3(c, 3)
        self.register_buffer("mean", torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x - self.mean)
        x = x + self.conv2(self.trunk(x))
        x = self.conv3(self.upsampling(x)) + self.mean
        return x.clamp(0.0, 1.0) if self.config.attention == "cbam" else x
