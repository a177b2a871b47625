"""SQLite: the ``devices`` table (see :class:`hub.store.interface.Devices`)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hub.health import Health
from hub.store.interface import NotFound
from hub.store.rows import (
    Device,
    DeviceCount,
    DeviceIdentity,
    DeviceStatus,
    HelloUpdate,
    InstallCount,
    Page,
    ReportedTwin,
    TagCount,
    UplinkSeen,
)
from protocol import canonical

_IN_CHUNK = 500  # ids per IN (...) list, well below SQLite's bound on parameters

if TYPE_CHECKING:
    from hub.store.sql import Connection

COLUMNS = (
    "id",
    "public_key",
    "status",
    "first_seen",
    "tags",
    "agent_version",
    "enrolled_at",
    "enrolled_by",
    "last_seen",
    "online",
    "active_name",
    "active_version",
    "active_sha256",
    "reported",
    "reported_at",
    "health",
    "stale",
    "refusal",
    "refusal_at",
    "pending_reason",
)
"""Every column but the replay window, in :class:`~hub.store.rows.Device`'s order."""
SELECT = ", ".join(COLUMNS)
PREFIXED = ", ".join(f"v.{c}" for c in COLUMNS)
_PUT = (
    f"INSERT INTO devices ({SELECT}) VALUES ({', '.join('?' for _ in COLUMNS)}) "  # noqa: S608
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
)


def encode_tags(tags: Mapping[str, str]) -> str:
    return canonical.dumps(dict(tags)).decode()


