"""Stand-ins held to the API of the real TensorRT binding classes.

A stand-in mimics one real pybind11 class of the loaded ``tensorrt_bindings`` release: reading
or writing an attribute the real class lacks raises AttributeError (and is recorded), a method
call is checked against the real pybind11 docstring signatures (arity, keyword names, argument
types that can be checked) and its result against the declared return type, and a property is
writable only where the real one has a setter. The behaviour itself (what a build or a run
does) lives in subclasses (:mod:`trt_contract.fake_tensorrt`).
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REAL: types.ModuleType | None = None  # the real tensorrt_bindings module (set by use_real)
VIOLATIONS: list[str] = []  # every refused attribute or call, in order
_MISSING = object()
_SIGNATURE = re.compile(r"^(?:\d+\.\s+)?(?P<name>\w*)\((?P<params>.*)\)\s*->\s*(?P<ret>.+)$")
_MODULE_PREFIXES = ("tensorrt_bindings.tensorrt.", "tensorrt.tensorrt.", "tensorrt.")
# Return annotations pybind11 could not name (C++ types) -> the Python class returned.
_CPP_NAMES = {"nvonnxparser::IParserError": "ParserError"}


def use_real(module: types.ModuleType) -> None:
    global REAL
    REAL = module


def refuse(message: str, error: type[Exception] = AttributeError) -> Exception:
    VIOLATIONS.append(message)
    return error(message)


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    has_default: bool
    default: str | None


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str

    def text(self) -> str:
        return "(" + ", ".join(f"{p.name}: {p.annotation}" + (f" = {p.default}" if p.has_default
                                                              else "") for p in self.params) + \
            f") -> {self.returns}"


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def signatures(function: Any, name: str = "") -> list[Signature]:
    """The pybind11 signatures in a function's docstring (overloads included; ``self``/``arg0``
    dropped). ``name`` "" reads property accessors (``(arg0: T, arg1: V) -> None``)."""
    found = []
    for line in (getattr(function, "__doc__", None) or "").splitlines():
        match = _SIGNATURE.match(line.strip())
        if not match or match["name"] != name:
            continue
        params = []
        for part in _split_top_level(match["params"])[1:]:
            head, equals, default = part.partition("=")
            pname, _, annotation = head.partition(":")
            params.append(Param(pname.strip(), annotation.strip(), bool(equals),
                                default.strip() or None))
        found.append(Signature(tuple(params), match["ret"].strip()))
    return found


def real_class(annotation: str) -> type | None:
    """The real class an annotation names (``tensorrt_bindings.tensorrt.X``), else None."""
    annotation = _CPP_NAMES.get(annotation, annotation)
    for prefix in _MODULE_PREFIXES:
        if annotation.startswith(prefix):
            annotation = annotation[len(prefix):]
            break
    value = getattr(REAL, annotation, None) if re.fullmatch(r"\w+", annotation) else None
    return value if isinstance(value, type) else None


def _is_instance(value: Any, cls: type) -> bool:
    if isinstance(value, StandIn) or isinstance(value, HostMemory):
        return issubclass(value.real(), cls)
    return isinstance(value, cls)


def type_problem(annotation: str, value: Any, default: str | None = None) -> str | None:
    """Why ``value`` cannot be passed as ``annotation`` (None when it can or cannot be told)."""
    if value is None:
        return None if default == "None" or annotation.startswith("typing.Optional") else \
            f"None for {annotation}"
    cls = real_class(annotation)
    if cls is not None:
        return None if _is_instance(value, cls) else f"{type(value).__name__} for {annotation}"
    if annotation in ("int", "typing.SupportsInt"):
        ok = isinstance(value, int) and not isinstance(value, bool) or hasattr(value, "__index__")
        return None if ok else f"{type(value).__name__} for {annotation}"
    if annotation in ("float", "typing.SupportsFloat"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{type(value).__name__} for {annotation}"
    if annotation == "bool":
        return None if isinstance(value, bool) else f"{type(value).__name__} for bool"
    if annotation == "str":
        return None if isinstance(value, (str, bytes)) else f"{type(value).__name__} for str"
    if annotation in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
        try:
            memoryview(value)
        except TypeError:
            return f"{type(value).__name__} is not a buffer"
        return None
    if annotation.startswith(("List[int]", "collections.abc.Sequence[typing.SupportsInt]")):
        ok = isinstance(value, Sequence) and all(isinstance(v, int) for v in value)
        return None if ok else f"{value!r} for {annotation}"
    return None  # an annotation this harness does not check


def bind(signature: Signature, args: tuple, kwargs: dict) -> str | None:
    """Why ``args``/``kwargs`` do not fit ``signature`` (None when they do)."""
    params = list(signature.params)
    if len(args) > len(params):
        return f"{len(args)} positional arguments for {len(params)} parameters"
    bound = dict(zip((p.name for p in params), args))
    for key, value in kwargs.items():
        match = [p for p in params if p.name == key]
        if not match or re.fullmatch(r"arg\d+", key):
            return f"no keyword argument {key!r}"
        if key in bound:
            return f"{key!r} given twice"
        bound[key] = value
    for param in params:
        if param.name not in bound:
            if not param.has_default:
                return f"missing argument {param.name!r}"
            continue
        problem = type_problem(param.annotation, bound[param.name], param.default)
        if problem:
            return f"{param.name}: {problem}"
    return None


def checked_call(owner: str, name: str, function: Any, implementation: Any, args: tuple,
                 kwargs: dict) -> Any:
    """Call ``implementation`` if the arguments fit one real signature of ``owner.name``."""
    overloads = signatures(function, name)
    if not overloads:
        raise refuse(f"{owner}.{name}: no signature in the real docstring", TypeError)
    problems = [bind(sig, args, kwargs) for sig in overloads]
    if all(problems):
        detail = "; ".join(f"{sig.text()}: {why}" for sig, why in zip(overloads, problems))
        raise refuse(f"{owner}.{name}() incompatible arguments ({detail})", TypeError)
    signature = overloads[problems.index(None)]
    result = implementation(*args, **kwargs)
    problem = type_problem(signature.returns, result, "None") \
        if signature.returns != "None" else (None if result is None else "returned a value")
    if problem:
        raise AssertionError(f"stand-in {owner}.{name} returns what the real one cannot: {problem}")
    return result


def _static(cls: type, name: str) -> Any:
    try:
        return inspect.getattr_static(cls, name)
    except AttributeError:
        return _MISSING


class StandIn:
    """Base of the stand-ins. ``REAL_NAME``: the real class mimicked. Subclasses implement the
    methods and properties the project uses under their real names; ``_state`` holds property
    values set by the project (or by the fake itself)."""

    REAL_NAME = ""

    def __init__(self, *args, **kwargs):  # construction by the code under test
        real = self.real()
        object.__setattr__(self, "_state", {})
        checked_call(real.__name__, "__init__", real.__init__, self._construct, args, kwargs)

    def _construct(self, *args, **kwargs) -> None:
        raise refuse(f"{self.REAL_NAME} cannot be constructed from Python", TypeError)

    @classmethod
    def make(cls, **fields) -> "StandIn":
        """An instance made by the fake itself (as TensorRT would return it): ``_name`` fields
        are the fake's own, the others values of real properties."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "_state", {k: v for k, v in fields.items() if k[0] != "_"})
        for key, value in fields.items():
            if key[0] == "_":
                object.__setattr__(obj, key, value)
        return obj

    @classmethod
    def real(cls) -> type:
        return getattr(REAL, cls.REAL_NAME)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name in ("make", "real", "REAL_NAME"):
            return object.__getattribute__(self, name)
        real = type(self).real()
        static = _static(real, name)
        if static is _MISSING:
            raise refuse(f"{real.__name__} has no attribute {name!r} in TensorRT "
                         f"{REAL.__version__}")
        state = object.__getattribute__(self, "_state")
        if isinstance(static, property):
            if name in state:
                return state[name]
            if _static(type(self), name) is _MISSING:
                raise AssertionError(f"stand-in {real.__name__}.{name} is not modelled")
            return object.__getattribute__(self, name)
        if _static(type(self), name) is _MISSING:
            raise AssertionError(f"stand-in {real.__name__}.{name}() is not modelled")
        implementation = object.__getattribute__(self, name)

        def method(*args, **kwargs):
            return checked_call(real.__name__, name, static, implementation, args, kwargs)

        return method

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        real = type(self).real()
        static = _static(real, name)
        if not isinstance(static, property) or static.fset is None:
            raise refuse(f"{real.__name__}.{name} is not a writable property in TensorRT "
                         f"{REAL.__version__}")
        overloads = signatures(static.fset)
        problems = [bind(sig, (value,), {}) for sig in overloads]
        if not overloads or all(problems):
            raise refuse(f"{real.__name__}.{name} = {value!r}: {problems}", TypeError)
        self._state[name] = value


class HostMemory(bytes):
    """Stand-in of IHostMemory: a buffer (bytes) that refuses attributes IHostMemory lacks."""

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__") or name == "real":
            return bytes.__getattribute__(self, name)
        real = HostMemory.real()
        if _static(real, name) is _MISSING:
            raise refuse(f"IHostMemory has no attribute {name!r} in TensorRT {REAL.__version__}")
        if name == "nbytes":
            return len(self)
        raise AssertionError(f"stand-in IHostMemory.{name} is not modelled")

    @staticmethod
    def real() -> type:
        return REAL.IHostMemory


class ContractModule(types.ModuleType):
    """The ``tensorrt`` module seen by the code under test: the real module's names only, with
    stand-ins in place of the classes that need a GPU."""

    def __init__(self, standins: dict[str, type]):
        super().__init__("tensorrt")
        object.__setattr__(self, "_standins", standins)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__version__",):
            raise AttributeError(name)
        if not hasattr(REAL, name):
            raise refuse(f"tensorrt has no attribute {name!r} in TensorRT {REAL.__version__}")
        standins = object.__getattribute__(self, "_standins")
        return standins.get(name) or getattr(REAL, name)
