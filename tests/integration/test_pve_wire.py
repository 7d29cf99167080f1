"""The answers real servers and proxies send that fakepve and the simulator never do, each through
real polls: the real Poller over real TLS against a scripted peer (tests/support/rawhttps.py), the
rows written by the real Recorder into Postgres. A connection the server ends between two answers
costs no failure; an answer that is not complete is a failure with a clear kind, and its connection
is never used again."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.support.rawhttps import BODIES, CLOSE, DENIED, HALF, KEEP, STALL, STATUS, answer
from worker.polling import utcnow
from worker.pve import AUTH, HTTP, NETWORK, TIMEOUT

START = utcnow().replace(microsecond=0)


def polls(poller, recorder, conn, server_id, count=1, row=None):
    """`count` polls of the server, recorded; returns every metric row of the server, oldest first."""
    done = conn.execute("select count(*) as n from connection_metrics where server_id = %s", (server_id,)).fetchone()
    for i in range(done["n"], done["n"] + count):
        recorder.write([poller.poll(str(server_id), START + timedelta(seconds=60 * i), row)])
    conn.commit()
    return conn.execute("select * from connection_metrics where server_id = %s order by scheduled_at",
                        (server_id,)).fetchall()


def by_connection(rawpve) -> list[list[str]]:
    """The paths the server was asked for, grouped by the connection that carried them."""
    groups: dict[int, list[str]] = {}
    for number, path in rawpve.requests:
        groups.setdefault(number, []).append(path.rsplit("/json/", 1)[1])
    return list(groups.values())


def test_a_server_that_closes_every_connection_after_its_answer_is_polled_without_a_failure(
        rawpve, add_server, poller, recorder, conn):
    # Given a server that ends each connection right after its answer, without saying so
    rawpve.reply = lambda path: (answer(BODIES[path]), CLOSE)
    s = add_server("closes", rawpve.url)
    # When it is polled three times
    rows = polls(poller, recorder, conn, s["id"], 3)
    # Then every poll succeeded: each call found its kept connection closed and asked again on a new one
    assert [r["success"] for r in rows] == [True, True, True], [r["error_message"] for r in rows]
    assert by_connection(rawpve) == [["version"], ["cluster/status"]] * 3


def test_connections_the_server_ends_between_polls_are_replaced_without_a_failure(
        rawpve, add_server, poller, recorder, conn):
    s = add_server("idle-closer", rawpve.url)
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    # When the server ends its idle keep-alive connections (a pveproxy restart, a proxy's idle timer)
    rawpve.close_idle()
    rows = polls(poller, recorder, conn, s["id"], 2)
    # Then the next polls succeed on one new connection, kept alive again
    assert [r["success"] for r in rows] == [True, True, True], [r["error_message"] for r in rows]
    assert by_connection(rawpve) == [["version", "cluster/status"], ["version", "cluster/status"] * 2]


def test_an_answer_with_connection_close_ends_its_connection(rawpve, add_server, poller, recorder, conn):
    # Given a server that says `Connection: close` but leaves the connection open
    rawpve.reply = lambda path: (answer(BODIES[path], headers=("Connection: close",)), KEEP)
    s = add_server("says-close", rawpve.url)
    rows = polls(poller, recorder, conn, s["id"], 2)
    assert [r["success"] for r in rows] == [True, True]
    # Then no request was sent on a connection after such an answer
    assert by_connection(rawpve) == [["version"], ["cluster/status"]] * 2


def test_chunked_answers_are_read_whole_and_keep_the_connection(rawpve, add_server, poller, recorder, conn):
    rawpve.reply = lambda path: (answer(BODIES[path], chunked=True), KEEP)
    s = add_server("chunked", rawpve.url)
    result = poller.poll(str(s["id"]), START)
    assert result.success, result.error_message
    assert (result.pve_version, result.nodes_online, result.nodes_total, result.quorate) == ("9.1.4", 1, 2, True)
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    assert by_connection(rawpve) == [["version", "cluster/status"] * 2]


@pytest.mark.parametrize("version, headers, then, kept", [
    ("HTTP/1.0", (), CLOSE, False),                           # HTTP/1.0: one answer per connection
    ("HTTP/1.0", ("Connection: keep-alive",), KEEP, True),    # unless it says keep-alive
])
def test_http_1_0_answers_are_read_and_kept_alive_only_when_they_say_so(
        rawpve, add_server, poller, recorder, conn, version, headers, then, kept):
    rawpve.reply = lambda path: (answer(BODIES[path], version=version, headers=headers), then)
    s = add_server("old-http", rawpve.url)
    rows = polls(poller, recorder, conn, s["id"], 2)
    assert [r["success"] for r in rows] == [True, True], [r["error_message"] for r in rows]
    calls = ["version", "cluster/status"]
    assert by_connection(rawpve) == ([calls * 2] if kept else [[c] for c in calls * 2])


def test_an_answer_without_a_length_is_read_until_the_server_closes(rawpve, add_server, poller, recorder, conn):
    rawpve.reply = lambda path: (answer(BODIES[path], version="HTTP/1.0", length=False), CLOSE)
    s = add_server("no-length", rawpve.url)
    result = poller.poll(str(s["id"]), START)
    assert result.success and result.nodes_total == 2, result.error_message


@pytest.mark.parametrize("cut", [
    answer(STATUS)[:-40],                              # Content-Length says more than arrives
    answer(STATUS, chunked=True)[:-30],                # the last chunks never come
])
def test_an_answer_cut_short_is_a_network_failure_and_its_connection_is_not_used_again(
        rawpve, add_server, poller, recorder, conn, cut):
    s = add_server("cut", rawpve.url)
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    # When the server ends its side of the connection in the middle of an answer
    rawpve.reply = lambda path: (cut, HALF) if path.endswith("/cluster/status") else (answer(BODIES[path]), KEEP)
    row = polls(poller, recorder, conn, s["id"])[-1]
    # Then the poll failed, saying so
    assert row["success"] is False and row["error_kind"] == NETWORK
    assert row["error_message"] == f"{rawpve.url.split('://')[1]} closed the connection before the end of its answer"
    # And the next poll, answered in full, went over a new connection: nothing more was sent on that one
    rawpve.reply = lambda path: (answer(BODIES[path]), KEEP)
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    assert by_connection(rawpve) == [["version", "cluster/status"] * 2, ["version", "cluster/status"]]


def test_headers_that_never_end_are_a_timeout_at_the_calls_timeout_and_end_the_connection(
        rawpve, add_server, poller, recorder, conn, settings):
    s = add_server("stalls", rawpve.url)
    row = poller.target(s["id"])
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    # Given a server that sends the status line and one header, then nothing more
    rawpve.reply = lambda path: (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", STALL)
    started = time.monotonic()
    result = poller.poll(str(s["id"]), START + timedelta(hours=1), {**row, "learned_timeout_ms": 300})
    # Then the poll ends at its timeout (300 ms for each read), not when the server gives up
    assert time.monotonic() - started < settings.timeout_min_ms / 1000
    assert result.error_kind == TIMEOUT and "did not answer within 300 ms" in result.error_message
    # And the next poll goes over a new connection: nothing more was sent on that one
    rawpve.reply = lambda path: (answer(BODIES[path]), KEEP)
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    assert by_connection(rawpve) == [["version", "cluster/status", "version"], ["version", "cluster/status"]]


@pytest.mark.parametrize("status, reason, body, kind, words", [
    (401, "authentication failure", DENIED, AUTH, "refused the credentials (401 authentication failure)"),
    (500, "hostname lookup 'pve1' failed", b'{"data":null,"message":"hostname lookup \'pve1\' failed"}',
     HTTP, "answered 500 hostname lookup 'pve1' failed"),
    # control characters in the reason phrase (HTTP allows them, NUL included; Postgres refuses NUL):
    # stored as spaces, and the poll's batch-mates are not lost with it
    (500, "Boom\x00\x01\x7f tail", b'{"data":null}', HTTP, "answered 500 Boom    tail"),
])
def test_an_error_status_with_a_body_is_recorded_with_the_servers_reason_and_keeps_the_connection(
        rawpve, add_server, poller, recorder, conn, status, reason, body, kind, words):
    rawpve.reply = lambda path: (answer(body, status, reason) if path.endswith("/cluster/status")
                                 else answer(BODIES[path]), KEEP)
    s = add_server("errors", rawpve.url)
    row = polls(poller, recorder, conn, s["id"])[-1]
    assert row["success"] is False and row["error_kind"] == kind and words in row["error_message"]
    assert row["error_message"].isprintable()
    # And a complete answer, even an error, keeps its connection for the next poll
    rawpve.reply = lambda path: (answer(BODIES[path]), KEEP)
    assert polls(poller, recorder, conn, s["id"])[-1]["success"]
    assert by_connection(rawpve) == [["version", "cluster/status"] * 2]


def test_a_wrong_token_gets_the_servers_401(rawpve, add_server, poller, recorder, conn):
    s = add_server("wrong-token", rawpve.url, token="root@pam!monitor=not-the-secret")
    row = polls(poller, recorder, conn, s["id"])[-1]
    assert row["error_kind"] == AUTH and "refused the credentials (401 No ticket)" in row["error_message"]