@lru_cache(maxsize=4096)
def decode_tags(text: str | None) -> Mapping[str, str]:
    """Tags as stored, read-only; anything but a JSON object reads as no tags (never a
    crash). Cached: a fleet shares a few tag sets between many devices."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return _NO_TAGS
    if not isinstance(value, dict):
        return _NO_TAGS
    return MappingProxyType({str(k): str(v) for k, v in value.items()})


_NO_TAGS: Mapping[str, str] = MappingProxyType({})
_HEALTH = {h.value: h for h in Health}


def to_device(row: Sequence[Any]) -> Device:
    """A :class:`Device` from the values of :data:`COLUMNS`, in that order (positional:
    listings build thousands of these)."""
    (id_, key, status, first_seen, tags, agent_version, enrolled_at, enrolled_by, last_seen,
     online, active_name, active_version, active_sha256, reported, reported_at, health,
     stale, refusal, refusal_at, pending_reason) = row  # fmt: skip
    return Device(
        id_,
        key,
        status,
        first_seen,
        decode_tags(tags),
        agent_version,
        enrolled_at,
        enrolled_by,
        last_seen,
        bool(online),
        active_name,
        active_version,
        active_sha256,
        reported,
        reported_at,
        _HEALTH.get(health, Health.UNKNOWN),
        bool(stale),
        refusal,
        refusal_at,
        pending_reason,
    )


def _values(device: Device) -> list[Any]:
    return [
        device.id,
        device.public_key,
        device.status,
        device.first_seen,
        encode_tags(device.tags),
        device.agent_version,
        device.enrolled_at,
        device.enrolled_by,
        device.last_seen,
        int(device.online),
        device.active_name,
        device.active_version,
        device.active_sha256,
        device.reported,
        device.reported_at,
        device.health.value,
        int(device.stale),
        device.refusal,
        device.refusal_at,
        device.pending_reason,
    ]


class SqlDevices:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, device: Device) -> None:
        self._c.write(
            f"INSERT INTO devices ({SELECT}) VALUES ({', '.join('?' for _ in COLUMNS)})",  # noqa: S608
            _values(device),
        )

    def put(self, device: Device) -> None:
        self._c.write(_PUT, _values(device))

    def get(self, device_id: str) -> Device:
        found = self.find(device_id)
        if found is None:
            raise NotFound(f"no device {device_id[:64]!r}")
        return found

    def find(self, device_id: str) -> Device | None:
        rows = self._c.tuples(f"SELECT {SELECT} FROM devices WHERE id = ?", [device_id])  # noqa: S608
        return to_device(rows[0]) if rows else None

    def status(self, device_id: str) -> DeviceStatus | None:
        status: DeviceStatus | None = self._c.scalar(
            "SELECT status FROM devices WHERE id = ?", [device_id]
        )
        return status

    def identity(self, device_id: str) -> DeviceIdentity | None:
        row = self._c.row(
            "SELECT id, status, public_key, up_window FROM devices WHERE id = ?", [device_id]
        )
        if row is None:
            return None
        return DeviceIdentity(row["id"], row["status"], row["public_key"], row["up_window"])

    def windows_for_update(self, device_ids: Collection[str]) -> dict[str, bytes | None]:
        # each known device's up_window, its row locked until the transaction ends (on
        # PostgreSQL; SQLite's one writer serialises), so two hub replicas never judge one
        # device's frames against the same window; in one order: they never deadlock
        ids = sorted(device_ids)
        lock = " FOR UPDATE" if self._c.row_locks else ""
        found: dict[str, bytes | None] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT id, up_window FROM devices WHERE id IN ({marks}) ORDER BY id{lock}"  # noqa: S608
            found.update(self._c.tuples(sql, chunk))
        return found

    def key_holder(self, public_key: str, *, besides: str) -> str | None:
        found = self._c.scalar(
            "SELECT id FROM devices WHERE public_key = ? AND id != ? ORDER BY id LIMIT 1",
            [public_key, besides],
        )
        return None if found is None else str(found)

    def page(
        self,
        *,
        status: DeviceStatus | None = None,
        tag: tuple[str, str] | None = None,
        model: tuple[str, int | None] | None = None,
        online: bool | None = None,
        health: Health | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Device]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if tag is not None:
            # quoted: tag keys may hold '.' or '-', which a bare JSON path would misread
            where.append("json_extract(tags, '$.\"' || ? || '\"') = ?")
            params.extend(tag)
        if model is not None:
            where.append("active_name = ?")
            params.append(model[0])
            if model[1] is not None:
                where.append("active_version = ?")
                params.append(model[1])
        if online is not None:
            where.append("online = ?")
            params.append(int(online))
        if health is not None:
            where.append("health = ?")
            params.append(health.value)
        clause = " AND ".join(where) or "1"
        # clause is built above from fixed fragments; every value is a bound parameter
        total = self._c.scalar(f"SELECT count(*) FROM devices WHERE {clause}", params)  # noqa: S608
        rows = self._c.tuples(
            f"SELECT {SELECT} FROM devices WHERE {clause} ORDER BY id LIMIT ? OFFSET ?",  # noqa: S608
            [*params, limit, offset],
        )
        return Page([to_device(row) for row in rows], int(total))

    def count(self, *, status: DeviceStatus | None = None) -> int:
        if status is None:
            return int(self._c.scalar("SELECT count(*) FROM devices"))
        return int(self._c.scalar("SELECT count(*) FROM devices WHERE status = ?", [status]))

    def census(self) -> list[DeviceCount]:
        rows = self._c.tuples(
            "SELECT status, online, active_name, active_version, health, count(*) FROM devices "
            "GROUP BY status, online, active_name, active_version, health"
        )
        return [
            DeviceCount(status, bool(online), name, version, _HEALTH.get(health, Health.UNKNOWN), n)
            for status, online, name, version, health, n in rows
        ]

    def tag_counts(self, *, limit: int = 50) -> list[TagCount]:
        rows = self._c.tuples(
            "SELECT t.key, t.value, count(*) AS n FROM devices, json_each(devices.tags) AS t "
            "WHERE json_valid(devices.tags) GROUP BY t.key, t.value "
            "ORDER BY n DESC, t.key, t.value LIMIT ?",
            [limit],
        )
        return [TagCount(str(key), str(value), n) for key, value, n in rows]

    def install_outcomes(self) -> list[InstallCount]:
        rows = self._c.tuples(
            "SELECT json_extract(reported, '$.install.status') AS outcome, "
            "coalesce(json_extract(reported, '$.install.reason'), '') AS why, count(*) "
            "FROM devices WHERE status = 'active' AND json_valid(reported) "
            "AND json_extract(reported, '$.install.status') IS NOT NULL GROUP BY outcome, why"
        )
        return [InstallCount(str(outcome), str(why), n) for outcome, why, n in rows]

    def approve(self, device_id: str, *, at_ms: int, by: str) -> None:
        self._c.update_one(
            "UPDATE devices SET status = 'active', enrolled_at = ?, enrolled_by = ?, "
            "pending_reason = NULL WHERE id = ?",
            [at_ms, by, device_id],
            f"device {device_id[:64]!r}",
        )

    def revoke(self, device_id: str) -> None:
        self._c.update_one(
            "UPDATE devices SET status = 'revoked', online = 0 WHERE id = ?",
            [device_id],
            f"device {device_id[:64]!r}",
        )

    def set_tags(self, device_id: str, tags: Mapping[str, str]) -> None:
        self._c.update_one(
            "UPDATE devices SET tags = ? WHERE id = ?",
            [encode_tags(tags), device_id],
            f"device {device_id[:64]!r}",
        )

    def note_hellos(self, hellos: Mapping[str, HelloUpdate]) -> None:
        # a hello that names no active model leaves the reported one as it is
        self._c.write_many(
            "UPDATE devices SET agent_version = ?, tags = ?, "
            "active_name = coalesce(?, active_name), "
            "active_version = coalesce(?, active_version), "
            "active_sha256 = coalesce(?, active_sha256) WHERE id = ?",
            [
                (
                    h.agent_version,
                    encode_tags(h.tags),
                    h.active_name,
                    h.active_version,
                    h.active_sha256,
                    device_id,
                )
                for device_id, h in hellos.items()
            ],
        )

    def report_state(self, device_id: str, seq: int, twin: ReportedTwin) -> bool:
        cursor = self._c.write(
            "UPDATE devices SET active_name = ?, active_version = ?, active_sha256 = ?, "
            "reported = ?, reported_at = ? WHERE id = ? AND NOT EXISTS "
            "(SELECT 1 FROM states WHERE device_id = ? AND seq > ?)",
            [
                twin.active_name,
                twin.active_version,
                twin.active_sha256,
                twin.reported,
                twin.reported_at,
                device_id,
                device_id,
                seq,
            ],
        )
        return bool(cursor.rowcount)

    def note_uplink(self, seen: Sequence[UplinkSeen]) -> None:
        self._c.write_many(
            "UPDATE devices SET up_window = ?, online = ?, "
            "last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
            [(s.up_window, int(s.online), s.last_seen, s.device_id) for s in seen],
        )

    def mark_offline(self, *, seen_before_ms: int) -> list[str]:
        with self._c.atomic():
            rows = self._c.tuples(
                "UPDATE devices SET online = 0 WHERE online = 1 AND "
                "coalesce(last_seen, 0) < ? RETURNING id",
                [seen_before_ms],
            )
        return sorted(row[0] for row in rows)

    def note_refusals(self, refusals: Mapping[str, tuple[str, int]]) -> None:
        self._c.write_many(
            # a state report repeats the last outcome: refusal_at is when it first came
            "UPDATE devices SET refusal = ?, refusal_at = ? WHERE id = ? AND refusal IS NOT ?",
            [(reason, at_ms, device_id, reason) for device_id, (reason, at_ms) in refusals.items()],
        )

    def set_pending_reason(self, device_id: str, reason: str) -> None:
        self._c.write(
            "UPDATE devices SET pending_reason = ? WHERE id = ? AND status = 'pending'",
            [reason, device_id],
        )

    def set_health(self, device_id: str, health: Health) -> None:
        self._c.write("UPDATE devices SET health = ? WHERE id = ?", [health.value, device_id])
