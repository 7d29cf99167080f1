"""The worker's binary array dumpers (worker.pg_arrays) against a real Postgres: what goes in comes
back equal to what psycopg's own dumpers send, NULLs and empty arrays included, and a value that does
not fit its type is refused before anything is sent. Then the metric insert they serve: a server's odd
text (NUL, control characters, a lone surrogate, a huge version) does not fail its batch-mates' rows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from worker.pg_arrays import BoolArray, Int4Array, TextArray, TimestamptzArray, UuidArray
from worker.polling import MAX_MESSAGE, MAX_VERSION, PollResult, Recorder, utcnow

EDGE_TIMES = [
    datetime(2000, 1, 1, tzinfo=timezone.utc),                       # Postgres' epoch: 0
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),  # just before it: negative
    datetime(1970, 1, 1, tzinfo=timezone.utc),
    datetime(2026, 11, 30, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
    None,
]
CASES = {
    "uuid": (UuidArray, [str(uuid.uuid4()), uuid.uuid4(), None, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"]),
    "timestamptz": (TimestamptzArray, EDGE_TIMES),
    "boolean": (BoolArray, [True, False, None, True]),
    "integer": (Int4Array, [0, 1, -1, 2**31 - 1, -2**31, None]),
    "text": (TextArray, ["", "8.2.4", "ünïcødé ✓ 日本", None, "a" * 5000]),
}


@pytest.mark.parametrize("pgtype", sorted(CASES))
def test_an_array_reaches_postgres_as_psycopg_itself_would_send_it(conn, pgtype):
    wrapper, values = CASES[pgtype]
    mine, theirs = conn.execute(f"select %(mine)b::{pgtype}[] as mine, %(theirs)s::{pgtype}[] as theirs",
                                {"mine": wrapper(values), "theirs": [str(v) if isinstance(v, uuid.UUID) else v
                                                                     for v in values]}).fetchone().values()
    assert mine == theirs
    assert len(mine) == len(values) and mine.count(None) == values.count(None)


@pytest.mark.parametrize("pgtype", sorted(CASES))
def test_an_empty_array_is_an_empty_array(conn, pgtype):
    wrapper, _ = CASES[pgtype]
    row = conn.execute(f"select %(v)b::{pgtype}[] as v, cardinality(%(v)b::{pgtype}[]) as n", {"v": wrapper([])}).fetchone()
    assert row == {"v": [], "n": 0}


@pytest.mark.parametrize("wrapper, bad, says", [
    (UuidArray, ["not-a-uuid"], "is not a uuid"),
    (UuidArray, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"], "is not a uuid"),
    (UuidArray, [42], "is not a uuid"),
    (TimestamptzArray, [datetime(2026, 1, 1)], "timezone-aware"),
    (TimestamptzArray, ["2026-01-01"], "timezone-aware"),
    (Int4Array, [2**31], "integer type's range"),
    (Int4Array, [1.5], "integer type's range"),
    (TextArray, [b"bytes"], "is not text"),
    (TextArray, ["lone \ud800 surrogate"], "cannot be encoded as UTF-8"),
])
def test_a_value_that_does_not_fit_is_refused_with_its_name_and_nothing_is_sent(conn, wrapper, bad, says):
    with pytest.raises(psycopg.DataError, match=says):
        conn.execute("select %(v)b as v", {"v": wrapper(bad)})
    conn.rollback()
    assert conn.execute("select 1 as ok").fetchone() == {"ok": 1}  # the connection is still usable


def test_odd_text_from_one_server_does_not_fail_the_rows_of_its_batch(add_server, conn, pool, settings):
    ids = [str(add_server(f"odd{i}", f"https://odd{i}.example.test:8006")["id"]) for i in range(4)]
    at = utcnow().replace(microsecond=0)
    base = dict(scheduled_at=at, created_at=at, response_time_ms=None, success=False, error_kind="http")
    results = [
        PollResult(server_id=ids[0], error_message="pve answered 500 Boom\x00\x01 tail", **base),
        PollResult(server_id=ids[1], error_message="pve answered 500 lone \ud800 surrogate", **base),
        PollResult(server_id=ids[2], error_message="x" * 100_000, **base),
        PollResult(server_id=ids[3], scheduled_at=at, created_at=at, success=True, response_time_ms=12,
                   pve_version="8.2\x00" + "9" * 500, nodes_online=1, nodes_total=1),
    ]
    assert Recorder(pool, settings).write(results) == 4
    rows = {str(r["server_id"]): r for r in conn.execute(
        "select server_id, error_message, pve_version from connection_metrics where server_id = any(%s::uuid[])",
        (ids,)).fetchall()}
    assert rows[ids[0]]["error_message"] == "pve answered 500 Boom   tail"
    assert rows[ids[1]]["error_message"] == "pve answered 500 lone   surrogate"
    assert rows[ids[2]]["error_message"] == "x" * MAX_MESSAGE
    assert rows[ids[3]]["pve_version"] == "8.2 " + "9" * (MAX_VERSION - 4)
