"""The PostgreSQL dialect's translation of the store's SQLite statements (pure: no server;
that PostgreSQL runs them is tests/hub/test_store.py's part, on a real one)."""

from __future__ import annotations

import pytest

from hub.store.postgres.translate import Translator, Untranslatable, translate

KEYS = {"fl_buffers": ("model",), "rollout_shadows": ("rollout_id", "device_id")}


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        pytest.param(
            "INSERT OR IGNORE INTO models (name) VALUES (?)",
            "INSERT INTO models (name) VALUES (%s) ON CONFLICT DO NOTHING",
            id="insert-or-ignore",
        ),
        pytest.param(
            "INSERT OR REPLACE INTO fl_buffers (model, current_version, flushes) VALUES (?, ?, ?)",
            "INSERT INTO fl_buffers (model, current_version, flushes) VALUES (%s, %s, %s) "
            "ON CONFLICT (model) DO UPDATE SET current_version = EXCLUDED.current_version, "
            "flushes = EXCLUDED.flushes",
            id="insert-or-replace-by-primary-key",
        ),
        pytest.param(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            "INSERT INTO meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT(key) DO UPDATE SET value = meta.value + excluded.value",
            id="upsert-names-the-table-beside-excluded",
        ),
        pytest.param(
            "SELECT count(*) FROM audit WHERE 1",
            "SELECT COUNT(*) FROM audit WHERE TRUE",
            id="where-1",
        ),
        pytest.param(
            "UPDATE devices SET refusal = ? WHERE id = ? AND refusal IS NOT ?",
            "UPDATE devices SET refusal = %s WHERE id = %s AND refusal IS DISTINCT FROM %s",
            id="is-not-a-value",
        ),
        pytest.param(
            "SELECT g FROM b WHERE start_ms - start_ms % ? = ?",
            "SELECT g FROM b WHERE start_ms - start_ms %% NULLIF(%s, 0) = %s",
            id="modulo-by-zero-null-as-in-sqlite-and-escaped-for-psycopg",
        ),
        pytest.param(
            "SELECT id FROM devices WHERE json_extract(tags, '$.\"' || ? || '\"') = ?",
            "SELECT id FROM devices WHERE JSON_EXTRACT_PATH_TEXT(EDGEFLEET_JSON(tags), "
            "CAST(%s AS TEXT)) = CAST(%s AS TEXT)",
            id="json-dynamic-quoted-key",
        ),
        pytest.param(
            "SELECT 1 FROM states WHERE json_valid(body) AND "
            "json_extract(body, '$.active.version') = ?",
            "SELECT 1 FROM states WHERE NOT EDGEFLEET_JSON(body) IS NULL AND "
            "JSON_EXTRACT_PATH_TEXT(EDGEFLEET_JSON(body), 'active', 'version') = CAST(%s AS TEXT)",
            id="json-path-compared-as-text",
        ),
        pytest.param(
            "UPDATE devices SET last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
            "UPDATE devices SET last_seen = GREATEST(COALESCE(last_seen, 0), %s) WHERE id = %s",
            id="scalar-max",
        ),
    ],
)
def test_a_sqlite_statement_translates_to_postgres(sqlite: str, postgres: str) -> None:
    assert translate(sqlite, KEYS) == postgres


def test_tag_counts_read_only_json_objects() -> None:
    text = translate(
        "SELECT t.key, t.value, count(*) FROM devices, json_each(devices.tags) AS t "
        "WHERE json_valid(devices.tags) GROUP BY t.key, t.value",
        KEYS,
    )
    assert "JSON_EACH_TEXT(CASE WHEN JSON_TYPEOF(EDGEFLEET_JSON(devices.tags)) = 'object'" in (text)


def test_insert_or_replace_into_a_table_without_a_known_key_is_untranslatable() -> None:
    with pytest.raises(Untranslatable, match="needs its columns and key"):
        translate("INSERT OR REPLACE INTO nowhere (a) VALUES (?)", KEYS)


def test_a_json_path_that_is_not_plain_keys_is_untranslatable() -> None:
    with pytest.raises(Untranslatable, match="JSON path"):
        translate("SELECT json_extract(body, '$.flags[0]') FROM states", KEYS)


def test_each_statement_is_translated_once() -> None:
    translator = Translator(KEYS)
    first = translator("SELECT count(*) FROM audit WHERE 1")
    assert translator("SELECT count(*) FROM audit WHERE 1") is first
