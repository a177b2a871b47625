"""SQLite: rounds, delta verdicts, per-model FL policies, buffers and validation sets.

Every statement of the federated-rounds layer (:mod:`hub.federated`) is here; see
:class:`hub.store.interface.Rounds` for the contract. A verdict row shares its key
``(device_id, seq)`` with the delta it judges, so the tensors stay in ``deltas`` and are
read one at a time (:meth:`SqlRounds.tensors`) while an aggregation streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, fields
from typing import TYPE_CHECKING

from hub.store.round_rows import BufferState, DeltaVerdict, RoundRecord
from hub.store.rows import Page

if TYPE_CHECKING:
    from hub.store.sql import Connection

_ROUND_COLUMNS = tuple(f.name for f in fields(RoundRecord))
_VERDICT_COLUMNS = tuple(f.name for f in fields(DeltaVerdict))
_PUT_ROUND = (
    f"INSERT OR REPLACE INTO rounds ({', '.join(_ROUND_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _ROUND_COLUMNS)})"
)
_SELECT_ROUND = f"SELECT {', '.join(_ROUND_COLUMNS)} FROM rounds"  # noqa: S608
_ADD_VERDICT = (
    f"INSERT OR IGNORE INTO delta_verdicts ({', '.join(_VERDICT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _VERDICT_COLUMNS)})"
)
_SELECT_VERDICT = f"SELECT {', '.join(_VERDICT_COLUMNS)} FROM delta_verdicts"  # noqa: S608
_PENDING = "slot = ? AND flush IS NULL"
LIVE_STATES = ("open", "closing")


class SqlRounds:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    # ------------------------------------------------------------------ rounds

    def put_round(self, record: RoundRecord) -> None:
        self._c.write(_PUT_ROUND, astuple(record))

    def round(self, round_id: str) -> RoundRecord | None:
        rows = self._c.tuples(_SELECT_ROUND + " WHERE round_id = ?", [round_id])
        return RoundRecord(*rows[0]) if rows else None

    def live_round(self, model: str) -> RoundRecord | None:
        rows = self._c.tuples(
            _SELECT_ROUND + " WHERE model = ? AND state IN (?, ?) ORDER BY opened_ms DESC",
            [model, *LIVE_STATES],
        )
        return RoundRecord(*rows[0]) if rows else None

    def rounds_in(self, states: Sequence[str]) -> list[RoundRecord]:
        marks = ", ".join("?" for _ in states)
        rows = self._c.tuples(
            _SELECT_ROUND + f" WHERE state IN ({marks}) ORDER BY opened_ms",
            list(states),
        )
        return [RoundRecord(*r) for r in rows]

    def rounds(
        self, *, model: str | None, state: str | None, limit: int, offset: int
    ) -> Page[RoundRecord]:
        clauses, values = [], []
        for fragment, value in (("model = ?", model), ("state = ?", state)):
            if value is not None:
                clauses.append(fragment)
                values.append(value)
        where = " WHERE " + (" AND ".join(clauses) or "1")
        with self._c.atomic():
            total = self._c.scalar(f"SELECT count(*) FROM rounds{where}", values)  # noqa: S608
            rows = self._c.tuples(
                _SELECT_ROUND + where + " ORDER BY opened_ms DESC, round_id LIMIT ? OFFSET ?",
                [*values, limit, offset],
            )
        return Page([RoundRecord(*r) for r in rows], int(total))

    def count_rounds(self, model: str) -> int:
        return int(self._c.scalar("SELECT count(*) FROM rounds WHERE model = ?", [model]))

    # ------------------------------------------------------------------ verdicts

    def add_verdicts(self, verdicts: Sequence[DeltaVerdict]) -> int:
        return self._c.write_many(_ADD_VERDICT, [astuple(v) for v in verdicts])

    def digest_seen(self, model: str, digest: str) -> bool:
        return (
            self._c.scalar(
                "SELECT 1 FROM delta_verdicts WHERE model = ? AND digest = ? LIMIT 1",
                [model, digest],
            )
            is not None
        )

    def slot_devices(self, slot: str) -> frozenset[str]:
        rows = self._c.tuples(
            f"SELECT DISTINCT device_id FROM delta_verdicts WHERE {_PENDING} "  # noqa: S608
            "AND status != 'refused'",
            [slot],
        )
        return frozenset(r[0] for r in rows)

    def count_usable(self, slot: str) -> int:
        return int(
            self._c.scalar(
                f"SELECT count(*) FROM delta_verdicts WHERE {_PENDING} AND status = 'accepted'",  # noqa: S608
                [slot],
            )
        )

    def pending(self, slot: str) -> list[DeltaVerdict]:
        """The slot's verdicts no aggregation has read yet, in arrival order."""
        rows = self._c.tuples(
            _SELECT_VERDICT + f" WHERE {_PENDING} ORDER BY received_at, device_id, seq",
            [slot],
        )
        return [DeltaVerdict(*r) for r in rows]

    def verdicts(self, slot: str) -> list[DeltaVerdict]:
        rows = self._c.tuples(
            _SELECT_VERDICT + " WHERE slot = ? ORDER BY received_at, device_id, seq", [slot]
        )
        return [DeltaVerdict(*r) for r in rows]

    def verdict_counts(self, slot: str) -> list[tuple[str, str | None, int]]:
        """(status, reason, count) of the slot's verdicts."""
        rows = self._c.tuples(
            "SELECT status, reason, count(*) FROM delta_verdicts WHERE slot = ? "
            "GROUP BY status, reason ORDER BY status, reason",
            [slot],
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    def mark_read(self, keys: Sequence[tuple[str, int, str]], flush: int) -> None:
        """Set each ``(device_id, seq, status)``'s new status and the flush that read it."""
        self._c.write_many(
            "UPDATE delta_verdicts SET status = ?, flush = ? WHERE device_id = ? AND seq = ?",
            [(status, flush, device_id, seq) for device_id, seq, status in keys],
        )

    def holdouts(self, slot: str) -> dict[str, tuple[str, float, float]]:
        """What the slot's pending deltas report of their holdouts, by ``device:seq``."""
        rows = self._c.tuples(
            "SELECT d.device_id, d.seq, d.metric, d.before, d.after FROM deltas d "
            "JOIN delta_verdicts v ON v.device_id = d.device_id AND v.seq = d.seq "
            "WHERE v.slot = ? AND v.flush IS NULL",
            [slot],
        )
        return {f"{r[0]}:{r[1]}": (str(r[2]), float(r[3]), float(r[4])) for r in rows}

    def tensors(self, device_id: str, seq: int) -> bytes | None:
        found = self._c.scalar(
            "SELECT tensors FROM deltas WHERE device_id = ? AND seq = ?", [device_id, seq]
        )
        return None if found is None else bytes(found)

    def add_strikes(self, strikes: dict[str, int]) -> None:
        self._c.write_many(
            "UPDATE devices SET strikes = strikes + ? WHERE id = ?",
            [(n, device_id) for device_id, n in strikes.items()],
        )

    def strikes(self, device_id: str) -> int:
        found = self._c.scalar("SELECT strikes FROM devices WHERE id = ?", [device_id])
        return int(found or 0)

    # ------------------------------------------------------------------ per model

    def policy(self, model: str) -> str | None:
        found = self._c.scalar("SELECT policy FROM fl_policies WHERE model = ?", [model])
        return None if found is None else str(found)

    def put_policy(self, model: str, policy: str, *, at_ms: int, by: str) -> None:
        self._c.write(
            "INSERT OR REPLACE INTO fl_policies (model, policy, updated_ms, updated_by) "
            "VALUES (?, ?, ?, ?)",
            [model, policy, at_ms, by],
        )

    def buffer(self, model: str) -> BufferState | None:
        rows = self._c.tuples(
            "SELECT model, current_version, flushes FROM fl_buffers WHERE model = ?", [model]
        )
        return BufferState(*rows[0]) if rows else None

    def put_buffer(self, state: BufferState) -> None:
        self._c.write(
            "INSERT OR REPLACE INTO fl_buffers (model, current_version, flushes) VALUES (?, ?, ?)",
            astuple(state),
        )

    def validation_set(self, model: str) -> bytes | None:
        found = self._c.scalar("SELECT data FROM validation_sets WHERE model = ?", [model])
        return None if found is None else bytes(found)

    def put_validation_set(
        self, model: str, data: bytes, *, rows: int, at_ms: int, by: str
    ) -> None:
        self._c.write(
            "INSERT OR REPLACE INTO validation_sets (model, data, rows, created_ms, created_by) "
            "VALUES (?, ?, ?, ?, ?)",
            [model, data, rows, at_ms, by],
        )
