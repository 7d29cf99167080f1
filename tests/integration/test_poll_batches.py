"""Batched polls (PROXWATCH_POLL_BATCH): the servers due in one scheduler step travel in one
poll_batch message, are polled concurrently, each with its own timeout, and are written together.
A slow server holds its batch back by its own timeout at most; a retried batch writes each poll once;
a server whose poll cannot run is its own failure row, not a failed batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from tests.support.processes import spawn, stop
from tests.support.waiting import wait_for
from worker.polling import BATCH_MARGIN_S, CALLS, utcnow

WORKER = ["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "1"]


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a PVE that hangs mid-handshake)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"


def test_a_slow_server_holds_its_batch_back_by_its_own_timeout_at_most(pve, add_server, poller, recorder, conn,
                                                                       silent_server):
    fast = [add_server(f"pve{i}", pve.url) for i in range(3)]
    slow = add_server("silent", silent_server)
    # Given the slow server's learned timeout of 400 ms (the others keep the default 5 s)
    conn.execute("update proxmox_servers set learned_timeout_ms = 400 where id = %s", (slow["id"],))
    conn.commit()
    at = utcnow().replace(microsecond=0)

    # When one batch holds all four
    started = time.monotonic()
    results = poller.poll_many([(str(s["id"]), at) for s in [*fast, slow]])
    elapsed = time.monotonic() - started
    recorder.record_many(results)

    # Then the others were not held beyond the slow server's own deadline (its calls' timeouts)
    assert elapsed < 0.4 * CALLS + BATCH_MARGIN_S, elapsed
    rows = {r["server_id"]: r for r in conn.execute(
        "select server_id, success, error_kind, error_message from connection_metrics where scheduled_at = %s",
        (at,)).fetchall()}
    assert all(rows[s["id"]]["success"] for s in fast)
    assert rows[slow["id"]]["error_kind"] == "timeout" and "400 ms" in rows[slow["id"]]["error_message"]


def test_a_retried_batch_writes_each_poll_once_and_a_poison_server_does_not_fail_it(
        pve, add_server, conn, services_env, redis_server, tmp_path):
    good = [add_server(f"pve{i}", pve.url) for i in range(4)]
    poison = add_server("poison", pve.url)
    # A credential that no longer decrypts (e.g. stored under another PROXWATCH_SECRET_KEY)
    conn.execute("update server_credentials set secret_ciphertext = 'not-a-fernet-token' where server_id = %s",
                 (poison["id"],))
    conn.commit()
    at = utcnow().replace(microsecond=0).isoformat()
    gone = str(uuid.uuid4())  # a server deleted after the scheduler sent its poll
    polls = [[str(s["id"]), at] for s in [*good, poison]] + [[gone, at]]
    broker = RedisBroker(url=redis_server.url)

    def send(args):
        broker.enqueue(Message(queue_name="polls", actor_name="poll_batch", args=args, kwargs={}, options={}))

    log = open(tmp_path / "procs.log", "wb")
    worker = spawn(WORKER, services_env, log)
    try:
        # Given a batch delivered twice (as a retry after a lost acknowledgement delivers it)
        send((polls,))
        send((polls,))
        # And a later message behind them on the same single worker thread
        marker_at = (utcnow().replace(microsecond=0) + timedelta(seconds=1)).isoformat()
        send(([[str(good[0]["id"]), marker_at]],))

        def marker():
            conn.commit()
            return conn.execute("select 1 from connection_metrics where scheduled_at = %s", (marker_at,)).fetchone()
        assert wait_for(marker, 60), (tmp_path / "procs.log").read_text()[-3000:]
        # And the worker stopped as a process manager stops it (SIGTERM to its main process): a
        # clean stop folds the rollup deltas of what it wrote (broker.FoldOnShutdown)
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(60)
    finally:
        stop(worker)
        log.close()

    # Then each poll of the batch is one row (and one attempt in the rollup), the poison server's a failure
    rows = conn.execute("select server_id, success, error_kind from connection_metrics where scheduled_at = %s",
                        (at,)).fetchall()
    assert sorted(str(r["server_id"]) for r in rows) == sorted(str(s["id"]) for s in [*good, poison])
    by_id = {r["server_id"]: r for r in rows}
    assert all(by_id[s["id"]]["success"] for s in good)
    assert (by_id[poison["id"]]["success"], by_id[poison["id"]]["error_kind"]) == (False, "config")
    attempts = conn.execute("select coalesce(sum(attempts), 0) as n from connection_metrics_hourly").fetchone()["n"]
    assert attempts == len(good) + 1 + 1  # the batch once, plus the marker poll
    # And the batch was not failed and retried by Dramatiq
    assert "Retrying message" not in (tmp_path / "procs.log").read_text()


def test_an_idle_worker_asks_for_polls_at_least_every_50_ms(services_env):
    """A scheduler step sent to idle workers must start on time: Dramatiq's idle consumer pauses up to
    its worker timeout (1 s) between fetches, which made every step start 0.5-1 s late. The broker the
    worker imports (`dramatiq worker.broker …`) caps the pause of the poll and operation queues."""
    probe = ("import json; from worker.broker import broker; "
             "print(json.dumps({q: broker.consume(q, prefetch=1, timeout=1000).timeout "
             "for q in ('polls', 'operations', 'inventory', 'alerts', 'polls.DQ')}))")
    out = subprocess.run([sys.executable, "-c", probe], env=services_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    pauses = json.loads(out.stdout.strip().splitlines()[-1])
    # Polls and operations: at most 50 ms idle between fetches; the rest keep the worker's timeout
    assert pauses["polls"] <= 50 and pauses["operations"] <= 50
    assert pauses["inventory"] == pauses["alerts"] == pauses["polls.DQ"] == 1000


def test_a_worker_process_takes_at_most_as_many_poll_messages_as_it_has_threads(services_env):
    """A poll message holds up to PROXWATCH_POLL_BATCH (32) polls; with Dramatiq's prefetch (twice the
    threads) the first process to ask took a whole 1,000-server burst (32 messages) and the cycle took
    2.1 x its ideal. The broker caps the poll queue's prefetch at the process's threads; the other
    queues keep Dramatiq's."""
    probe = ("import json; from worker.broker import broker; "
             "print(json.dumps({q: broker.consume(q, prefetch=8, timeout=1000).prefetch "
             "for q in ('polls', 'operations', 'inventory', 'polls.DQ')}))")
    out = subprocess.run([sys.executable, "-c", probe], env=dict(services_env, PROXWATCH_WORKER_THREADS="3"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"polls": 3, "operations": 8, "inventory": 8,
                                                                 "polls.DQ": 8}
