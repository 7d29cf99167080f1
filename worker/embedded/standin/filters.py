"""Realtime subscription parameters as Supabase Realtime parses them, and the SQL that lets
Postgres evaluate a filter the way `realtime.check_equality_op` does.

Mirrors supabase/realtime `lib/extensions/postgres_cdc_rls/subscriptions.ex`
(`parse_subscription_params`, `parse_filters`): the event is upper-cased and anything but INSERT,
UPDATE, DELETE means `*`; a filter is `col=op.value` with op one of eq, neq, lt, lte, gt, gte, in,
like, ilike, is, match, imatch, isdistinct, optionally prefixed `not.`; commas outside quotes and
parentheses join conditions with AND; `in.(a,b)` becomes the array literal `{a,b}`. A parse error
is the server's sentence, `Error parsing \`filter\` params: ["foo", "hey"]`, sent as a `system`
error after the join (see realtime.py). Whether a value fits its column (and the `in` list's 100
values) is checked against the database by `proxwatch_realtime.check_subscription` (sql/realtime.sql).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from psycopg import sql

from worker.errors import ProxwatchError

# subscriptions.ex @filter_types
OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch", "isdistinct")
# realtime.check_equality_op (migration 20260626120000_readd_postgrest_filter_ops.ex)
_SYMBOLS = {"eq": "=", "neq": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "like": "like",
            "ilike": "ilike", "match": "~", "imatch": "~*"}
IS_VALUES = ("null", "true", "false", "unknown")


class ParamsError(ProxwatchError):
    """The subscription parameters cannot be parsed (the server's sentence is the message)."""


@dataclass(frozen=True)
class Condition:
    column: str
    op: str                      # one of OPERATORS
    value: str                   # for `in`, the array literal "{a,b}"
    negate: bool = False

    def as_elixir(self) -> str:
        """How the server logs it in its error sentences: {"col", "eq", "v", false}."""
        return "{%s, %s, %s, %s}" % (_inspect(self.column), _inspect(self.op), _inspect(self.value),
                                     "true" if self.negate else "false")


@dataclass(frozen=True)
class Params:
    """One postgres_changes binding as the server understands it."""
    event: str                   # *, INSERT, UPDATE, DELETE
    schema: str
    table: str                   # a name or *
    conditions: tuple[Condition, ...]
    select: tuple[str, ...] | None

    def as_log(self) -> str:
        """subscriptions.ex params_to_log/1."""
        filters = "[" + ", ".join(c.as_elixir() for c in self.conditions) + "]"
        select = "nil" if self.select is None else "[" + ", ".join(_inspect(c) for c in self.select) + "]"
        return f"event: {self.event}, schema: {self.schema}, table: {self.table}, filters: {filters}, select: {select}"


def _inspect(value) -> str:
    """Elixir's inspect/1 of a string or a list of strings, near enough for a sentence."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inspect(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def normalise_event(spec: dict) -> str:
    """subscriptions.ex action_filter/1: upper-cased; anything unknown means every event."""
    event = spec.get("event")
    if event == "*" or not isinstance(event, str):
        return "*"
    upper = event.upper()
    return upper if upper in ("INSERT", "UPDATE", "DELETE") else "*"


def parse_params(spec) -> Params:
    """subscriptions.ex parse_subscription_params/1 → Params, or ParamsError with its sentence."""
    if not isinstance(spec, dict):
        raise ParamsError("No subscription params provided. Please provide at least a `schema` or `table` to"
                          f" subscribe to: {spec!r}")
    event = normalise_event(spec)
    select = spec.get("select")
    if isinstance(select, str):
        raise ParamsError("Error parsing `select` params: expected a list of column name strings, e.g."
                          ' select: ["col1", "col2"]')
    select = tuple(c for c in select if isinstance(c, str)) or None if isinstance(select, list) else None
    schema, table, filt = spec.get("schema"), spec.get("table"), spec.get("filter")
    if isinstance(schema, str) and isinstance(table, str) and isinstance(filt, str):
        conditions = parse_filter(filt)
    elif isinstance(schema, str) and isinstance(table, str) and "filter" not in spec:
        conditions = ()
    elif isinstance(schema, str) and "table" not in spec and "filter" not in spec:
        table, conditions = "*", ()
    elif isinstance(table, str) and "schema" not in spec and "filter" not in spec:
        schema, conditions = "public", ()
    else:
        shown = {k: v for k, v in spec.items() if k not in ("access_token", "user_token")}
        raise ParamsError("No subscription params provided. Please provide at least a `schema` or `table` to"
                          f" subscribe to: {shown!r}")
    if select is not None and (schema == "*" or table == "*"):
        raise ParamsError("Column selection is not supported for wildcard subscriptions. Provide an explicit"
                          " schema and table name.")
    return Params(event, schema, table, conditions, select)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside double quotes (opened after `.`, `(` or `,`) and parentheses."""
    parts, current, depth, quoted, prev, i = [], [], 0, False, "", 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i:i + 2])
                prev = text[i + 1]
                i += 2
                continue
            if ch == '"':
                quoted = False
        elif ch == '"' and prev in (".", "(", ","):
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current, prev, i = [], "", i + 1
            continue
        current.append(ch)
        prev = ch
        i += 1
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    """subscriptions.ex unquote_value/1: a whole "quoted" value loses its quotes and escapes."""
    if not value.startswith('"'):
        return value
    out, i = [], 1
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out) if i == len(value) - 1 else value
        out.append(ch)
        i += 1
    return value


