"""The store's statements, written once in SQLite's dialect, as PostgreSQL runs them.

sqlglot parses each statement (``read="sqlite"``) and writes it back as PostgreSQL; what
it does not carry over by itself, this module rewrites on the parsed tree first:

- ``INSERT OR IGNORE`` → ``ON CONFLICT DO NOTHING``; ``INSERT OR REPLACE`` → ``ON CONFLICT
  (<primary key>) DO UPDATE SET`` every other listed column (the keys come from the schema);
- ``json_extract(doc, '$.a.b')`` → ``json_extract_path_text(edgefleet_json(doc), 'a', 'b')``
  and the quoted dynamic path ``'$."' || ? || '"'`` → one key ``?``; compared with a bound
  value, that value is compared as text (SQLite's json_extract gives typed values, this
  text);
  ``json_valid(doc)`` → ``edgefleet_json(doc) IS NOT NULL``; ``json_each(doc)`` →
  ``json_each_text`` of the document when it is an object. ``edgefleet_json`` (migration
  m001) reads text as JSON and gives NULL for anything that is not, as SQLite's functions
  tolerate it, whatever order the planner evaluates conditions in;
- a bare ``WHERE 1`` → ``WHERE TRUE``; ``a IS NOT ?`` → ``IS DISTINCT FROM`` (sqlglot);
- no ``NULLS FIRST`` in a conflict target (sqlglot adds it to keep SQLite's NULL order,
  right for ``ORDER BY``, invalid there), and bare columns in ``DO UPDATE SET a = a + ...``
  named by their table (PostgreSQL finds them ambiguous beside ``excluded``);
- placeholders ``?`` → ``%s``, and every other ``%`` (``start_ms % ?``) doubled for psycopg.

A statement this cannot translate raises :class:`Untranslatable`: a bug to fix in the
statement (valid in both dialects) or here, found by the store's tests on both dialects.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import sqlglot
from sqlglot import exp

_MARK = "__edgefleet_param__"


class Untranslatable(ValueError):
    """A statement the PostgreSQL dialect cannot run."""


class Translator:
    """Translates statements, each once (cached), given every table's primary key."""

    def __init__(self, primary_keys: Mapping[str, tuple[str, ...]]) -> None:
        self.primary_keys = primary_keys
        self._done: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, sql: str) -> str:
        found = self._done.get(sql)
        if found is None:
            found = translate(sql, self.primary_keys)
            with self._lock:
                self._done[sql] = found
        return found


