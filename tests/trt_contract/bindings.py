"""The real TensorRT Python bindings on a machine without TensorRT or a GPU.

PyPI serves NVIDIA's binding wheels (``tensorrt-cu12-bindings``, ~1.3 MB) apart from the
libraries they link (libnvinfer, libnvonnxparser, libnvinfer_plugin), which it does not serve.
The bindings call only a handful of C entry points of those libraries at import time and when a
Builder or Runtime is made, so stub libraries that define those symbols (returning null) let
``import tensorrt_bindings`` work: every class, method, property, enum member and pybind11
signature of the real release is then there to check code against.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

VERSIONS = ("10.13.3.9", "11.4.0.106")
PACKAGE = "tensorrt-cu12-bindings"
_NETWORK_ERRORS = ("NewConnectionError", "Failed to establish a new connection", "Name or service",
                   "Temporary failure in name resolution", "Network is unreachable",
                   "ConnectTimeout", "ReadTimeout", "Read timed out", "ProxyError",
                   "No route to host", "Connection refused", "SSLError")


class Unavailable(Exception):
    """The bindings cannot be had here (no registry, no C compiler): a reason to skip."""


@dataclass(frozen=True)
class Bindings:
    """An unpacked binding wheel and the folder of stub libraries it loads with."""

    version: str
    site: Path  # holds the tensorrt_bindings package
    stubs: Path  # LD_LIBRARY_PATH for it
    symbols: tuple[str, ...]  # the C symbols the stubs define


def fetch_wheel(version: str, cache: Path) -> Path:
    """The unpacked wheel of ``version`` under ``cache`` (pip download on first use)."""
    site = cache / version / f"cp{sys.version_info[0]}{sys.version_info[1]}" / "site"
    if (site / "tensorrt_bindings" / "tensorrt.so").is_file():
        return site
    wheels = site.with_name("wheel")
    wheels.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--only-binary=:all:", "--dest", str(wheels), f"{PACKAGE}=={version}"],
                          capture_output=True, text=True, timeout=600)
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not found:
        text = done.stdout + done.stderr
        last = (text.strip().splitlines() or ["no output"])[-1]
        # "from versions: none": no reachable index serves any wheel of the package for this
        # interpreter (PyPI serves manylinux_2_28 x86_64 ones for cp310 to cp313).
        if "from versions: none" in text or any(m in text for m in _NETWORK_ERRORS):
            raise Unavailable(f"no reachable package registry serves a {PACKAGE}=={version} "
                              f"wheel for this Python/platform (pip: {last})")
        raise RuntimeError(f"pip download {PACKAGE}=={version} failed: {last}")
    partial = site.with_name("site.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(found[-1]) as wheel:
        wheel.extractall(partial)
    partial.rename(site)
    return site


def _needed_and_undefined(library: Path) -> tuple[list[str], list[str]]:
    """NEEDED entries and unversioned undefined symbols of a shared library (binutils)."""
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True,
                             check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    symbols = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True,
                             text=True, check=True).stdout
    undefined = [line.split()[-1] for line in symbols.splitlines()
                 if line.split()[:1] == ["U"] and "@" not in line]
    return needed, undefined


def build_stubs(site: Path, out: Path) -> tuple[str, ...]:
    """Compile the stub libNV*.so.N the bindings link, defining every undefined symbol that this
    Python process cannot resolve itself (the TensorRT entry points, ~9)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which("nm") is None or shutil.which("readelf") is None:
        raise Unavailable("no C compiler and binutils (cc, nm, readelf) to build the stub "
                          "TensorRT libraries: install gcc")
    library = site / "tensorrt_bindings" / "tensorrt.so"
    needed, undefined = _needed_and_undefined(library)
    here = ctypes.CDLL(None)
    symbols = tuple(sorted({name for name in undefined if not hasattr(here, name)}))
    stub_names = [name for name in needed if re.match(r"libnv(infer|onnxparser)", name)]
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stub.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in symbols))
    for name in stub_names:
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(out / name), str(source)],
                       check=True, capture_output=True)
    return symbols


def prepare(version: str, cache: Path, work: Path) -> Bindings:
    """Fetch (cached) the bindings of ``version`` and build their stubs under ``work``."""
    site = fetch_wheel(version, cache)
    stubs = work / f"stubs-{version}"
    return Bindings(version, site, stubs, build_stubs(site, stubs))
