"""Typed values <-> JSON values, checked field by field.

Every message and document is a frozen dataclass whose annotations are the schema.
:func:`to_json` turns one into plain JSON values; :func:`from_json` rebuilds it and
refuses anything the annotations do not allow, so a decoder never hands back a
half-valid object. Round-trip law: ``from_json(type(v), to_json(v)) == v``.

Supported annotations: ``int`` (64-bit, never ``bool``), ``float`` (finite; a JSON
integer is accepted), ``str``, ``bool``, ``None``, ``Literal[...]`` of strings,
``bytes`` (a frame body, never from JSON), ``X | None``, ``tuple[X, ...]``, fixed
``tuple[X, Y]``, ``dict[str, X]`` and nested
dataclasses. Unknown keys are refused (a new field means a new protocol version);
missing keys take the field's default when it has one. Range and pattern checks live
in each class's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Hashable
from functools import cache
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin

from protocol.errors import Malformed, NonFinite

T = TypeVar("T")
Converter = Callable[[Any], Any]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_STR_LEN = 65536

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""Device ids, model names, tag keys: safe as MQTT topic levels and never a path (T17)."""

HEX64 = re.compile(r"[0-9a-f]{64}")


def check_name(value: str, what: str) -> None:
    """Raise Malformed unless ``value`` is a safe identifier (``[a-z0-9][a-z0-9._-]{0,63}``)."""
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None:
        raise Malformed(f"{what} {str(value)[:70]!r} must match {NAME_PATTERN.pattern}")


def check_sha256(value: str, what: str) -> None:
    """Raise Malformed unless ``value`` is 64 lowercase hex digits."""
    if not isinstance(value, str) or HEX64.fullmatch(value) is None:
        raise Malformed(f"{what} must be a lowercase hex sha256")


def check_range(value: float, what: str, low: float, high: float | None = None) -> None:
    """Raise Malformed unless ``low <= value`` (and ``value <= high`` when given)."""
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise Malformed(f"{what} = {value} is outside {bound}")


def to_json(value: Any) -> Any:
    """Plain JSON values for a dataclass (recursively); tuples become lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], value: Any, path: str = "$") -> T:
    """Build ``cls`` from JSON values, refusing anything its annotations do not allow.

    Raises:
        Malformed: a missing, unknown or mistyped field, or a failed ``__post_init__`` check;
            the message names the path of the offending value.
        NonFinite: a non-finite float.
    """
    try:
        result: T = _converter(cast(Hashable, cls))(value)
    except _Invalid as e:
        raise e.error(path) from None
    return result


class _Invalid(Exception):
    """Internal: carries the innermost error outwards, collecting the path on the way.

    Paths are built only when something fails, so valid input pays nothing for them.
    """

    def __init__(self, message: str, kind: type[Malformed] = Malformed) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.parts: list[str] = []

    def at(self, part: str) -> _Invalid:
        self.parts.append(part)
        return self

    def error(self, root: str) -> Malformed:
        return self.kind(f"{root}{''.join(reversed(self.parts))}: {self.message}")


def _expected(what: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {what}, got {type(value).__name__}")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise _expected("an integer", value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Invalid("integer out of 64-bit range")
    return value


def _float(value: Any) -> float:
    if type(value) is int:
        value = float(value)
    if type(value) is not float:
        raise _expected("a number", value)
    if not math.isfinite(value):
        raise _Invalid("number must be finite", NonFinite)
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise _expected("a string", value)
    if len(value) > MAX_STR_LEN:
        raise _Invalid(f"string longer than {MAX_STR_LEN}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _expected("true or false", value)
    return value


def _none(value: Any) -> None:
    if value is not None:
        raise _expected("null", value)


def _bytes(value: Any) -> bytes:
    """Only a frame body is bytes; JSON never produces them."""
    if type(value) is not bytes:
        raise _expected("bytes", value)
    return value


_SCALARS: dict[Any, Converter] = {
    bytes: _bytes,
    int: _int,
    float: _float,
    str: _str,
    bool: _bool,
    type(None): _none,
}


@cache
def _converter(tp: Any) -> Converter:
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return _literal(frozenset(args))
    if origin in (Union, types.UnionType):
        return _union(tp, args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _var_tuple(_converter(args[0]))
    if origin is tuple:
        return _fixed_tuple([_converter(a) for a in args])
    if origin is dict:
        return _mapping(_converter(args[0]), _converter(args[1]))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp)
    raise TypeError(f"protocol.schema cannot convert {tp!r}")  # a programming error


def _literal(allowed: frozenset[str]) -> Converter:
    def literal(value: Any) -> Any:
        if type(value) is not str or value not in allowed:
            raise _Invalid(f"expected one of {sorted(allowed)}")
        return value

    return literal


def _union(tp: Any, args: tuple[Any, ...]) -> Converter:
    others = [_converter(a) for a in args if a is not type(None)]
    if type(None) in args and len(others) == 1:
        inner = others[0]
        return lambda value: None if value is None else inner(value)
    options = [_converter(a) for a in args]

    def union(value: Any) -> Any:
        for option in options:
            try:
                return option(value)
            except _Invalid:
                continue
        raise _Invalid(f"value matches none of {tp}")

    return union


def _var_tuple(item: Converter) -> Converter:
    def var_tuple(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _expected("a list", value)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except _Invalid as e:
                raise e.at(f"[{i}]") from None
        return tuple(out)

    return var_tuple


def _fixed_tuple(items: list[Converter]) -> Converter:
    def fixed_tuple(value: Any) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != len(items):
            raise _expected(f"a list of {len(items)}", value)
        out = []
        for i, (conv, v) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(conv(v))
            except _Invalid as e:
                raise e.at(f"[{i}]") from None
        return tuple(out)

    return fixed_tuple


def _mapping(key_conv: Converter, val_conv: Converter) -> Converter:
    def mapping(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _expected("an object", value)
        out = {}
        for k, v in value.items():
            try:
                out[key_conv(k)] = val_conv(v)
            except _Invalid as e:
                raise e.at(f".{str(k)[:40]}") from None
        return out

    return mapping


def _dataclass(cls: type) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    plan = [(f.name, _converter(hints[f.name])) for f in fields]
    required = frozenset(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    known = frozenset(name for name, _ in plan)

    def convert(value: Any) -> Any:
        if type(value) is not dict:
            raise _expected(f"an object ({cls.__name__})", value)
        if not value.keys() <= known:
            raise _Invalid(f"unknown field {sorted(value.keys() - known)[0][:40]!r}")
        if not required <= value.keys():
            raise _Invalid(f"missing field {sorted(required - value.keys())[0]!r}")
        kwargs = {}
        for name, conv in plan:
            if name in value:
                try:
                    kwargs[name] = conv(value[name])
                except _Invalid as e:
                    raise e.at(f".{name}") from None
        try:
            return cls(**kwargs)
        except Malformed as e:
            raise _Invalid(str(e), type(e)) from None
        except (ValueError, TypeError, OverflowError) as e:
            raise _Invalid(str(e)) from None

    return convert
