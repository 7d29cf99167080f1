"""Prometheus metrics: the fleet exporter and a worker group's own endpoint, scraped over HTTP and
read with Prometheus's text parser."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import spawn, stop
from tests.support.seed import add_guest, open_session
from tests.support.waiting import free_port, wait_for_http, wait_until
from worker.metrics import fleet, process
from worker.polling import Poller, Recorder, utcnow

ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[str, list]:
    """{sample name: [samples]} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def by_server(samples, name):
    return {(s.labels["tenant"], s.labels["name"]): s.value for s in samples.get(name, [])}


@pytest.fixture
def exporter(services_env, tmp_path):
    port = free_port()
    env = dict(services_env, PROXWATCH_METRICS_PORT=str(port))
    log = tmp_path / "metrics.log"
    with open(log, "ab") as out:
        proc = spawn(["-m", "worker.metrics"], env, out)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for_http(url, proc=proc, log=log)
        yield url
    finally:
        stop(proc)


def test_the_exporter_shows_each_servers_gauges_as_the_database_has_them(pve, add_server, conn, pool, box,
                                                                         settings, exporter):
    up = add_server("pve-up", pve.url)
    down = add_server("pve-down", pve.url, token="root@pam!monitor=not-the-secret")
    add_server("pve-new", pve.url)  # never polled: unknown
    poller, recorder = Poller(pool, box, settings), Recorder(pool, settings)
    at = utcnow().replace(microsecond=0)
    for sid in (up["id"], down["id"]):
        recorder.write([poller.poll(str(sid), at)])
    conn.execute("update proxmox_servers set connection_status = 'offline' where id = %s", (down["id"],))
    add_guest(conn, up["id"], 100, "web", status="running")
    add_guest(conn, up["id"], 101, "db", status="stopped")
    open_session(conn, up["id"], None)
    conn.commit()

    samples = scrape(exporter)
    row = conn.execute("select * from proxmox_servers where id = %s", (up["id"],)).fetchone()
    newest = conn.execute("select response_time_ms from connection_metrics where server_id = %s",
                          (up["id"],)).fetchone()
    assert by_server(samples, "proxwatch_server_up") == {("acme", "pve-up"): 1.0, ("acme", "pve-down"): 0.0}
    assert by_server(samples, "proxwatch_server_response_time_seconds") == \
        {("acme", "pve-up"): newest["response_time_ms"] / 1000}
    assert by_server(samples, "proxwatch_server_success_ratio_24h") == \
        {("acme", "pve-up"): 1.0, ("acme", "pve-down"): 0.0}
    assert by_server(samples, "proxwatch_server_nodes_online") == {("acme", "pve-up"): float(row["nodes_online"])}
    assert by_server(samples, "proxwatch_server_guests_running")[("acme", "pve-up")] == 1.0
    assert by_server(samples, "proxwatch_server_sessions_open") == \
        {("acme", "pve-up"): 1.0, ("acme", "pve-down"): 0.0, ("acme", "pve-new"): 0.0}
    assert set(by_server(samples, "proxwatch_server_operations_running").values()) == {0.0}
    assert "proxwatch_server_learned_timeout_seconds" not in samples  # not learned after one poll

    conn.execute("update proxmox_servers set learned_timeout_ms = 2500 where id = %s", (up["id"],))
    conn.commit()
    assert by_server(scrape(exporter), "proxwatch_server_learned_timeout_seconds") == {("acme", "pve-up"): 2.5}


def test_polls_and_writes_are_counted_across_processes_in_multiprocess_mode(pve, add_server, pool, box, settings,
                                                                            tmp_path, monkeypatch):
    from prometheus_client import values

    # This process goes back to single-process mode after the test.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setattr(process, "_instruments", None)
    good = add_server("pve1", pve.url)
    bad = add_server("pve2", pve.url, token="root@pam!monitor=not-the-secret")
    directory = tmp_path / "group"
    process.setup(directory)
    poller, recorder = Poller(pool, box, settings), Recorder(pool, settings)
    at = utcnow().replace(microsecond=0)
    recorder.write([poller.poll(str(good["id"]), at), poller.poll(str(bad["id"]), at)])

    port = free_port()
    from worker.metrics.http import make_server
    import threading

    server = make_server("127.0.0.1", port, lambda: process.registry(directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    polls = {(s.labels["outcome"], s.labels["error_kind"]): s.value for s in samples["proxwatch_polls_total"]}
    assert polls == {("success", "none"): 1.0, ("failure", "auth"): 1.0}
    counts = {s.labels["outcome"]: s.value for s in samples["proxwatch_poll_duration_seconds_count"]}
    assert counts == {"success": 1.0, "failure": 1.0}
    assert [s.value for s in samples["proxwatch_db_write_duration_seconds_count"]] == [1.0]
    assert any(s.labels["le"] == "+Inf" for s in samples["proxwatch_db_write_duration_seconds_bucket"])


def test_a_worker_group_serves_its_own_metrics(pve, add_server, services_env, tmp_path, redis_server):
    s = add_server("pve1", pve.url)
    port = free_port()
    env = dict(services_env, PROXWATCH_WORKER_METRICS_PORT=str(port), PROXWATCH_WORKER_METRICS_DIR=str(tmp_path))
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = spawn(["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "2"],
                     env, out)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for_http(url, timeout=60, proc=proc, log=log)
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", "from worker.actors import poll; "
                        f"poll.send('{s['id']}', '{utcnow().isoformat()}')"],
                       cwd=ROOT, env=env, check=True, timeout=60)
        samples = wait_until(lambda: (lambda m: m if "proxwatch_polls_total" in m and any(
            x.labels.get("queue_name") == "polls" for x in m.get("dramatiq_messages_total", [])) else None)(
            scrape(url)), timeout=60, interval=0.5)
        assert samples, log.read_text()[-3000:]
        assert {x.labels["outcome"] for x in samples["proxwatch_polls_total"]} == {"success"}
        assert "dramatiq_message_duration_seconds_bucket" in samples
        depth = {x.labels["queue_name"]: x.value for x in samples["dramatiq_queue_messages"]}
        assert "polls" in depth
    finally:
        stop(proc)


# Prometheus naming: snake_case with the namespace first; counters end in _total; units are base
# units in the name's suffix (seconds, ratio); nothing in milliseconds.
NAME = re.compile(r"^(proxwatch|dramatiq)_[a-z][a-z0-9_]*$")


def exposed() -> set[str]:
    return set(fleet.NAMES) | set(process.NAMES)


def test_metric_names_follow_prometheus_conventions():
    for name in exposed():
        assert NAME.match(name), name
        assert not re.search(r"_(ms|milliseconds|percent)(_|$)", name), name
    for name in ("proxwatch_polls_total", "dramatiq_messages_total", "dramatiq_message_errors_total"):
        assert name in exposed()
    assert all(n.endswith("_seconds") for n in exposed() if "duration" in n or "time" in n)


def test_the_grafana_board_uses_only_names_proxwatch_exposes():
    board = json.loads((ROOT / "deploy" / "grafana" / "proxwatch.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs
    used = set()
    for expr in exprs:
        used |= {n for n in re.findall(r"\b((?:proxwatch|dramatiq)_[a-z0-9_]+)", expr)}
    suffixes = ("_bucket", "_count", "_sum")
    known = exposed() | {n + s for n in exposed() for s in suffixes}
    assert used and used <= known, used - known
