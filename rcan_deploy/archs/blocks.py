"""Layers shared by the RCAN layouts (the maths is the same; only module names differ)."""

from __future__ import annotations

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=True)


class MeanShift(nn.Conv2d):
    """Official RCAN mean shift: a real 1x1 conv (identity weight, bias = sign*range*mean).

    It is trainable in the original code, so checkpoints may hold other values: they are loaded.
    """

    def __init__(self, rgb_range: float = 255.0, sign: int = -1,
                 rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean))


class CALayer(nn.Module):
    """Official channel attention: global average pool, 1x1 squeeze, ReLU, 1x1 excite, sigmoid."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class PoolAttention(nn.Module):
    """Channel attention as BasicSR/RCAN-PyTorch write it: one Sequential starting with the pool,
    registered under ``name`` (``attention`` or ``channel_attention_layer``)."""

    def __init__(self, name: str, channels: int, reduction: int) -> None:
        super().__init__()
        self._name = name
        self.add_module(name, nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True), nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * getattr(self, self._name)(x)


def upsampler(n_feats: int, factors: list[int]) -> nn.Sequential:
    """[conv C -> r^2 C, PixelShuffle(r)] for each factor r (official/BasicSR index layout)."""
    layers: list[nn.Module] = []
    for r in factors:
        layers += [conv3x3(n_feats, r * r * n_feats), nn.PixelShuffle(r)]
    return nn.Sequential(*layers)


def rcab_layers(n_feats: int, attention: nn.Module | None) -> list[nn.Module]:
    """conv, ReLU, conv (+ attention): the body of one residual channel attention block."""
    layers: list[nn.Module] = [conv3x3(n_feats, n_feats), nn.ReLU(inplace=True),
                               conv3x3(n_feats, n_feats)]
    return layers + ([attention] if attention is not None else [])


class Residual(nn.Module):
    """``x + scale * body(x)`` where ``body`` is registered under the given attribute name
    (``scale`` is BasicSR's ``res_scale``, 1 elsewhere)."""

    def __init__(self, name: str, body: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self._name, self.scale = name, scale
        self.add_module(name, body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = getattr(self, self._name)(x)
        return x + (body if self.scale == 1.0 else body * self.scale)
