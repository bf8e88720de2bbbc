"""Closed-form algebra of stride-1 convolutions and pixel shuffles (float64, NumPy).

A :class:`ConvSpec` is a 2-D "same" convolution: weight (O, I, kh, kw), bias (O,), pads
(top, left, bottom, right) with top + bottom = kh - 1 and left + right = kw - 1, so the output has
the input's size. Two identities collapse a linear upsampler tail into one conv:

- a conv applied after PixelShuffle(r) (CRD channel order) equals a conv at the low resolution
  whose outputs are the r*r phases of each output pixel, followed by PixelShuffle(r)
  (:func:`conv_before_shuffle`);
- two convs at one resolution with nothing between them are one conv whose kernel is the full
  correlation of the two kernels (:func:`compose`).

Both hold away from the image border only: the original pads each intermediate tensor with
zeros, while the composed conv sees there what the earlier conv computes. How far into the output
that reaches, and which input rows recompute it exactly, is :func:`border_extent`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDES = ("top", "left", "bottom", "right")


@dataclass(frozen=True)
class ConvSpec:
    """A stride-1, dilation-1, group-1 conv with "same" output size (see module docstring)."""

    weight: np.ndarray  # (O, I, kh, kw)
    bias: np.ndarray  # (O,)
    pads: tuple[int, int, int, int]  # top, left, bottom, right

    def __post_init__(self) -> None:
        _, _, kh, kw = self.weight.shape
        top, left, bottom, right = self.pads
        if top + bottom != kh - 1 or left + right != kw - 1 or min(self.pads) < 0:
            raise ValueError(f"pads {self.pads} do not keep the size for a {kh}x{kw} kernel")

    def macs_per_pixel(self) -> int:
        """Multiply-adds per output pixel (thop convention, bias excluded)."""
        out_channels, in_channels, kh, kw = self.weight.shape
        return out_channels * in_channels * kh * kw


def crd_order(channels: int, r: int, mode: str) -> np.ndarray:
    """Indices that put the channels of a ``mode`` (CRD or DCR) pixel shuffle input in CRD order:
    ``x_crd = x[order]``."""
    if mode == "CRD":
        return np.arange(channels * r * r)
    c, phase = np.divmod(np.arange(channels * r * r), r * r)  # CRD index = c * r*r + phase
    return phase * channels + c  # DCR index = phase * C + c


def conv_before_shuffle(conv: ConvSpec, r: int) -> ConvSpec:
    """The low-resolution conv G with conv(PixelShuffle_r(v)) = PixelShuffle_r(G(v)) away from the
    border (CRD order for the channels of v and of G's output)."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    top, left = conv.pads[0], conv.pads[1]
    # row tap t of output phase a reads high-res row offset a - top + t: low-res offset
    # (a - top + t) // r, phase (a - top + t) % r; likewise for columns
    row_lo, row_hi = (-top) // r, (r - 1 - top + kh - 1) // r
    col_lo, col_hi = (-left) // r, (r - 1 - left + kw - 1) // r
    weight = np.zeros((out_channels, r, r, in_channels, r, r,
                       row_hi - row_lo + 1, col_hi - col_lo + 1))
    for a in range(r):
        for t in range(kh):
            dy, p = divmod(a - top + t, r)
            for b in range(r):
                for s in range(kw):
                    dx, q = divmod(b - left + s, r)
                    weight[:, a, b, :, p, q, dy - row_lo, dx - col_lo] += conv.weight[:, :, t, s]
    weight = weight.reshape(out_channels * r * r, in_channels * r * r, *weight.shape[6:])
    return ConvSpec(weight, np.repeat(conv.bias, r * r), (-row_lo, -col_lo, row_hi, col_hi))


def compose(first: ConvSpec, second: ConvSpec) -> ConvSpec:
    """One conv equal to ``second(first(x))`` away from the border (same resolution)."""
    a, b = first.weight, second.weight
    weight = np.zeros((b.shape[0], a.shape[1], a.shape[2] + b.shape[2] - 1,
                       a.shape[3] + b.shape[3] - 1))
    for dy in range(b.shape[2]):
        for dx in range(b.shape[3]):
            weight[:, :, dy:dy + a.shape[2], dx:dx + a.shape[3]] += np.einsum(
                "om,mikl->oikl", b[:, :, dy, dx], a)
    bias = second.bias + b.sum(axis=(2, 3)) @ first.bias
    return ConvSpec(weight, bias, tuple(p + q for p, q in zip(first.pads, second.pads)))


def merge_shuffles(conv: ConvSpec, factors: list[int]) -> ConvSpec:
    """``conv`` with its output channels reordered so that one PixelShuffle(prod(factors)) (CRD)
    gives the image that PixelShuffle(factors[0]), then factors[1], ... (CRD) give."""
    total = int(np.prod(factors))
    rest = np.arange(conv.weight.shape[0])
    rows = np.zeros_like(rest)
    cols = np.zeros_like(rest)
    for f in factors:  # the first shuffle owns the lowest channel digits, the highest phase digits
        rest, phase = np.divmod(rest, f * f)
        rows, cols = rows * f + phase // f, cols * f + phase % f
    order = np.argsort(rest * total * total + rows * total + cols)
    return ConvSpec(conv.weight[order], conv.bias[order], conv.pads)


def border_margins(stages: list[tuple[ConvSpec, int]], last: ConvSpec) -> dict[str, int]:
    """Per side, how many output pixels of the fused conv differ from the original chain.

    ``stages`` are (conv, shuffle factor) in application order; ``last`` is the final conv. The
    first conv's zero padding is the fused conv's own; every later conv's padding is not: a
    margin m grows to m * r through a shuffle and by the near-side pad through a conv.
    """
    margins = {}
    for near, side in enumerate(SIDES):
        margin = 0
        for conv, (_, r) in zip([conv for conv, _ in stages[1:]] + [last], stages):
            margin = margin * r + conv.pads[near]
        margins[side] = margin
    return margins


def strip_size(stages: list[tuple[ConvSpec, int]], last: ConvSpec, pixels: int, side: str) -> int:
    """Input pixels from the ``side`` border from which the original chain computes its first
    ``pixels`` output pixels (from that border) exactly: their whole dependency."""
    far = (SIDES.index(side) + 2) % 4
    index = pixels - 1
    for conv, r in [(last, 1), *[(conv, r) for conv, r in reversed(stages)]]:
        index = index // r + conv.pads[far]
    return index + 1


def row_phase_groups(conv: ConvSpec, factor: int) -> list[ConvSpec]:
    """``conv`` (output channels in CRD order for PixelShuffle(factor)) as convs over runs of
    output row phases, in DCR channel order: concatenated along channels and followed by
    DepthToSpace(factor, DCR) they give the same image. Each run keeps only the kernel rows its
    phases use (a conv composed with a shuffle leaves the outer rows of most phases zero), so the
    pieces cost fewer MACs than the whole."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    channels = out_channels // (factor * factor)
    o, a, b = np.meshgrid(np.arange(channels), np.arange(factor), np.arange(factor),
                          indexing="ij")
    crd = (o * factor * factor + a * factor + b).ravel()
    dcr = ((a * factor + b) * channels + o).ravel()
    order = np.empty(out_channels, dtype=np.int64)
    order[dcr] = crd  # DCR channel k is CRD channel order[k]
    weight, bias = conv.weight[order], conv.bias[order]
    per_phase = factor * channels  # DCR channels of one row phase a: [a * per_phase, ...)
    rows = []
    for phase in range(factor):
        used = np.flatnonzero(np.abs(weight[phase * per_phase:(phase + 1) * per_phase])
                              .sum(axis=(0, 1, 3)))
        rows.append((int(used.min()), int(used.max())) if used.size else (0, 0))
    groups, start = [], 0
    for phase in range(1, factor + 1):
        if phase == factor or rows[phase] != rows[start]:
            top, bottom = rows[start]
            channels_slice = slice(start * per_phase, phase * per_phase)
            pads = (conv.pads[0] - top, conv.pads[1], conv.pads[2] - (kh - 1 - bottom),
                    conv.pads[3])
            groups.append(ConvSpec(weight[channels_slice, :, top:bottom + 1], bias[channels_slice],
                                   pads))
            start = phase
    return groups
