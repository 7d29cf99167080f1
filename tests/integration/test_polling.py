"""A poll against a PVE API over real HTTPS (fakepve), recorded in real Postgres."""

from __future__ import annotations

import time
from datetime import timedelta

from tests.support.tcp import client_ports
from tests.support.waiting import wait_until
from worker.polling import Poller, utcnow


def poll_and_record(poller, recorder, server_id, at=None):
    at = at or utcnow().replace(microsecond=0)
    result = poller.poll(str(server_id), at)
    recorder.write([result])
    return result


def metrics(conn, server_id):
    return conn.execute("select * from connection_metrics where server_id = %s order by scheduled_at",
                        (server_id,)).fetchall()


def server(conn, server_id):
    conn.commit()
    return conn.execute("select * from proxmox_servers where id = %s", (server_id,)).fetchone()


def test_a_healthy_poll_writes_one_metric_row_and_brings_the_server_online(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url)
    result = poll_and_record(poller, recorder, s["id"])
    assert result.success and result.error_kind is None
    rows = metrics(conn, s["id"])
    assert len(rows) == 1
    assert rows[0]["success"] is True and rows[0]["response_time_ms"] >= 0 and rows[0]["used_fallback"] is False
    row = server(conn, s["id"])
    assert row["connection_status"] == "online"
    assert row["pve_version"] == pve.version
    assert (row["nodes_online"], row["nodes_total"]) == (1, 1)
    assert row["last_health_check_at"] is not None and row["last_connected_at"] is not None


def test_password_login_works_and_a_wrong_password_is_an_auth_failure(pve, add_server, poller, recorder, conn):
    good = add_server("pw-good", pve.url, user="root@pam", password="secret", token=None)
    bad = add_server("pw-bad", pve.url, user="root@pam", password="wrong-password", token=None)
    assert poll_and_record(poller, recorder, good["id"]).success
    result = poll_and_record(poller, recorder, bad["id"])
    assert not result.success and result.error_kind == "auth"
    row = metrics(conn, bad["id"])[0]
    assert row["error_kind"] == "auth" and "refused the login" in row["error_message"]


def test_a_wrong_token_is_an_auth_failure(pve, add_server, poller, recorder, conn):
    s = add_server("tok-bad", pve.url, token="root@pam!monitor=not-the-secret")
    result = poll_and_record(poller, recorder, s["id"])
    assert result.error_kind == "auth" and "401" in result.error_message


def test_a_5xx_answer_is_recorded_as_http_with_the_servers_message(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url)
    pve.fail("GET", "/cluster/status", 500, "hostname lookup 'pve1' failed")
    result = poll_and_record(poller, recorder, s["id"])
    assert result.error_kind == "http"
    assert "500" in result.error_message and "hostname lookup" in result.error_message


def test_a_hang_hits_the_learned_timeout(pve, add_server, poller, recorder, conn, settings):
    s = add_server("pve1", pve.url)
    start = utcnow().replace(microsecond=0) - timedelta(minutes=10)
    # Given enough fast polls that a timeout is learned (the stats refresh at least once a minute)
    for i in range(8):
        poll_and_record(poller, recorder, s["id"], start + timedelta(seconds=70 * i))
    conn.execute("update proxmox_servers set last_health_check_at = now() - interval '10 minutes' where id = %s",
                 (s["id"],))
    conn.commit()
    poll_and_record(poller, recorder, s["id"], start + timedelta(seconds=70 * 8))
    learned = server(conn, s["id"])["learned_timeout_ms"]
    assert learned == settings.timeout_min_ms  # fast loopback answers: the lower bound
    # When the server hangs (and a worker has read the settings again: it does every TARGET_TTL_S)
    # (longer than the 5 s default, and no longer: the fixture's teardown waits for the hung answers)
    pve.flaky_network(hang_rate=1.0, hang_secs=settings.timeout_default_ms / 1000 + 1)
    poller = Poller(poller.pool, poller.box, poller.settings)
    t0 = time.monotonic()
    result = poll_and_record(poller, recorder, s["id"])
    elapsed = time.monotonic() - t0
    # Then the poll gives up after the learned timeout, not the 5 s default
    assert result.error_kind == "timeout"
    assert f"{learned} ms" in result.error_message
    assert elapsed < settings.timeout_default_ms / 1000