def parse_filter(text: str | None) -> tuple[Condition, ...]:
    """subscriptions.ex parse_filters/1 (ParamsError "Error parsing `filter` params: …")."""
    if text is None or not text.strip():
        return ()
    conditions = []
    for segment in _split_top_level(text.strip()):
        segment = segment.strip()
        if not segment:
            raise ParamsError("Error parsing `filter` params: filter must not contain empty segments"
                              " (check for extra commas)")
        column, eq, rest = segment.partition("=")
        if not eq:
            raise ParamsError(f"Error parsing `filter` params: {_inspect([segment])}")
        negate = rest.startswith("not.")
        op_value = rest[4:] if negate else rest
        op, dot, value = op_value.partition(".")
        if not dot:
            raise ParamsError(f"Error parsing `filter` params: {_inspect([op_value])}")
        if op not in OPERATORS:
            raise ParamsError(f"Error parsing `filter` params: {_inspect([op, value])}")
        if op == "in":
            if not (len(value) >= 2 and value[0] == "(" and value[-1] == ")"):
                raise ParamsError("Error parsing `filter` params: `in` filter value must be wrapped by parentheses")
            value = "{" + value[1:-1] + "}"
        else:
            value = _unquote(value)
        conditions.append(Condition(column, op, value, negate))
    return tuple(conditions)


def condition_sql(cond: Condition, full_type: str, row: str = "r") -> tuple[sql.Composable, object]:
    """The condition as Postgres evaluates it, with its parameter: `realtime.check_equality_op`'s
    operators, both sides of the column's type (from pg_catalog, never from the subscriber);
    a NULL comparison fails (is_visible_through_filters sums only true answers)."""
    col = sql.SQL("{}.{}").format(sql.Identifier(row), sql.Identifier(cond.column))
    typ = sql.SQL(full_type)
    if cond.op == "is":
        keyword = sql.SQL(cond.value.upper() if cond.value in IS_VALUES else "NULL")
        return sql.SQL("({} {} {} and %s::text is not null)").format(
            col, sql.SQL("is not" if cond.negate else "is"), keyword), cond.value
    if cond.op == "isdistinct":
        return sql.SQL("({} {} %s::text::{})").format(
            col, sql.SQL("is not distinct from" if cond.negate else "is distinct from"), typ), cond.value
    if cond.op == "in":
        test = sql.SQL("{} = any(%s::text::{}[])").format(col, typ)
    else:
        test = sql.SQL("{} {} %s::text::{}").format(col, sql.SQL(_SYMBOLS[cond.op]), typ)
    if cond.negate:
        test = sql.SQL("not ({})").format(test)
    return sql.SQL("coalesce({}, false)").format(test), cond.value
