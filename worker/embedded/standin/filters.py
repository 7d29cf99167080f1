"""Realtime filters: Supabase's `filter` syntax of a postgres_changes binding, and the SQL that
lets Postgres evaluate it.

`col=eq|neq|lt|lte|gt|gte.value` and `col=in.(a,b,"c,d")`, several joined by commas (AND).
Postgres itself compares, with the column's own type (enum order, collation, uuid, time zones),
so a filter means here what it means on Supabase; a malformed filter is a JoinError whose
sentence the subscriber reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from worker.embedded.standin.common import JoinError

OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "in"}


@dataclass(frozen=True)
class Condition:
    column: str
    op: str                      # eq, neq, lt, lte, gt, gte, in
    value: str | tuple[str, ...]


def _split_outside(text: str, sep: str) -> list[str]:
    """Split on sep outside double quotes and parentheses."""
    parts, depth, quoted, current = [], 0, False, []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == sep and not quoted and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def parse_filter(text: str | None) -> tuple[Condition, ...]:
    """Supabase's filter syntax → conditions (JoinError with a sentence when malformed)."""
    if text is None or text == "":
        return ()
    if not isinstance(text, str):
        raise JoinError(f"invalid filter {text!r}: use a string like \"server_id=eq.<id>\"")
    conditions = []
    for part in _split_outside(text, ","):
        column, eq, rest = part.partition("=")
        op, dot, value = rest.partition(".")
        column = column.strip()
        if not eq or not dot or not column:
            raise JoinError(f"invalid filter {text!r}: write it as column=operator.value, e.g. \"id=eq.1\"")
        if op not in OPERATORS:
            raise JoinError(f"invalid filter {text!r}: unsupported operator {op!r}; use eq, neq, lt, lte, gt, gte or in")
        if op == "in":
            value = value.strip()
            if not (value.startswith("(") and value.endswith(")")):
                raise JoinError(f"invalid filter {text!r}: write a list as in.(a,b,c)")
            items = tuple(_unquote(v) for v in _split_outside(value[1:-1], ",")) if value[1:-1].strip() else ()
            if not items:
                raise JoinError(f"invalid filter {text!r}: the in.() list is empty")
            conditions.append(Condition(column, op, items))
        else:
            conditions.append(Condition(column, op, _unquote(value)))
    return tuple(conditions)


def condition_sql(cond: Condition, full_type: str, row: str = "r") -> tuple[sql.Composable, object]:
    """`<row>.<col> <op> %s::text::<type>` (or `= any(%s::text[]::<type>[])`) and its parameter.
    The type comes from pg_catalog (format_type), never from the subscriber."""
    col = sql.SQL("{}.{}").format(sql.Identifier(row), sql.Identifier(cond.column))
    if cond.op == "in":
        return (sql.SQL("coalesce({} = any(%s::text[]::{}[]), false)").format(col, sql.SQL(full_type)),
                list(cond.value))
    return (sql.SQL("coalesce({} {} %s::text::{}, false)").format(col, sql.SQL(OPERATORS[cond.op]),
                                                                   sql.SQL(full_type)), cond.value)
