"""The drift core's values as the store keeps them: canonical JSON, checked on the way back.

Assessments, cohort views, alerts and policies are frozen dataclasses whose annotations
:mod:`protocol.schema` can read, so one encoder and one checked decoder serve them all;
aggregates go through :func:`hub.drift.aggregate.to_columns` instead (numpy arrays).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from hub.drift.aggregate import Aggregate, from_columns, to_columns
from hub.drift.reference import Reference
from hub.store.drift_rows import AggregateColumns
from protocol import canonical, schema

T = TypeVar("T")


def dumps(value: Any) -> str:
    """Canonical JSON text of a dataclass value."""
    return canonical.dumps(schema.to_json(value)).decode()


def loads(cls: type[T], text: str) -> T:
    """The value of ``cls`` stored by :func:`dumps`.

    Raises:
        protocol.errors.Malformed: text that is not a ``cls``.
    """
    return schema.from_json(cls, canonical.loads(text.encode()))


def columns(aggregate: Aggregate) -> AggregateColumns:
    return AggregateColumns(**to_columns(aggregate))  # type: ignore[arg-type]


def aggregate(stored: AggregateColumns, reference: Reference) -> Aggregate:
    """Raises: hub.drift.errors.IncompatibleWindow: columns of another reference."""
    return from_columns(dataclasses.asdict(stored), reference)
