"""Evaluating Realtime filters costs one bounded statement per batch and table: its text depends on
the groups of conditions (column, operator, negation), never on how many values they hold — so one
user's 10,000 `id=eq.N` bindings are one join, not a statement of 10,000 expressions."""

from psycopg import sql

from worker.embedded.standin.filters import evaluation_parts, evaluation_sql, parse_filter

TYPES = {"response_time_ms": "integer", "error_kind": "text", "success": "boolean"}
TABLE = sql.Identifier("public", "connection_metrics")


def statement(filters: list[str]):
    conditions = sorted({c for f in filters for c in parse_filter(f)}, key=lambda c: (c.column, c.op, c.value, c.negate))
    text, params = evaluation_sql(TABLE, evaluation_parts(conditions, TYPES))
    return text.as_string(None), params


def test_the_statement_is_the_same_for_one_value_and_ten_thousand():
    one_text, one_params = statement(["response_time_ms=eq.1"])
    many_text, many_params = statement([f"response_time_ms=eq.{n}" for n in range(10_000)])
    assert one_text == many_text
    assert len(one_params) == len(many_params) == 2
    assert len(many_params[0]) == 10_000 and many_params[1] == list(range(10_000))


def test_each_group_of_column_operator_and_negation_is_one_join():
    text, params = statement(["response_time_ms=eq.1", "response_time_ms=eq.2", "response_time_ms=not.eq.3",
                              "error_kind=in.(a,b)", "success=is.true", "success=is.null",
                              "response_time_ms=gt.5,error_kind=like.x%"])
    assert text.count(" join unnest(") == 7  # eq, not.eq, in, is true, is null, gt, like
    assert '(i.r)."response_time_ms" = c.v::integer' in text
    assert 'not ((i.r)."response_time_ms" = c.v::integer)' in text
    assert '(i.r)."error_kind" = any(c.v::text[])' in text
    assert '((i.r)."success" is TRUE and c.v is not null)' in text
