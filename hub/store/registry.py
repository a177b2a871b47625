"""SQLite: ``models``, ``versions``, ``artifacts`` and ``release_lists`` (see
:class:`hub.store.interface.Registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.store.rows import ModelSummary, ModelVersion, ReleaseListRecord, VersionStatus

if TYPE_CHECKING:
    from hub.store.sql import Connection, Row

VERSION_COLUMNS = (
    "name",
    "version",
    "sha256",
    "length",
    "release_counter",
    "status",
    "manifest",
    "parent_version",
    "made_by",
    "lineage",
    "created_at",
    "created_by",
)
SELECT = ", ".join(VERSION_COLUMNS)
_INSERT_VERSION = (
    f"INSERT INTO versions ({SELECT}) VALUES ({', '.join('?' for _ in VERSION_COLUMNS)})"  # noqa: S608
)
RELEASE_COLUMNS = "version, document, signed, created_at, created_by"


def _version(row: Row) -> ModelVersion:
    return ModelVersion(*(row[c] for c in VERSION_COLUMNS))


def _release(row: Row) -> ReleaseListRecord:
    return ReleaseListRecord(
        row["version"], row["document"], bool(row["signed"]), row["created_at"], row["created_by"]
    )


class SqlRegistry:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def next_version(self, name: str) -> int:
        return (
            int(self._c.scalar("SELECT max(version) FROM versions WHERE name = ?", [name]) or 0) + 1
        )

    def next_release_counter(self) -> int:
        return int(self._c.scalar("SELECT max(release_counter) FROM versions") or 0) + 1

    def add_version(self, version: ModelVersion) -> None:
        with self._c.atomic():
            self._c.write(
                "INSERT OR IGNORE INTO artifacts (sha256, length, kind, created_at) "
                "VALUES (?, ?, 'package', ?)",
                [version.sha256, version.length, version.created_at],
            )
            self._c.write(
                "INSERT OR IGNORE INTO models (name, created_at, created_by, description) "
                "VALUES (?, ?, ?, '')",
                [version.name, version.created_at, version.created_by],
            )
            self._c.write(_INSERT_VERSION, [getattr(version, c) for c in VERSION_COLUMNS])

    def version(self, name: str, version: int) -> ModelVersion | None:
        row = self._c.row(
            f"SELECT {SELECT} FROM versions WHERE name = ? AND version = ?",  # noqa: S608
            [name, version],
        )
        return None if row is None else _version(row)

    def find_upload(self, name: str, upload_sha256: str) -> ModelVersion | None:
        # few versions per name: the lineage is read in place rather than indexed
        row = self._c.row(
            f"SELECT {SELECT} FROM versions WHERE name = ? "  # noqa: S608
            "AND json_extract(lineage, '$.upload_sha256') = ? ORDER BY version LIMIT 1",
            [name, upload_sha256],
        )
        return None if row is None else _version(row)

    def versions(self, name: str) -> list[ModelVersion]:
        rows = self._c.rows(
            f"SELECT {SELECT} FROM versions WHERE name = ? ORDER BY version",  # noqa: S608
            [name],
        )
        return [_version(row) for row in rows]

    def has_model(self, name: str) -> bool:
        return self._c.scalar("SELECT 1 FROM models WHERE name = ?", [name]) is not None

    def models(self) -> list[ModelSummary]:
        rows = self._c.rows(
            "SELECT m.name, m.created_at, m.created_by, count(v.version) AS versions, "
            "max(v.version) AS latest_version, "
            "max(CASE WHEN v.status = 'released' THEN v.version END) AS latest_released "
            "FROM models m LEFT JOIN versions v ON v.name = m.name GROUP BY m.name ORDER BY m.name"
        )
        return [ModelSummary(*row) for row in rows]

    def set_status(self, name: str, version: int, status: VersionStatus) -> None:
        self._c.write(
            "UPDATE versions SET status = ? WHERE name = ? AND version = ?",
            [status, name, version],
        )

    def listed_below(self, release_counter: int) -> list[tuple[str, int]]:
        rows = self._c.rows(
            "SELECT name, version FROM versions "
            "WHERE status != 'withdrawn' AND release_counter < ? ORDER BY release_counter",
            [release_counter],
        )
        return [(row["name"], row["version"]) for row in rows]

    def released_artifact(self, sha256: str) -> bool:
        found = self._c.scalar(
            "SELECT 1 FROM versions WHERE sha256 = ? AND status = 'released' LIMIT 1", [sha256]
        )
        return found is not None

    def latest_release_list(self, *, signed: bool | None = None) -> ReleaseListRecord | None:
        where = "" if signed is None else "WHERE signed = ?"
        params = [] if signed is None else [int(signed)]
        row = self._c.row(
            f"SELECT {RELEASE_COLUMNS} FROM release_lists {where} "  # noqa: S608
            "ORDER BY version DESC LIMIT 1",
            params,
        )
        return None if row is None else _release(row)

    def put_release_list(self, release: ReleaseListRecord) -> None:
        self._c.write(
            f"INSERT INTO release_lists ({RELEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT(version) DO UPDATE SET document = excluded.document, "
            "signed = excluded.signed, created_at = excluded.created_at, "
            "created_by = excluded.created_by",
            [
                release.version,
                release.document,
                int(release.signed),
                release.created_at,
                release.created_by,
            ],
        )