def test_a_certificate_with_another_fingerprint_is_refused(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url, fingerprint="AB" * 32)
    result = poll_and_record(poller, recorder, s["id"])
    assert result.error_kind == "tls" and "fingerprint does not match" in result.error_message
    assert metrics(conn, s["id"])[0]["success"] is False


def test_an_unpinned_self_signed_certificate_is_refused_but_insecure_mode_accepts_it(pve, add_server, poller,
                                                                                     recorder, conn):
    verified = add_server("verify", pve.url, fingerprint=None)
    insecure = add_server("insecure", pve.url, fingerprint=None, insecure=True)
    assert poll_and_record(poller, recorder, verified["id"]).error_kind == "tls"
    assert poll_and_record(poller, recorder, insecure["id"]).success
    assert server(conn, insecure["id"])["tls_mode"] == "insecure"


def test_the_fallback_address_is_used_when_the_primary_refuses(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", "https://127.0.0.1:1", fallback_url=pve.url)
    result = poll_and_record(poller, recorder, s["id"])
    assert result.success and result.used_fallback
    assert metrics(conn, s["id"])[0]["used_fallback"] is True
    row = server(conn, s["id"])
    assert row["connection_status"] == "degraded" and "fallback" in row["health_check_error"]


def test_the_fallback_is_not_tried_for_an_auth_failure(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url, fallback_url=pve.url, token="root@pam!monitor=wrong")
    result = poll_and_record(poller, recorder, s["id"])
    assert result.error_kind == "auth" and not result.used_fallback


def test_going_offline_takes_three_consecutive_failures_and_one_success_brings_it_back(
        pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url)
    t = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    poll_and_record(poller, recorder, s["id"], t)
    assert server(conn, s["id"])["connection_status"] == "online"
    pve.fail("GET", "/version", 503, "Service Unavailable")
    statuses = []
    for i in range(1, 4):
        poll_and_record(poller, recorder, s["id"], t + timedelta(seconds=10 * i))
        statuses.append(server(conn, s["id"])["connection_status"])
    assert statuses == ["online", "online", "offline"]
    assert "503" in server(conn, s["id"])["health_check_error"]
    pve.failures.clear()
    poll_and_record(poller, recorder, s["id"], t + timedelta(seconds=40))
    row = server(conn, s["id"])
    # Answering again, but 3 of its last polls failed: degraded until they age out of the window.
    assert row["connection_status"] == "degraded"


def test_a_retried_poll_message_never_counts_twice(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url)
    at = utcnow().replace(microsecond=0)
    first = poller.poll(str(s["id"]), at)
    again = poller.poll(str(s["id"]), at)
    assert recorder.write([first]) == 1
    assert recorder.write([again]) == 0
    assert len(metrics(conn, s["id"])) == 1
    hourly = conn.execute("select attempts from connection_metrics_hourly where server_id = %s",
                          (s["id"],)).fetchall()
    assert [h["attempts"] for h in hourly] == [1]


def test_the_server_row_is_rewritten_only_when_something_visible_changes(pve, add_server, poller, recorder, conn):
    s = add_server("pve1", pve.url)
    t = utcnow().replace(microsecond=0)
    poll_and_record(poller, recorder, s["id"], t)
    before = server(conn, s["id"])
    xmin = conn.execute("select xmin::text from proxmox_servers where id = %s", (s["id"],)).fetchone()["xmin"]
    for i in range(1, 5):  # four more healthy polls within the same minute
        poll_and_record(poller, recorder, s["id"], t + timedelta(seconds=i))
    after = conn.execute("select xmin::text from proxmox_servers where id = %s", (s["id"],)).fetchone()["xmin"]
    assert after == xmin, "an unchanged status must not rewrite the published row"
    assert len(metrics(conn, s["id"])) == 5
    assert server(conn, s["id"])["last_health_check_at"] == before["last_health_check_at"]


def test_group_commit_records_concurrent_polls_in_few_transactions(pve, add_server, poller, recorder, conn):
    from concurrent.futures import ThreadPoolExecutor

    servers = [add_server(f"pve{i}", pve.url) for i in range(12)]
    at = utcnow().replace(microsecond=0)
    with ThreadPoolExecutor(12) as ex:
        list(ex.map(lambda s: recorder.record(poller.poll(str(s["id"]), at)), servers))
    conn.commit()
    count = conn.execute("select count(*) as n from connection_metrics").fetchone()["n"]
    assert count == 12

    # The status follows from the writer's own fold, once it has been idle a moment (ROLLUP_IDLE_S)
    def online():
        n = conn.execute("select count(*) as n from proxmox_servers where connection_status = 'online'").fetchone()["n"]
        conn.commit()
        return n == 12
    wait_until(online, timeout=5, what="the 12 servers online after the writer's fold")


def test_record_many_returns_once_its_rows_are_committed_and_waiting_callers_share_one_transaction(
        add_server, recorder, pool, conn):
    import threading

    from worker.polling import WRITER_THREADS, PollResult

    busy = WRITER_THREADS  # one blocked message per writer thread
    servers = [str(add_server(f"pve{i}", f"https://pve{i}.example.test:8006")["id"]) for i in range(busy + 8)]
    conn.commit()
    at = utcnow().replace(microsecond=0)

    def result(sid):
        return PollResult(server_id=sid, scheduled_at=at, created_at=at, success=True, response_time_ms=40,
                          pve_version="8.2.4", nodes_online=1, nodes_total=1, quorate=True)

    transactions = []
    write = recorder.write
    recorder.write = lambda results, *a, **kw: transactions.append(len(results)) or write(results, *a, **kw)
    committed_on_return = {}

    def record(sids):
        recorder.record_many([result(sid) for sid in sids])
        with pool.connection() as c:  # another connection: sees committed rows only
            committed_on_return[sids[0]] = c.execute(
                "select count(*) as n from connection_metrics where server_id = any(%s::uuid[])", (sids,)).fetchone()["n"]

    # Given a server row locked by another transaction per writer thread, and one message for each of
    # them, so every writer's transaction waits
    conn.execute("select 1 from proxmox_servers where id = any(%s::uuid[]) for update", (servers[:busy],))
    first = [threading.Thread(target=record, args=([sid],)) for sid in servers[:busy]]
    for n, t in enumerate(first, 1):
        t.start()
        wait_until(lambda n=n: len(transactions) == n, timeout=10)
    # When four messages of two polls each are handed over meanwhile
    others = [threading.Thread(target=record, args=(servers[busy + 2 * m:busy + 2 + 2 * m],)) for m in range(4)]
    for t in others:
        t.start()
    wait_until(lambda: recorder._queue.qsize() == 4, timeout=10)
    assert not committed_on_return, "nobody returns before its rows are committed"
    conn.rollback()
    for t in [*first, *others]:
        t.join(timeout=30)
    # Then every caller saw its rows committed when it returned, and the four waiting messages went
    # into one transaction
    assert committed_on_return == {**{sid: 1 for sid in servers[:busy]},
                                   **{servers[busy + 2 * m]: 2 for m in range(4)}}
    assert transactions == [1] * busy + [8]


def test_two_writers_of_one_server_each_see_the_others_committed_poll_when_deciding_its_status(
        add_server, pool, settings, conn):
    import threading

    from worker.polling import PollResult, Recorder

    sid = str(add_server("pve1", "https://pve1.example.test:8006")["id"])
    conn.commit()
    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=1)

    def result(i, ok):
        at = t0 + timedelta(seconds=10 * i)
        return PollResult(server_id=sid, scheduled_at=at, created_at=at, success=ok,
                          response_time_ms=40 if ok else None, error_kind=None if ok else "timeout",
                          error_message=None if ok else "pve1 did not answer within 5000 ms",
                          pve_version="8.2.4" if ok else None, nodes_online=1 if ok else None,
                          nodes_total=1 if ok else None, quorate=True if ok else None)

    Recorder(pool, settings).write([result(0, True)])
    Recorder(pool, settings).write([result(1, False)])
    assert server(conn, sid)["connection_status"] == "online"
    # Given the server's status row held by another transaction, two workers each write one more
    # failed poll (the second and third in a row) and wait for the status row
    conn.execute("select 1 from proxmox_servers where id = %s for no key update", (sid,))
    writers = [threading.Thread(target=Recorder(pool, settings).write, args=([result(i, False)],)) for i in (2, 3)]
    for t in writers:
        t.start()

    def waiting():
        with pool.connection() as c:
            return c.execute("select count(*) as n from pg_stat_activity where wait_event_type = 'Lock'"
                             " and datname = current_database()").fetchone()["n"] == 2
    wait_until(waiting, timeout=10, what="both writers waiting for the status row")
    # When the row is released, the writers decide one after the other
    conn.rollback()
    for t in writers:
        t.join(timeout=30)
    # Then the later one counted the earlier one's poll: three failures in a row make it offline
    assert [m["success"] for m in metrics(conn, sid)] == [True, False, False, False]
    assert server(conn, sid)["connection_status"] == "offline"
    open_incidents = conn.execute("select status::text from incidents where server_id = %s and ended_at is null",
                                  (sid,)).fetchall()
    assert [i["status"] for i in open_incidents] == ["offline"]


