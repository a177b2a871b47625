"""Canonical JSON out, strict JSON in.

Canonical form: UTF-8, keys sorted, no insignificant whitespace, no NaN/Infinity,
floats in Python's shortest round-trip ``repr``. The same value always gives the same
bytes, so signatures and content hashes over JSON are stable.

The strict reader refuses what a hostile peer might use to make two parsers disagree
or to exhaust memory (threat-model B2-B4): invalid UTF-8, duplicate keys, ``NaN`` /
``Infinity`` tokens, nesting deep enough to exhaust the parser's recursion limit
(about 1000 levels; nothing walks parsed values recursively except
:mod:`protocol.schema`, which follows the declared types and stops at the first
mismatch), integers longer than Python's
4300-digit limit (CVE-2020-10735). Every failure is a :class:`~protocol.errors.Malformed`.
It also refuses strings holding a lone surrogate (``"\\ud800"``): they parse, but could
never be written back as UTF-8, so a signed value holding one could not be stored.
Floats that overflow to infinity (``1e999``) parse; :mod:`protocol.schema` refuses them
where a number must be finite, and range-checks integers to 64 bits.
It does not bound the total size: callers check the size of the bytes first.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.errors import Malformed, NonFinite

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def dumps(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Raises:
        NonFinite: ``value`` holds a NaN or an infinity.
    """
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except ValueError as e:
        raise NonFinite(f"not canonical JSON: {e}") from e


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise Malformed(f"duplicate JSON key {dup[:40]!r}")
    return obj


def _reject_constant(token: str) -> Any:
    raise NonFinite(f"JSON token {token} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def loads(data: bytes) -> Any:
    """Parse strict JSON from ``data``.

    Raises:
        Malformed: invalid UTF-8 or JSON, duplicate keys, too deep, an over-long integer.
        NonFinite: a NaN/Infinity token or a float that overflows.
    """
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except Malformed:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as e:
        raise Malformed(f"invalid JSON: {type(e).__name__}") from e
    if "\\u" in text:  # only an escape can smuggle in a lone surrogate; canonical has few
        _reject_lone_surrogates(value)
    return value


def _reject_lone_surrogates(value: Any) -> None:
    """A lone surrogate (``"\\ud800"``) parses but can never be written back as UTF-8:
    a value holding one could be verified and then fail to store, forever resent."""
    try:
        _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError as e:
        raise Malformed("a JSON string holds a lone surrogate") from e
    except ValueError:
        pass  # NaN or infinity: the schema refuses them where it matters
