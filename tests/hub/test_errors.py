"""The exception tree drawn in hub/errors.py's docstring is the tree the code defines:
every error class a hub module defines is drawn, under its real parent, with its module
and its status hint; nothing drawn is stale."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import hub
import hub.errors
from protocol.errors import EdgefleetError

LINE = re.compile(
    r"^    (?P<tree>[│├└─ ]*)(?P<name>[A-Z]\w+)\s+(?P<module>[a-z][\w.]*)\s*(?P<status>\d{3})?"
)


@dataclass(frozen=True)
class Drawn:
    name: str
    module: str
    parent: str | None
    status: int | None


def drawn() -> dict[str, Drawn]:
    """The tree in hub/errors.py's docstring, by class name."""
    doc = hub.errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    found: dict[str, Drawn] = {}
    path: list[str] = []
    for line in block.splitlines():
        match = LINE.match(line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match["tree"]) // 3
        path[depth:] = [match["name"]]
        status = int(match["status"]) if match["status"] else None
        parent = path[depth - 1] if depth else None
        found[match["name"]] = Drawn(match["name"], match["module"], parent, status)
    return found


def subclasses(cls: type[EdgefleetError]) -> Iterator[type[EdgefleetError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def defined_in_hub() -> list[type[EdgefleetError]]:
    for module in pkgutil.walk_packages(hub.__path__, "hub."):
        importlib.import_module(module.name)
    return sorted(
        {c for c in subclasses(EdgefleetError) if c.__module__.startswith("hub.")},
        key=lambda c: c.__name__,
    )


@pytest.mark.parametrize("cls", defined_in_hub(), ids=lambda c: c.__name__)
def test_every_hub_error_class_is_drawn_where_it_lives(cls: type[EdgefleetError]) -> None:
    tree = drawn()
    assert cls.__name__ in tree, f"{cls.__name__} is missing from hub/errors.py's tree"
    entry = tree[cls.__name__]
    assert entry.module == cls.__module__
    assert entry.parent == cls.__bases__[0].__name__
    assert entry.status == cls.status_hint


@pytest.mark.parametrize("entry", list(drawn().values()), ids=lambda e: e.name)
def test_nothing_drawn_is_stale(entry: Drawn) -> None:
    cls = getattr(importlib.import_module(entry.module), entry.name)
    assert issubclass(cls, EdgefleetError)
    if entry.parent is not None:
        assert cls.__bases__[0].__name__ == entry.parent
    if entry.status is not None:
        assert cls.status_hint == entry.status
