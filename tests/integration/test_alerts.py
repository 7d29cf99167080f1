"""Alerts through real receivers: statuses come from real polls (a fake PVE over HTTPS, or an address
that refuses), the worker's Recorder writes them with their incidents — and the database's trigger
writes the outbox row in that transaction; the drain groups, the sender delivers through Apprise
to a real HTTP receiver (json://) and a real SMTP server (aiosmtpd, mailto://).

The clock of the drain and the sender is a parameter: "30 s later" is `later(31)`, not a wait; the
receivers, the network failures and the database are real."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from datetime import timedelta

import pytest

from tests.support.alerting import Polls, later
from tests.support.waiting import free_port
from worker import alerts
from worker.embedded.services import pg_bindir
from worker.polling import PollResult, utcnow

HOOK_PASSWORD = "hook-S3cret-pw"


def down(pve, times: int) -> None:
    pve.fail("GET", "/cluster/status", 500, "hostname lookup 'pve1' failed", times=times)


def tenant_id(conn, name="acme"):
    return conn.execute("select id from public.tenants where name = %s", (name,)).fetchone()["id"]


def hook_url(webhook) -> str:
    return webhook.url.replace("json://", f"json://proxwatch:{HOOK_PASSWORD}@")


@pytest.fixture
def channels(conn, box, add_server, pve, webhook, smtp):
    """Tenant acme (made by its first server) with a json:// and a mailto:// channel."""
    server = add_server("pve1", pve.url)
    tid = tenant_id(conn)
    alerts.add_channel(conn, box, tid, "hook", hook_url(webhook))
    alerts.add_channel(conn, box, tid, "mail", smtp.url())
    return server


def flush(pool, box, alert_settings, seconds: float) -> int:
    """The scheduled job `seconds` from now: drain the outbox, send what is due; deliveries tried."""
    now = later(seconds)
    alerts.drain(pool, alert_settings, now)
    return alerts.deliver_due(pool, box, alert_settings, now)


def events(conn) -> list[dict]:
    conn.commit()
    return conn.execute("select kind, problem, state, reason from public.alert_events order by created_at").fetchall()


def test_offline_sends_exactly_one_message_per_channel_after_the_window(channels, pve, poller, recorder, pool, box,
                                                                       alert_settings, settings, webhook, smtp, conn):
    polls = Polls(poller, recorder, [channels["id"]])
    polls.round()
    # When pve1 goes offline
    down(pve, settings.offline_after)
    polls.round(settings.offline_after)
    # Then nothing is sent inside the group window
    assert flush(pool, box, alert_settings, 5) == 0
    assert webhook.received == [] and smtp.mails == []
    # And once the window has passed, one message on each channel
    assert flush(pool, box, alert_settings, 31) == 2
    [hook] = webhook.wait_count(1)
    [mail] = smtp.wait_count(1)
    assert hook["message"].startswith("1 server went offline: pve1") and "hostname lookup" in hook["message"]
    assert hook["type"] == "failure" and "offline" in hook["title"]
    assert "1 server went offline: pve1" in mail.get_body(("plain",)).get_content()
    # And never again
    assert flush(pool, box, alert_settings, 300) == 0
    assert len(webhook.received) == 1 and len(smtp.mails) == 1
    assert [(e["kind"], e["state"]) for e in events(conn)] == [("offline", "sent")]
    log = conn.execute("select channel_name, outcome from public.alert_attempts order by channel_name").fetchall()
    assert [(r["channel_name"], r["outcome"]) for r in log] == [("hook", "delivered"), ("mail", "delivered")]


