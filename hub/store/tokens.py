"""SQLite: ``api_tokens`` and ``enrollment_tokens`` (see
:class:`hub.store.interface.ApiTokens` and :class:`~hub.store.interface.EnrollmentTokens`).

Both keep a token's digest, never its secret; the rows handed out carry no digest,
except :meth:`SqlApiTokens.credential`, which exists to compare one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.store.devices import decode_tags, encode_tags
from hub.store.rows import ApiCredential, ApiToken, EnrollmentToken

if TYPE_CHECKING:
    from hub.store.sql import Connection, Row

_API = "id, role, name, created_at, created_by, revoked"
_ENROLLMENT = "id, kind, created_at, created_by, expires_at, uses, revoked, tags"


def _api(row: Row) -> ApiToken:
    return ApiToken(
        row["id"],
        row["role"],
        row["name"] or "",
        row["created_at"],
        row["created_by"],
        bool(row["revoked"]),
    )


def _enrollment(row: Row) -> EnrollmentToken:
    return EnrollmentToken(
        row["id"],
        row["kind"],
        row["created_at"],
        row["created_by"],
        row["expires_at"],
        row["uses"] or 0,
        bool(row["revoked"]),
        decode_tags(row["tags"]),
    )


class SqlApiTokens:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, token: ApiToken, *, digest: str) -> None:
        self._c.write(
            f"INSERT INTO api_tokens ({_API}, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            [token.id, token.role, token.name, token.created_at, token.created_by,
             int(token.revoked), digest],
        )  # fmt: skip

    def credential(self, token_id: str) -> ApiCredential | None:
        row = self._c.row(f"SELECT {_API}, hash FROM api_tokens WHERE id = ?", [token_id])  # noqa: S608
        return None if row is None else ApiCredential(_api(row), row["hash"])

    def all(self) -> list[ApiToken]:
        rows = self._c.rows(f"SELECT {_API} FROM api_tokens ORDER BY created_at, id")  # noqa: S608
        return [_api(row) for row in rows]

    def revoke(self, token_id: str) -> None:
        self._c.update_one(
            "UPDATE api_tokens SET revoked = 1 WHERE id = ?",
            [token_id],
            f"API token {token_id[:12]!r}",
        )


class SqlEnrollmentTokens:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, token: EnrollmentToken, *, digest: str) -> None:
        self._c.write(
            f"INSERT INTO enrollment_tokens ({_ENROLLMENT}, hash) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [token.id, token.kind, token.created_at, token.created_by, token.expires_at,
             token.uses, int(token.revoked), encode_tags(token.tags), digest],
        )  # fmt: skip

    def get(self, token_id: str) -> EnrollmentToken | None:
        row = self._c.row(
            f"SELECT {_ENROLLMENT} FROM enrollment_tokens WHERE id = ?",  # noqa: S608
            [token_id],
        )
        return None if row is None else _enrollment(row)

    def by_digest(self, digest: str) -> EnrollmentToken | None:
        row = self._c.row(
            f"SELECT {_ENROLLMENT} FROM enrollment_tokens WHERE hash = ?",  # noqa: S608
            [digest],
        )
        return None if row is None else _enrollment(row)

    def all(self) -> list[EnrollmentToken]:
        rows = self._c.rows(
            f"SELECT {_ENROLLMENT} FROM enrollment_tokens ORDER BY created_at DESC, id"  # noqa: S608
        )
        return [_enrollment(row) for row in rows]

    def use(self, token_id: str) -> bool:
        cursor = self._c.write(
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ? AND revoked = 0 "
            "AND (kind != 'single' OR uses = 0)",
            [token_id],
        )
        return bool(cursor.rowcount)

    def revoke(self, token_id: str) -> None:
        self._c.update_one(
            "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?",
            [token_id],
            f"enrollment token {token_id[:40]!r}",
        )
