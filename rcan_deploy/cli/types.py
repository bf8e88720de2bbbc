"""Parameter types and helpers shared by the click commands."""

from __future__ import annotations

import math
from dataclasses import MISSING, fields

import click

MAX_SEED = 2**32 - 1


def default(cls, name: str):
    """The default of field ``name`` of the option class ``cls``."""
    spec = next(f for f in fields(cls) if f.name == name)
    return spec.default_factory() if spec.default is MISSING else spec.default


class FiniteFloat(click.ParamType):
    """A finite float, at least ``low`` (strictly above it with ``open_low``)."""

    name = "number"

    def __init__(self, low: float = 0.0, open_low: bool = False) -> None:
        self.low, self.open_low = low, open_low

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        too_low = number <= self.low if self.open_low else number < self.low
        if not math.isfinite(number) or too_low:
            bound = f"> {self.low}" if self.open_low else f">= {self.low}"
            self.fail(f"{value!r}: expected a finite number {bound}", param, ctx)
        return number


SEED = click.IntRange(0, MAX_SEED)