def test_recovery_sends_one_message_for_a_notified_problem(channels, pve, poller, recorder, pool, box,
                                                           alert_settings, settings, webhook, smtp, conn):
    polls = Polls(poller, recorder, [channels["id"]])
    down(pve, settings.offline_after)
    polls.round(settings.offline_after)
    flush(pool, box, alert_settings, 31)
    webhook.wait_count(1)
    # When it answers again until it is online
    polls.round(10)
    assert flush(pool, box, alert_settings, 31) == 2
    first, back = webhook.wait_count(2)
    assert back["message"] == "1 server is back online: pve1" and back["type"] == "success"
    assert len(smtp.wait_count(2)) == 2
    assert flush(pool, box, alert_settings, 120) == 0 and len(webhook.received) == 2


def test_a_problem_that_starts_and_ends_inside_the_window_sends_nothing(channels, pve, poller, recorder, pool, box,
                                                                        alert_settings, settings, webhook, conn):
    polls = Polls(poller, recorder, [channels["id"]])
    down(pve, settings.offline_after)
    polls.round(settings.offline_after + 10)    # offline, then back online: all inside 30 s of real time
    assert flush(pool, box, alert_settings, 31) == 0
    assert webhook.received == []
    assert [(e["kind"], e["state"], e["reason"]) for e in events(conn)] == [
        ("offline", "dropped", "started and ended inside the group window"),
        ("recovered", "dropped", "nobody was told about the problem")]
    # Unless the rule asks for such flaps: then both go out, in one message
    conn.execute("select public.alert_rule_set(%s, p_flaps => true)", (tenant_id(conn),))
    conn.commit()
    down(pve, settings.offline_after)
    polls.round(settings.offline_after + 10)
    assert flush(pool, box, alert_settings, 31) == 2
    [both] = webhook.wait_count(1)
    lines = both["message"].splitlines()
    assert lines[0] == "1 server went offline: pve1" and "hostname lookup 'pve1' failed" in lines[1]
    assert lines[2:] == ["1 server is back online: pve1"]


def test_fifty_servers_offline_together_send_one_message_per_channel(conn, box, add_server, pve, poller, recorder,
                                                                     pool, alert_settings, settings, webhook, smtp):
    refused = f"https://127.0.0.1:{free_port()}"
    ids = [add_server(f"pve-{k:02d}", refused)["id"] for k in range(50)]
    alerts.add_channel(conn, box, tenant_id(conn), "hook", hook_url(webhook))
    alerts.add_channel(conn, box, tenant_id(conn), "mail", smtp.url())
    # When 50 servers stop answering in the same cycles
    Polls(poller, recorder, ids).round(settings.offline_after)
    # Then one message per channel lists them
    assert flush(pool, box, alert_settings, 31) == 2
    [hook] = webhook.wait_count(1)
    assert hook["message"].startswith("50 servers went offline: pve-")
    assert hook["message"].splitlines()[0].endswith("… and 42 more")
    assert len(smtp.wait_count(1)) == 1
    assert flush(pool, box, alert_settings, 120) == 0 and len(webhook.received) == 1 and len(smtp.mails) == 1


def test_a_receiver_down_for_60_s_gets_the_message_once_after_it_returns(channels, pve, poller, recorder, pool, box,
                                                                         alert_settings, settings, webhook, conn):
    polls = Polls(poller, recorder, [channels["id"]])
    down(pve, settings.offline_after)
    polls.round(settings.offline_after)
    # Given the webhook receiver is down
    webhook.stop()
    # When the message is due and retried at 10 s, 20 s, … (the backoff) while it stays down for 60 s
    for at in (31, 41, 61, 91):
        flush(pool, box, alert_settings, at)
    failed = conn.execute("select attempt, outcome, answer from public.alert_attempts where channel_name = 'hook'"
                          " order by attempt").fetchall()
    assert [(r["attempt"], r["outcome"]) for r in failed] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert "Connection error" in failed[0]["answer"]
    # The tries are spaced 10 s, 20 s, 40 s apart: at +91 s the fourth was not due yet
    assert conn.execute("select state, attempts from public.alert_deliveries where channel_name = 'hook'"
                        ).fetchone() == {"state": "pending", "attempts": 3}
    # When it is back (same port) and the next try comes
    webhook.start()
    flush(pool, box, alert_settings, 200)
    # Then it has the message once, and later rounds send nothing more
    assert len(webhook.wait_count(1)) == 1
    flush(pool, box, alert_settings, 2000)
    assert len(webhook.received) == 1
    assert conn.execute("select outcome from public.alert_attempts where channel_name = 'hook'"
                        " order by attempt desc limit 1").fetchone()["outcome"] == "delivered"