def translate(sql: str, primary_keys: Mapping[str, tuple[str, ...]]) -> str:
    """``sql`` (SQLite, ``?`` placeholders) as PostgreSQL with ``%s`` placeholders."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except sqlglot.errors.ParseError as e:
        raise Untranslatable(f"{e}: {sql}") from e
    suffix = ""
    if isinstance(tree, exp.Insert):
        suffix = _conflict(tree, primary_keys)
    for _ in range(3):  # a rewrite that replaces a node is not itself visited again
        tree = tree.transform(_rewrite)
    for conflict in tree.find_all(exp.OnConflict):
        _qualify(conflict, tree)
    for placeholder in list(tree.find_all(exp.Placeholder)):
        placeholder.replace(exp.var(_MARK))
    text = tree.sql(dialect="postgres") + suffix
    return text.replace("%", "%%").replace(_MARK, "%s")


def _qualify(conflict: exp.OnConflict, insert: exp.Expr) -> None:
    """A conflict target without ``NULLS FIRST``, and the target table's name on the bare
    columns of ``DO UPDATE SET a = a + excluded.a`` (ambiguous to PostgreSQL)."""
    for ordered in list(conflict.find_all(exp.Ordered)):
        ordered.replace(ordered.this)
    target = insert.this.this if isinstance(insert.this, exp.Schema) else insert.this
    values = [eq.expression for eq in conflict.expressions if isinstance(eq, exp.EQ)]
    where = conflict.args.get("where")
    for part in [*values, *([where] if where is not None else [])]:
        for column in part.find_all(exp.Column):
            if not column.table:
                column.set("table", exp.to_identifier(target.name))


def _conflict(insert: exp.Insert, primary_keys: Mapping[str, tuple[str, ...]]) -> str:
    """The ON CONFLICT clause that stands for ``INSERT OR <alternative>``; '' for none."""
    alternative = str(insert.args.get("alternative") or "").upper()
    if not alternative:
        return ""
    if insert.args.get("returning") or insert.args.get("conflict"):
        raise Untranslatable(f"INSERT OR {alternative} with RETURNING or ON CONFLICT")
    insert.set("alternative", None)
    if alternative == "IGNORE":
        return " ON CONFLICT DO NOTHING"
    if alternative != "REPLACE":
        raise Untranslatable(f"INSERT OR {alternative}")
    schema = insert.this
    table = schema.this.name if isinstance(schema, exp.Schema) else schema.name
    keys = primary_keys.get(table)
    if not keys or not isinstance(schema, exp.Schema):
        raise Untranslatable(f"INSERT OR REPLACE into {table!r} needs its columns and key")
    columns = [c.name for c in schema.expressions if c.name not in keys]
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
    return f" ON CONFLICT ({', '.join(keys)}) {action}"


def _rewrite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Where) and _is_one(node.this):
        return exp.Where(this=exp.true())
    if isinstance(node, exp.And):
        left: exp.Expression = node.this
        right: exp.Expression = node.expression
        if _is_one(left):
            return right
        if _is_one(right):
            return left
    if (
        isinstance(node, (exp.EQ, exp.NEQ))
        and isinstance(node.expression, exp.Placeholder)
        and isinstance(node.this, (exp.JSONExtractScalar, exp.JSONExtract))
    ):
        node.set("expression", exp.cast(node.expression, exp.DataType.build("text")))
        return node
    if isinstance(node, (exp.JSONExtractScalar, exp.JSONExtract)):
        return _json_extract(node)
    if isinstance(node, exp.Anonymous) and node.name.lower() == "json_valid":
        return exp.Not(this=exp.Is(this=_json(node.expressions[0]), expression=exp.null()))
    if (
        isinstance(node, exp.Table)
        and isinstance(node.this, exp.Anonymous)
        and node.this.name.lower() == "json_each"
    ):
        doc = _json(node.this.expressions[0])
        is_object = exp.EQ(
            this=exp.func("json_typeof", doc.copy()), expression=exp.Literal.string("object")
        )
        only = exp.Case(ifs=[exp.If(this=is_object, true=doc)])
        node.set("this", exp.Anonymous(this="json_each_text", expressions=[only]))
    return node


def _is_one(node: exp.Expression | None) -> bool:
    return isinstance(node, exp.Literal) and not node.is_string and node.name == "1"


def _json(doc: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this="edgefleet_json", expressions=[doc.copy()])


def _json_extract(node: exp.Expression) -> exp.Expression:
    """``json_extract(doc, path)`` as ``json_extract_path_text(edgefleet_json(doc), keys...)``."""
    path = node.expression
    keys: list[exp.Expression] = []
    if isinstance(path, exp.JSONPath):
        for part in path.expressions:
            if isinstance(part, exp.JSONPathRoot):
                continue
            if not isinstance(part, exp.JSONPathKey) or not isinstance(part.this, str):
                raise Untranslatable(f"JSON path {path.sql()}")
            keys.append(exp.Literal.string(part.this))
    else:
        keys.append(exp.cast(_quoted_key(path), exp.DataType.build("text")))
    return exp.Anonymous(this="json_extract_path_text", expressions=[_json(node.this), *keys])


def _quoted_key(path: exp.Expression | None) -> exp.Expression:
    """The ``?`` of ``'$."' || ? || '"'``: one key, quoted because it may hold dots."""
    if (
        isinstance(path, exp.DPipe)
        and isinstance(path.this, exp.DPipe)
        and path.this.this == exp.Literal.string('$."')
        and path.expression == exp.Literal.string('"')
    ):
        key: exp.Expression = path.this.expression
        return key.copy()
    raise Untranslatable(f"JSON path {path.sql() if path else None}")