def test_verify_mode_trusts_a_known_ca_and_checks_the_hostname(pve, add_server, pool, box, settings, recorder,
                                                               conn, fakepve_cafile, _fakepve_pki):
    from fakepve import FakePve
    from fakepve.pytest_plugin import _Serving

    # Given the fake's certificate installed as a CA (it names localhost and 127.0.0.1 only)
    poller = Poller(pool, box, settings, ca_file=fakepve_cafile)
    trusted = add_server("trusted", pve.url, fingerprint=None)
    assert poll_and_record(poller, recorder, trusted["id"]).success
    # When a server on another address presents that same certificate
    other = _Serving(FakePve(host="127.0.0.5", port=0), *_fakepve_pki)
    try:
        other.pve.apitokens.update(pve.apitokens)
        wrong_name = add_server("wrong-name", other.pve.url, fingerprint=None)
        result = poll_and_record(poller, recorder, wrong_name["id"])
    finally:
        other.stop()
    # Then the hostname check refuses it
    assert result.error_kind == "tls"


def test_a_newly_learned_timeout_keeps_the_servers_connection(pve, add_server, poller, recorder, conn, settings):
    s = add_server("pve1", pve.url)
    row = poller.target(s["id"])
    assert poll_and_record(poller, recorder, s["id"]).success
    first = client_ports(pve.url)
    assert len(first) == 1
    # When the server's learned timeout changes from poll to poll (it follows its response times)
    at = utcnow().replace(microsecond=0)
    for i, timeout_ms in enumerate((settings.timeout_min_ms, 2345, settings.timeout_max_ms)):
        result = poller.poll(str(s["id"]), at + timedelta(seconds=i + 1), {**row, "learned_timeout_ms": timeout_ms})
        assert result.success
    # Then every poll went over the same keep-alive connection: no new TCP connection, no new TLS handshake
    assert client_ports(pve.url) == first