def test_a_channel_that_keeps_failing_is_marked_failing_and_not_retried_forever(conn, channels, pve, poller, recorder,
                                                                                 pool, box, settings, webhook):
    from worker.settings import AlertSettings

    quick = AlertSettings(group_window_s=0, retry_min_s=1, retry_max_s=2, max_attempts=3)
    webhook.stop()
    down(pve, settings.offline_after)
    Polls(poller, recorder, [channels["id"]]).round(settings.offline_after)
    for at in range(0, 60, 3):
        flush(pool, box, quick, at)
    conn.commit()
    assert conn.execute("select state, attempts from public.alert_deliveries where channel_name = 'hook'"
                        ).fetchone() == {"state": "failed", "attempts": 3}
    assert conn.execute("select failing, consecutive_failures from public.alert_channels where name = 'hook'"
                        ).fetchone() == {"failing": True, "consecutive_failures": 3}
    listed = {r["name"]: r for r in conn.execute("select * from public.alert_channels_list()").fetchall()}
    assert listed["hook"]["failing"] and not listed["mail"]["failing"]


def test_a_silenced_problem_is_recorded_not_sent_and_sent_when_the_silence_ends(channels, pve, poller, recorder,
                                                                                pool, box, alert_settings, settings,
                                                                                webhook, conn):
    silence = conn.execute("select public.alert_silence_add(%s, %s, null, 7200, 'maintenance') as id",
                           (tenant_id(conn), channels["id"])).fetchone()["id"]
    conn.commit()
    polls = Polls(poller, recorder, [channels["id"]])
    down(pve, settings.offline_after)
    polls.round(settings.offline_after)
    # Then the incident is recorded, and nothing is sent
    assert flush(pool, box, alert_settings, 31) == 0 and flush(pool, box, alert_settings, 600) == 0
    assert webhook.received == []
    assert conn.execute("select count(*) as n from public.incidents where ended_at is null").fetchone()["n"] == 1
    assert [(e["kind"], e["state"]) for e in events(conn)] == [("offline", "silenced")]
    # When the silence ends while the server is still offline, the problem is sent then
    conn.execute("select public.alert_silence_end(%s)", (silence,))
    conn.commit()
    assert flush(pool, box, alert_settings, 1) == 2
    assert webhook.wait_count(1)[0]["message"].startswith("1 server went offline: pve1")


def test_a_problem_that_ends_under_its_silence_is_never_sent(channels, pve, poller, recorder, pool, box,
                                                             alert_settings, settings, webhook, conn):
    conn.execute("select public.alert_silence_add(%s, null, null, 7200, 'tenant-wide')", (tenant_id(conn),))
    conn.commit()
    polls = Polls(poller, recorder, [channels["id"]])
    down(pve, settings.offline_after)
    polls.round(settings.offline_after)
    flush(pool, box, alert_settings, 31)
    polls.round(10)
    flush(pool, box, alert_settings, 62)
    assert webhook.received == []
    assert [(e["kind"], e["state"]) for e in events(conn)] == [("offline", "dropped"), ("recovered", "dropped")]


