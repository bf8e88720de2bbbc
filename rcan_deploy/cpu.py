"""What this CPU's int8 convolutions compute: VNNI, AMX, and the int16 pair saturation.

x86 int8 convolution kernels (oneDNN in OpenVINO, MLAS in ONNX Runtime) multiply unsigned 8-bit
activations by signed 8-bit weights. With AVX512_VNNI or AVX_VNNI (``vpdpbusd``) or AMX the
products are summed in int32. Without them the kernels use ``vpmaddubsw``, which adds each pair
of adjacent products into a *saturating int16*: with activations up to 255 and weights up to
127 a pair reaches 64770 and clips at 32767, so the layer silently computes something else. Two
weights of magnitude <= 64 keep every pair within 255 * 128 = 32640: 7-bit weights are exact.

Detection reads the flags of ``/proc/cpuinfo`` (Linux). Elsewhere, or on a CPU that is not x86,
the answer is unknown, and :attr:`CpuInfo.needs_reduced_range` then says True (the safe choice:
7-bit weights cost a little accuracy where 8-bit ones could break a layer).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "avx512bw", "avx2")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuInfo:
    """The int8-relevant features of a CPU. ``flags`` is None when they could not be read."""

    machine: str  # platform.machine()
    model: str | None
    flags: dict[str, bool] | None
    source: str  # where the flags came from, or why there are none

    @property
    def x86(self) -> bool:
        return self.machine.lower() in _X86

    @property
    def vnni(self) -> bool | None:
        """AVX512_VNNI or AVX_VNNI (None: unknown)."""
        return None if self.flags is None else self.flags["avx512_vnni"] or self.flags["avx_vnni"]

    @property
    def amx(self) -> bool | None:
        return None if self.flags is None else self.flags["amx_int8"] and self.flags["amx_tile"]

    @property
    def needs_reduced_range(self) -> bool:
        """Whether u8 x s8 convolutions may saturate int16 pair sums here (True when unknown)."""
        return not (self.x86 and self.flags is not None and (self.vnni or self.amx))

    @property
    def reason(self) -> str:
        """One line saying why :attr:`needs_reduced_range` is what it is."""
        if self.flags is None:
            return f"CPU features unknown ({self.source}): assuming no VNNI (the safe choice)"
        if not self.x86:
            return (f"{self.machine} CPU: the int8 kernels are not known here, assuming they may "
                    "saturate (the safe choice)")
        if self.vnni or self.amx:
            have = [name.upper() for name in ("avx512_vnni", "avx_vnni", "amx_int8")
                    if self.flags[name]]
            return f"{', '.join(have)}: int8 products are summed in int32"
        return ("x86 CPU without VNNI or AMX: u8 x s8 convolutions sum pairs of products in "
                "saturating int16")

    def to_dict(self) -> dict:
        return {"machine": self.machine, "model": self.model, "flags": self.flags,
                "source": self.source, "vnni": self.vnni, "amx": self.amx,
                "needs_reduced_range": self.needs_reduced_range, "reason": self.reason}


def detect_cpu(cpuinfo: str | Path = CPUINFO, machine: str | None = None) -> CpuInfo:
    """The features of this CPU (``cpuinfo`` and ``machine`` are for tests)."""
    machine = machine or platform.machine() or "unknown"
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError as exc:
        return CpuInfo(machine, None, None, f"{cpuinfo} unreadable: {exc.strerror or exc}")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "flags" not in fields:  # not x86 Linux (ARM lists "Features"), or not Linux at all
        return CpuInfo(machine, fields.get("model name"), None, f"no 'flags' line in {cpuinfo}")
    present = set(fields["flags"].split())
    return CpuInfo(machine, fields.get("model name"), {f: f in present for f in INT8_FLAGS},
                   str(cpuinfo))
