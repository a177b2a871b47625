"""SQLite: the uplink tables, one per record type (see :class:`hub.store.interface.Uplink`).

Reads (:meth:`SqlUplink.page`) filter by device (the primary key's prefix), by time
(``received_at``, indexed since migration 6) and by the model a record is about: a
column for deltas and windows, a JSON path into the stored body for telemetry and state
reports (unindexed: combine it with a device or a time range on a large store).

Ingest's write path: :meth:`SqlUplink.add` groups a batch's records by type and
inserts each group with one ``executemany`` of ``INSERT OR IGNORE`` on the
``(device_id, seq)`` key, the values read with an ``attrgetter`` (C speed), so typed
records cost no more than the dicts they replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

from hub.store.rows import (
    DataWindowRecord,
    DeltaRecord,
    DeltaSummary,
    DeviceAckRecord,
    Page,
    StateRecord,
    TelemetryRecord,
    UplinkQuery,
    UplinkRecord,
)

if TYPE_CHECKING:
    from hub.store.sql import Connection, Row

R = TypeVar("R", bound=UplinkRecord)


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    values: Callable[[Any], tuple[Any, ...]]
    insert: str
    select: str


def _table(kind: type[UplinkRecord], name: str) -> _Table:
    columns = tuple(f.name for f in fields(kind))
    listed = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    return _Table(
        name,
        columns,
        attrgetter(*columns),
        f"INSERT OR IGNORE INTO {name} ({listed}) VALUES ({marks})",  # noqa: S608
        f"SELECT {listed} FROM {name}",  # noqa: S608
    )


TABLES: dict[type[UplinkRecord], _Table] = {
    TelemetryRecord: _table(TelemetryRecord, "telemetry"),
    StateRecord: _table(StateRecord, "states"),
    DeviceAckRecord: _table(DeviceAckRecord, "device_acks"),
    DataWindowRecord: _table(DataWindowRecord, "data_windows"),
    DeltaRecord: _table(DeltaRecord, "deltas"),
}


MODEL_COLUMNS: dict[type[UplinkRecord], tuple[str, str]] = {
    TelemetryRecord: (
        "json_extract(body, '$.model.name')",
        "json_extract(body, '$.model.version')",
    ),
    StateRecord: ("json_extract(body, '$.active.name')", "json_extract(body, '$.active.version')"),
    DataWindowRecord: ("model_name", "model_version"),
    DeltaRecord: ("base_name", "base_version"),
}
"""Per readable kind: the SQL for the name and version of the model a record is about."""
_NEWEST_FIRST = " ORDER BY received_at DESC, device_id DESC, seq DESC LIMIT ? OFFSET ?"
_DELTA_SUMMARY = ", ".join(
    [*(f.name for f in fields(DeltaSummary) if f.name != "tensors_bytes"), "length(tensors)"]
)


def _where(kind: type[UplinkRecord], query: UplinkQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (fixed fragments only) and its bound values for ``query``."""
    name, version = MODEL_COLUMNS[kind]
    clauses: list[str] = []
    values: list[Any] = []
    for fragment, value in (
        ("device_id = ?", query.device_id),
        (f"{name} = ?", query.model_name),
        (f"{version} = ?", query.model_version),
        ("received_at >= ?", query.since_ms),
        ("received_at < ?", query.until_ms),
    ):
        if value is not None:
            clauses.append(fragment)
            values.append(value)
    return " WHERE " + (" AND ".join(clauses) or "1"), values


class SqlUplink:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, records: Sequence[UplinkRecord]) -> int:
        groups: dict[type[UplinkRecord], list[tuple[Any, ...]]] = {}
        for record in records:
            kind = type(record)
            groups.setdefault(kind, []).append(TABLES[kind].values(record))
        added = 0
        with self._c.atomic():
            for kind, rows in groups.items():
                added += self._c.many(TABLES[kind].insert, rows)
        return added

    def records(self, kind: type[R], device_id: str | None = None) -> list[R]:
        table = TABLES[kind]
        if device_id is None:
            rows = self._c.rows(table.select + " ORDER BY device_id, seq")
        else:
            rows = self._c.rows(table.select + " WHERE device_id = ? ORDER BY seq", [device_id])
        return [_record(kind, row) for row in rows]

    def count(self, kind: type[UplinkRecord]) -> int:
        return int(self._c.scalar(f"SELECT count(*) FROM {TABLES[kind].name}"))  # noqa: S608

    def page(self, kind: type[R], query: UplinkQuery) -> Page[R]:
        table = TABLES[kind]
        where, values = _where(kind, query)
        with self._c.atomic():  # one snapshot for the count and the page
            total = self._c.scalar(f"SELECT count(*) FROM {table.name}{where}", values)  # noqa: S608
            rows = self._c.rows(
                table.select + where + _NEWEST_FIRST, [*values, query.limit, query.offset]
            )
        return Page([_record(kind, row) for row in rows], int(total))

    def last_install_refusal(self, device_id: str) -> StateRecord | None:
        rows = self._c.rows(
            TABLES[StateRecord].select + " WHERE device_id = ? AND "
            "json_extract(body, '$.install.status') IN ('refused', 'failed', 'rolled_back') "
            "ORDER BY seq DESC LIMIT 1",
            [device_id],
        )
        return _record(StateRecord, rows[0]) if rows else None

    def delta_page(self, query: UplinkQuery) -> Page[DeltaSummary]:
        where, values = _where(DeltaRecord, query)
        with self._c.atomic():
            total = self._c.scalar(f"SELECT count(*) FROM deltas{where}", values)  # noqa: S608
            rows = self._c.tuples(
                f"SELECT {_DELTA_SUMMARY} FROM deltas{where}{_NEWEST_FIRST}",  # noqa: S608
                [*values, query.limit, query.offset],
            )
        return Page([DeltaSummary(*row) for row in rows], int(total))


def _record(kind: type[R], row: Row) -> R:
    return kind(*row)