def test_two_schedulers_and_workers_at_once_send_each_message_once(channels, pve, poller, recorder, pool, box,
                                                                   alert_settings, settings, webhook, smtp):
    down(pve, settings.offline_after)
    Polls(poller, recorder, [channels["id"]]).round(settings.offline_after)
    now = later(31)
    start = threading.Barrier(4)

    def drain_and_send():
        start.wait()
        alerts.drain(pool, alert_settings, now)
        alerts.deliver_due(pool, box, alert_settings, now)

    threads = [threading.Thread(target=drain_and_send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alerts.deliver_due(pool, box, alert_settings, later(60))
    assert len(webhook.wait_count(1)) == 1 and len(smtp.wait_count(1)) == 1
    with pool.connection() as c:
        assert c.execute("select count(*) as n from public.alert_deliveries").fetchone()["n"] == 2


def test_the_channel_password_is_in_no_dump_and_no_log(channels, pve, poller, recorder, pool, box, alert_settings,
                                                       settings, webhook, smtp, db_url, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    down(pve, settings.offline_after)
    Polls(poller, recorder, [channels["id"]]).round(settings.offline_after)
    webhook.stop()                             # a failed try (its answer is logged and stored)
    flush(pool, box, alert_settings, 31)
    webhook.start()
    flush(pool, box, alert_settings, 60)
    assert webhook.wait_count(1) and webhook.auth[0]   # the password did go to the receiver (basic auth)
    dump = subprocess.run([str(pg_bindir() / "pg_dump"), "--data-only", db_url], capture_output=True, text=True,
                          check=True).stdout
    assert "alert_channels" in dump and "hook" in dump
    for secret in (HOOK_PASSWORD, smtp.password):
        assert secret not in dump
        assert secret not in caplog.text
        out, err = capfd.readouterr()
        assert secret not in out + err
    assert "****" in dump     # the masked URL and the masked answers are there


def test_a_url_apprise_cannot_use_is_refused_and_nothing_is_written(conn, box, add_server, pve):
    add_server("pve1", pve.url)
    for url, words in (("not a url", "scheme://"), ("nosuchservice://x/y", "does not understand")):
        with pytest.raises(alerts.ChannelUrlError, match=words):
            alerts.add_channel(conn, box, tenant_id(conn), "bad", url)
    assert conn.execute("select count(*) as n from public.alert_channels").fetchone()["n"] == 0


# ----------------------------------------------------------------------------------- who sees what

def test_members_see_their_teams_alerts_masked_and_only_admins_remove_channels(teams, conn, uconn, box, webhook):
    import psycopg

    from tests.support.seed import call

    alerts.add_channel(conn, box, teams.teams["acme"], "hook", hook_url(webhook))
    conn.execute("insert into public.incidents (tenant_id, server_id, status, started_at)"
                 " values (%s, %s, 'offline', now())", (teams.teams["acme"], teams.servers["pve1"]))
    conn.commit()
    victor, olga, alice, bob = (teams.users[n] for n in ("victor", "olga", "alice", "bob"))
    # A member sees the channel masked, never the table that holds its ciphertext
    [listed] = call(uconn, victor, "select * from public.alert_channels_list()")
    assert listed["name"] == "hook" and HOOK_PASSWORD not in listed["url_masked"] and "****" in listed["url_masked"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, victor, "select * from public.alert_channels")
    # The outbox row of the incident is the team's only
    assert [r["kind"] for r in call(uconn, victor, "select * from public.alert_events")] == ["offline"]
    assert call(uconn, bob, "select * from public.alert_events") == []
    assert call(uconn, bob, "select * from public.alert_channels_list()") == []
    # Operators silence, viewers do not; only admins remove a channel
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, victor, "select public.alert_silence_add(%s, null, null, 3600)", (teams.teams["acme"],))
    assert call(uconn, olga, "select public.alert_silence_add(%s, null, null, 3600, 'deploy') as id",
                (teams.teams["acme"],), many=False)["id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        call(uconn, olga, "select public.alert_silence_add(%s, null, null, 10)", (teams.teams["acme"],))
    for user in (olga, bob):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            call(uconn, user, "select public.alert_channel_remove(%s)", (listed["id"],))
    assert call(uconn, alice, "select public.alert_channel_remove(%s) as ok", (listed["id"],), many=False)["ok"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, None, "select * from public.alert_events")


# ------------------------------------------------------------------------------------------ CLI

def test_the_cli_manages_channels_rules_silences_and_shows_the_log(db_url, redis_server, secret_key, tmp_path, teams,
                                                                   conn, webhook, smtp):
    from tests.support.processes import run_cli, service_env

    env = service_env(db_url, redis_server.url, secret_key, tmp_path)

    def cli(*args, code=0, input=None):
        proc = run_cli(env, "alerts", *args, input=input)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert HOOK_PASSWORD not in proc.stdout + proc.stderr and smtp.password not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stdout + proc.stderr

    # Channels: the URL from standard input or a file, shown masked
    added = cli("channels", "add", "hook", "-", "--tenant", "acme", input=hook_url(webhook) + "\n")
    assert "added channel hook (json) to acme" in added and "****" in added
    url_file = tmp_path / "mail-url"
    url_file.write_text(smtp.url() + "\n")
    cli("channels", "add", "mail", "--url-file", str(url_file), "--tenant", "acme")
    refused = cli("channels", "add", "bad", "nosuchservice://x/y", "--tenant", "acme", code=2)
    assert "Apprise does not understand this nosuchservice:// URL" in refused
    assert "already has a channel named 'hook'" in cli("channels", "add", "hook", "-", "--tenant", "acme", code=2,
                                                       input=hook_url(webhook) + "\n")
    listed = json.loads(cli("channels", "list", "--json"))
    assert [(c["name"], c["kind"]) for c in listed] == [("hook", "json"), ("mail", "mailto")]
    # A test sends a real message and prints the service's answer
    assert "delivered" in cli("channels", "test", "hook") and webhook.wait_count(1)[0]["title"] == "proxwatch: test message"
    assert "Sent Email" in cli("channels", "test", "mail") and smtp.wait_count(1)
    webhook.stop()
    assert "Connection error" in cli("channels", "test", "hook", code=1)
    assert "there is no alert channel named 'ghost'" in cli("channels", "test", "ghost", code=2)
    # Rules
    assert "rule saved: offline, degraded" in cli("rules", "set", "--tenant", "acme", "--no-recovered", "--degraded",
                                                  "--no-cert-expiry", "--no-operation-failed")
    cli("rules", "set", "--server", "pve1", "--no-offline", "--latency-ms", "800", "--repeat", "1h")
    rules = json.loads(cli("rules", "list", "--json"))
    assert [(r["server_name"], r["offline"], r["latency_ms"], r["repeat_interval_s"]) for r in rules] == \
        [(None, True, None, None), ("pve1", False, 800, 3600)]
    assert "between 1m and 7d" in cli("rules", "set", "--tenant", "acme", "--repeat", "10s", code=2)
    # Silences
    assert "silenced server pve1 for 2h" in cli("silence", "pve1", "--for", "2h", "--reason", "kernel update")
    assert "is not a duration" in cli("silence", "pve2", "--for", "soon", code=2)
    assert "one of: a SERVER, --tag T, or --all" in cli("silence", "pve2", "--all", "--for", "1h", code=2)
    [active] = json.loads(cli("silences", "list", "--json"))
    assert active["server_name"] == "pve1" and active["reason"] == "kernel update" and active["active"]
    assert "ended" in cli("silences", "remove", str(active["id"])[:8])
    assert json.loads(cli("silences", "list", "--json")) == []
    assert len(json.loads(cli("silences", "list", "--all", "--json"))) == 1
    # The log: every try, with the answer masked
    log = json.loads(cli("log", "--json"))
    assert [(r["channel_name"], r["outcome"]) for r in log] == [("hook", "test-failed"), ("mail", "test-delivered"),
                                                               ("hook", "test-delivered")]
    cli("channels", "remove", "hook", "--tenant", "acme")
    assert [c["name"] for c in json.loads(cli("channels", "list", "--json"))] == ["mail"]
    assert conn.execute("select count(*) as n from public.alert_channels").fetchone()["n"] == 1
    # Tags, which rules and silences address
    assert "pve2: lab, edge" in cli("tags", "pve2", "lab", "edge")
    assert "is not a tag" in cli("tags", "pve2", "no tags", code=2)
    assert "silenced tag lab for 30m" in cli("silence", "--tag", "lab", "--for", "30m", "--tenant", "acme")


# --------------------------------------------------------------------------------- certificates

def test_a_certificate_expiring_within_14_days_alerts_once_and_its_renewal_resolves_it(
        add_server, opspve, conn, box, pool, settings, alert_settings, webhook):
    import time

    from tests.support.fleet import DAY
    from worker import certificates, operations
    from worker.operations.common import Tuning
    from worker.operations.manager import Operations
    from worker.polling import Poller

    server = add_server("pve1", opspve.url)
    alerts.add_channel(conn, box, tenant_id(conn), "hook", hook_url(webhook))
    poller = Poller(pool, box, settings)
    # Given pve1 serves only its self-signed certificate (700 days): stored, nothing to say
    [stored] = certificates.check(pool, poller, str(server["id"]))
    assert stored["filename"] == "pve-ssl.pem" and stored["expiring_since"] is None
    # When its ACME certificate (the one pveproxy serves) expires in 10 days
    opspve.cert_expiry["pve1"] = time.time() + 10 * DAY
    [stored] = certificates.check(pool, poller, str(server["id"]))
    assert stored["filename"] == "pveproxy-ssl.pem" and stored["expiring_since"] is not None
    # Then one alert names the node, and the next day's check adds nothing
    certificates.check(pool, poller, str(server["id"]))
    assert flush(pool, box, alert_settings, 31) == 1
    [expiring] = webhook.wait_count(1)
    assert expiring["message"].startswith("1 certificate expires within 14 days: pve1/pve1")
    assert "pveproxy-ssl.pem expires" in expiring["message"] and "(9 days left)" in expiring["message"]
    # When a renewal operation succeeds, the problem is resolved: one "renewed" message
    manager = Operations(pool, poller, box, Tuning(stale_s=30, pending_timeout_s=600, heartbeat_s=0.5,
                                                   task_poll_ms=100, progress_min_interval_s=0.3, ssh_timeout_s=10,
                                                   task_deadline_s=120), worker="test-worker", send=lambda _: None)
    op = operations.enqueue(conn, server["id"], "certificate_renewal", {"node": "pve1"}, "user")
    conn.commit()
    assert manager.run(op["operationId"])["status"] == "completed"
    assert flush(pool, box, alert_settings, 62) == 1
    assert webhook.wait_count(2)[1]["message"].startswith("1 certificate was renewed: pve1/pve1")
    conn.commit()
    assert conn.execute("select expiring_since from public.node_certificates where node = 'pve1'"
                        ).fetchone()["expiring_since"] is None


def test_a_failed_operation_alerts(add_server, opspve, conn, box, pool, alert_settings, webhook):
    server = add_server("pve1", opspve.url)
    alerts.add_channel(conn, box, tenant_id(conn), "hook", hook_url(webhook))
    from worker import operations

    op = operations.enqueue(conn, server["id"], "service_restart", {"node": "pve1", "service": "pveproxy"}, "user")
    conn.execute("update public.active_operations set status = 'failed', completed_at = now(),"
                 " error = 'The restart of pveproxy failed: unit failed' where id = %s", (op["operationId"],))
    conn.commit()
    assert flush(pool, box, alert_settings, 31) == 1
    [msg] = webhook.wait_count(1)
    assert msg["message"].startswith("1 operation failed: service_restart pve1/pveproxy on pve1")
    assert "unit failed" in msg["message"]


# ---------------------------------------------------------------------- thresholds and reminders

def slow_polls(recorder, server_id, ms: int, n: int, start):
    """n successful polls of `ms` each, written by the worker's Recorder, 10 s apart from `start`."""
    for k in range(n):
        at = start + timedelta(seconds=10 * k)
        recorder.write([PollResult(server_id=str(server_id), scheduled_at=at, created_at=at, success=True,
                                   response_time_ms=ms, pve_version="9.1.4", nodes_online=1, nodes_total=1)])
    return start + timedelta(seconds=10 * n)


def test_latency_above_the_rule_for_n_polls_alerts_and_its_end_too(channels, recorder, pool, box, alert_settings,
                                                                   webhook, conn):
    conn.execute("select public.alert_rule_set(%s, p_latency_ms => 300, p_latency_polls => 3)", (tenant_id(conn),))
    conn.commit()
    t = utcnow() - timedelta(hours=1)
    # Two slow polls are not yet a problem; the third is
    t = slow_polls(recorder, channels["id"], 800, 2, t)
    assert alerts.check_conditions(pool)["opened"] == 0
    t = slow_polls(recorder, channels["id"], 900, 1, t)
    assert alerts.check_conditions(pool) == {"opened": 1, "closed": 0, "reminded": 0}
    assert alerts.check_conditions(pool)["opened"] == 0          # once per period
    flush(pool, box, alert_settings, 31)
    [slow] = webhook.wait_count(1)
    assert slow["message"].startswith("1 server answers slowly: pve1")
    assert "slower than 300 ms in each of the last 3 polls (latest 900 ms)" in slow["message"]
    # A fast poll ends it
    slow_polls(recorder, channels["id"], 40, 1, t)
    assert alerts.check_conditions(pool)["closed"] == 1
    flush(pool, box, alert_settings, 62)
    assert webhook.wait_count(2)[1]["message"] == "1 server answers fast again: pve1"


def test_a_success_rate_below_the_rule_alerts(channels, pool, box, alert_settings, webhook, conn):
    conn.execute("select public.alert_rule_set(%s, p_server_id => %s, p_success_rate_pct => 99.5)",
                 (tenant_id(conn), channels["id"]))
    conn.execute("update public.proxmox_servers set success_rate = 97.2 where id = %s", (channels["id"],))
    conn.commit()
    assert alerts.check_conditions(pool)["opened"] == 1
    flush(pool, box, alert_settings, 31)
    [msg] = webhook.wait_count(1)
    assert msg["message"].startswith("1 server is below its success rate: pve1")
    assert "97.2 % of polls succeeded in 24 h (the rule asks for 99.5 %)" in msg["message"]


def test_a_lasting_problem_is_repeated_at_the_rules_interval(channels, pve, poller, recorder, pool, box,
                                                             alert_settings, settings, webhook, conn):
    conn.execute("select public.alert_rule_set(%s, p_repeat_interval_s => 600)", (tenant_id(conn),))
    conn.commit()
    down(pve, settings.offline_after + 5)
    Polls(poller, recorder, [channels["id"]]).round(settings.offline_after)
    flush(pool, box, alert_settings, 31)
    webhook.wait_count(1)
    # Not before the interval; then one reminder per interval
    assert alerts.check_conditions(pool, later(300))["reminded"] == 0
    assert alerts.check_conditions(pool, later(700))["reminded"] == 1
    assert alerts.check_conditions(pool, later(700))["reminded"] == 0     # already queued
    flush(pool, box, alert_settings, 731)
    reminder = webhook.wait_count(2)[1]
    assert reminder["message"].startswith("1 server went offline: pve1") and "still:" in reminder["message"]
    assert alerts.check_conditions(pool, later(1000))["reminded"] == 0
    assert alerts.check_conditions(pool, later(1400))["reminded"] == 1


# ------------------------------------------------------------------------- the product's processes

def test_scheduler_and_worker_send_offline_and_recovery_once_each(pve, add_server, conn, box, services_env, tmp_path,
                                                                 webhook):
    from tests.support.processes import Procs
    from tests.support.waiting import wait_for

    # Given a server polled every 2 s by the real scheduler and worker, a 2 s grouping window
    server = add_server("pve1", pve.url, interval=2)
    alerts.add_channel(conn, box, tenant_id(conn), "hook", hook_url(webhook))
    procs = Procs({**services_env, "PROXWATCH_ALERT_GROUP_WINDOW_S": "2"}, tmp_path / "procs.log")
    try:
        procs.worker(threads=4)
        procs.scheduler()
        # When PVE stops answering for 5 polls, then answers again
        pve.fail("GET", "/cluster/status", 500, "hostname lookup 'pve1' failed", times=5)
        # Then one message says it went offline, one that it is back
        assert wait_for(lambda: len(webhook.received) >= 2, 120), procs.output()
        assert [m["message"].splitlines()[0] for m in webhook.received] == [
            "1 server went offline: pve1", "1 server is back online: pve1"]
        conn.commit()
        assert conn.execute("select count(*) as n from public.incidents where server_id = %s and ended_at is not null",
                            (server["id"],)).fetchone()["n"] == 1
        # And the processes' logs never carry the channel's password
        assert HOOK_PASSWORD not in procs.output() and HOOK_PASSWORD not in (tmp_path / "procs.log").read_text()
    finally:
        procs.close()
    assert len(webhook.received) == 2


def test_channel_rule_and_silence_changes_are_audited_without_the_url(teams, conn, uconn, box, webhook):
    from tests.support.seed import call

    acme = teams.teams["acme"]
    channel = alerts.add_channel(conn, box, acme, "hook", hook_url(webhook))
    alice = teams.users["alice"]
    call(uconn, alice, "select public.alert_rule_set(%s, p_degraded => true)", (acme,))
    silence = call(uconn, alice, "select public.alert_silence_add(%s, %s, null, 3600, 'deploy') as id",
                   (acme, teams.servers["pve1"]), many=False)["id"]
    call(uconn, alice, "select public.alert_silence_end(%s)", (silence,))
    call(uconn, alice, "select public.alert_channel_remove(%s)", (channel["id"],))
    rows = conn.execute("select action, actor, user_id, details::text as details from public.audit_log"
                        " where action like 'alert.%%' order by id").fetchall()
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("alert.channel.add", "system"), ("alert.rule.set", "user"), ("alert.silence.add", "user"),
        ("alert.silence.end", "user"), ("alert.channel.remove", "user")]
    assert all(HOOK_PASSWORD not in r["details"] for r in rows) and "****" in rows[0]["details"]
    # A team deleted with its channels takes their audit along, and is not refused
    alerts.add_channel(conn, box, acme, "hook2", hook_url(webhook))
    conn.execute("delete from public.tenants where id = %s", (acme,))
    conn.commit()


def test_alert_history_past_its_retention_is_purged(channels, pve, poller, recorder, pool, box, alert_settings,
                                                    settings, webhook, conn):
    down(pve, settings.offline_after)
    Polls(poller, recorder, [channels["id"]]).round(settings.offline_after)
    flush(pool, box, alert_settings, 31)
    webhook.wait_count(1)
    assert alerts.purge(pool, alert_settings) == {"events": 0, "deliveries": 0, "attempts": 0}
    # When it is older than the retention
    conn.execute("update public.alert_events set decided_at = now() - interval '91 days'")
    conn.execute("update public.alert_deliveries set created_at = now() - interval '91 days'")
    conn.commit()
    assert alerts.purge(pool, alert_settings) == {"events": 1, "deliveries": 2, "attempts": 0}
    assert conn.execute("select count(*) as n from public.alert_attempts").fetchone()["n"] == 0
    assert conn.execute("select count(*) as n from public.incidents").fetchone()["n"] == 1   # not the alerts'
