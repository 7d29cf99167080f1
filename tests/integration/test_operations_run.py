"""The operations themselves, run by the operation manager against real peers: a PVE API over HTTPS
(fakepve + service restarts and ACME tasks, real-format UPIDs), a real sshd on 127.0.0.1, and a real
database. Progress, the end state, the errors in plain words, the audit trail."""

from __future__ import annotations

import getpass
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.integration.test_operations_support import (DAY, PVEVERSION, opspve, sshd,  # noqa: F401  (fixtures)
                                                       sync_guests)
from worker import operations, ssh
from worker.operations.common import Tuning
from worker.operations.manager import Operations
from worker.operations.tasks import parse_upid
from worker.polling import Poller

TUNING = Tuning(stale_s=30, pending_timeout_s=600, heartbeat_s=0.5, task_poll_ms=100, progress_min_interval_s=0.3,
                ssh_timeout_s=10, task_deadline_s=120)


@pytest.fixture
def server(add_server, opspve):  # noqa: F811
    return add_server("pve1", opspve.url)


@pytest.fixture
def ops(pool, box, settings):
    sent: list[str] = []
    manager = Operations(pool, Poller(pool, box, settings), box, TUNING, worker="test-worker", send=sent.append)
    manager.sent = sent
    return manager


def request(conn, server, op_type, params=None, created_by="user") -> str:
    result = operations.enqueue(conn, server["id"], op_type, params or {}, created_by)
    conn.commit()
    assert result["status"] == "started", result
    return result["operationId"]


class Watch:
    """Reads the operation's row every 30 ms while it runs: every (status, progress, message) seen."""

    def __init__(self, conn, operation_id):
        self.conn, self.id, self.seen = conn, operation_id, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _look(self):
        self.conn.commit()
        row = self.conn.execute("select status, progress, message from active_operations where id = %s",
                                (self.id,)).fetchone()
        state = (row["status"], row["progress"], row["message"])
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)

    def _run(self):
        while not self._stop.is_set():
            self._look()
            time.sleep(0.03)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._look()  # the end state
        self.conn.close()


def row_of(conn, operation_id) -> dict:
    conn.commit()
    return conn.execute("select * from active_operations where id = %s", (operation_id,)).fetchone()


def audit_of(conn, operation_id) -> list[tuple[str, str]]:
    conn.commit()
    return [(r["action"], r["actor"]) for r in conn.execute(
        "select action, actor from audit_log where details->>'operation_id' = %s order by id",
        (str(operation_id),)).fetchall()]


# -------------------------------------------------------------------------------- service restart
def test_a_service_restart_runs_as_a_pve_task_and_its_progress_reaches_100(ops, server, conn, opspve,  # noqa: F811
                                                                         db_url):
    opspve.restart_secs = 25  # 2.5 s here
    op_id = request(conn, server, "service_restart", {"service": "pveproxy"})
    with Watch(psycopg.connect(db_url, row_factory=dict_row), op_id) as watch:
        done = ops.run(op_id)
    assert done["status"] == "completed" and done["progress"] == 100
    # The task was PVE's: a real-format UPID of a srvrestart task for pveproxy on the node the
    # server's address answers on (named now, since the request named none)
    upid = parse_upid(done["upid"])
    assert (upid["node"], upid["type"], upid["id"]) == ("pve1", "srvrestart", "pveproxy")
    assert done["node"] == "pve1" and done["target"] == "pve1/pveproxy"
    assert ("POST", "/api2/json/nodes/pve1/services/pveproxy/restart") in [(m, p) for m, p, _ in opspve.requests]
    assert done["message"].startswith("pveproxy on pve1 restarted in ")
    # Progress moved while the task ran (against the 20 s estimate), then reached 100
    running = [p for s, p, m in watch.seen if s == "in_progress"]
    assert any(0 < p < 100 for p in running) and running == sorted(running)
    assert ("in_progress", running[-1], "Restarting pveproxy on pve1") in watch.seen
    assert watch.seen[-1][:2] == ("completed", 100)
    assert audit_of(conn, op_id) == [("operation.request", "user"), ("operation.complete", "user")]
    # The node list was learned on the way
    assert conn.execute("select node, is_local from operation_nodes").fetchall() == [{"node": "pve1", "is_local": True}]


def test_a_failing_restart_task_is_reported_in_plain_words(ops, server, conn, opspve):  # noqa: F811
    # PVE starts the task, which then ends with TASK ERROR (pve-manager PVE/API2/Services.pm)
    opspve.fail("POST", "/nodes/pve1/services/pveproxy/restart", error="unknown_service_command")
    op_id = request(conn, server, "service_restart", {"service": "pveproxy", "node": "pve1"})
    done = ops.run(op_id)
    assert done["status"] == "failed" and done["message"] == "Restart failed"
    assert done["error"].startswith("Restarting pveproxy on pve1 failed: unknown service command")
    assert done["upid"] and done["metadata"]["task_log"][-1].startswith("TASK ERROR: unknown service command")
    assert audit_of(conn, op_id) == [("operation.request", "user"), ("operation.fail", "user")]


def test_a_restart_pve_refuses_fails_with_pves_reason(ops, server, conn, opspve):  # noqa: F811
    opspve.fail("POST", "/nodes/pve1/services/pvestatd/restart", error="permission_denied")
    op_id = request(conn, server, "service_restart", {"service": "pvestatd", "node": "pve1"})
    done = ops.run(op_id)
    assert done["status"] == "failed" and done["error_kind"] == "auth"
    assert "denied permission (403 Permission check failed (/nodes/pve1, Sys.Modify))" in done["error"]
    assert done["upid"] is None


def test_an_operation_runs_once_even_if_its_message_arrives_twice(ops, server, conn):
    op_id = request(conn, server, "service_restart", {"service": "cron", "node": "pve1"})
    results = []
    threads = [threading.Thread(target=lambda: results.append(ops.run(op_id))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r is None for r in results) == [False, True, True]
    assert [r for r in results if r][0]["status"] == "completed"


# ---------------------------------------------------------------------------- certificate renewal
def test_a_certificate_renewal_reports_each_step_of_the_acme_task(ops, server, conn, opspve, db_url):  # noqa: F811
    opspve.cert_expiry["pve1"] = time.time() + 10 * DAY
    op_id = request(conn, server, "certificate_renewal", {"node": "pve1"})
    with Watch(psycopg.connect(db_url, row_factory=dict_row), op_id) as watch:
        done = ops.run(op_id)
    assert done["status"] == "completed", done["error"]
    assert opspve.acme_calls == [("PUT", "pve1")]
    assert parse_upid(done["upid"])["type"] == "acmerenew"
    steps = [(p, m) for s, p, m in watch.seen if s == "in_progress"]
    # Multi-step progress from the task log, in order
    for expected in [(10, "Loading the ACME account"), (20, "Placing the ACME order"),
                     (60, "All domains validated"), (85, "Downloading the certificate"),
                     (95, "Restarting pveproxy")]:
        assert expected in steps, steps
    assert [p for p, _ in steps] == sorted(p for p, _ in steps)
    new_expiry = datetime.fromisoformat(done["metadata"]["notafter"])
    assert new_expiry > datetime.now(timezone.utc) + timedelta(days=80)
    assert done["message"] == f"Certificate of pve1 renewed; valid until {new_expiry:%Y-%m-%d}"


def test_a_failed_acme_validation_is_reported(ops, server, conn, opspve):  # noqa: F811
    opspve.cert_expiry["pve1"] = time.time() + 5 * DAY
    opspve.acme_error = "validating challenge 'https://acme-v02.api.letsencrypt.org/acme/authz-v3/4567890' failed"
    op_id = request(conn, server, "certificate_renewal", {"node": "pve1"})
    done = ops.run(op_id)
    assert done["status"] == "failed" and done["message"] == "Renewal failed"
    assert done["error"] == ("The certificate renewal of pve1 failed: validating challenge "
                             "'https://acme-v02.api.letsencrypt.org/acme/authz-v3/4567890' failed")
    assert done["progress"] == 45  # where it stopped: "Triggering validation"


def test_a_renewal_pve_refuses_says_why(ops, server, conn, opspve):  # noqa: F811
    opspve.cert_expiry["pve1"] = time.time() + 60 * DAY
    op_id = request(conn, server, "certificate_renewal", {"node": "pve1"})
    done = ops.run(op_id)
    assert done["status"] == "failed"
    assert done["error"].endswith("force: Certificate does not expire within the next 30 days, and 'force' is not set.")
    # With force it goes through
    forced = ops.run(request(conn, server, "certificate_renewal", {"node": "pve1", "force": True}))
    assert forced["status"] == "completed"


def test_the_daily_job_renews_what_expires_within_30_days_once(ops, server, conn, opspve):  # noqa: F811
    opspve.add_node("pve2")
    opspve.add_node("pve3")
    opspve.cert_expiry.update(pve1=time.time() + 10 * DAY, pve2=time.time() + 80 * DAY)  # pve3: no ACME certificate
    tick = datetime.now(timezone.utc).replace(microsecond=0)

    found = ops.renew_expiring(str(server["id"]), tick)
    by_node = {f["node"]: f for f in found}
    assert by_node["pve1"]["result"] == "started" and by_node["pve2"]["result"] == "valid"
    assert "pve3" not in by_node
    op_id = by_node["pve1"]["operationId"]
    assert ops.sent == [op_id]  # handed to the broker at once
    row = row_of(conn, op_id)
    assert (row["created_by"], row["node"], row["operation_type"]) == ("cron", "pve1", "certificate_renewal")
    assert row["params"]["reason"].startswith("expires ")
    assert audit_of(conn, op_id) == [("operation.request", "cron")]

    # The same tick again (a retried message, a second scheduler): nothing new
    again = {f["node"]: f for f in ops.renew_expiring(str(server["id"]), tick)}
    assert again["pve1"]["result"].startswith("requested already today")
    assert conn.execute("select count(*) as n from active_operations").fetchone()["n"] == 1

    # It runs as any renewal; the next day's check finds the certificate valid
    assert ops.run(op_id)["status"] == "completed"
    assert ops.renew_expiring(str(server["id"]), tick + timedelta(days=1))
    assert conn.execute("select count(*) as n from active_operations").fetchone()["n"] == 1


def test_the_daily_job_does_not_start_a_renewal_a_person_already_started(ops, server, conn, opspve):  # noqa: F811
    opspve.cert_expiry["pve1"] = time.time() + 3 * DAY
    mine = request(conn, server, "certificate_renewal", {})  # the node the address answers on …
    found = ops.renew_expiring(str(server["id"]))
    # … which the job names pve1: the same renewal, already running
    assert [(f["node"], f["result"], f["operationId"]) for f in found] == [("pve1", "already_running", mine)]
    assert conn.execute("select count(*) as n from active_operations").fetchone()["n"] == 1
    assert ops.sent == []


# ----------------------------------------------------------------------------------- power actions
def test_a_start_follows_its_task_and_the_guests_row_follows(ops, server, conn, opspve, pool, box):  # noqa: F811
    opspve.vm(100).start_secs = 20  # 2 s here
    sync_guests(pool, box, server["id"])
    assert conn.execute("select status from guests where vmid = 100").fetchone()["status"] == "stopped"
    op_id = request(conn, server, "start", {"vmid": 100})
    done = ops.run(op_id)
    assert done["status"] == "completed" and done["progress"] == 100
    assert parse_upid(done["upid"])["type"] == "qmstart" and parse_upid(done["upid"])["id"] == "100"
    assert done["message"] == "VM 100 (web) started (now running)"
    conn.commit()
    assert conn.execute("select status from guests where vmid = 100").fetchone()["status"] == "running"

    # A shutdown of the container, and a reset of the VM
    down = ops.run(request(conn, server, "shutdown", {"vmid": 200}))
    assert down["status"] == "completed" and down["message"] == "Container 200 (dns) shut down (now stopped)"
    conn.commit()
    assert conn.execute("select status from guests where vmid = 200").fetchone()["status"] == "stopped"
    reset = ops.run(request(conn, server, "reset", {"vmid": 100}))
    assert reset["status"] == "completed" and parse_upid(reset["upid"])["type"] == "qmreset"


def test_a_guest_that_fails_to_start_is_reported(ops, server, conn, opspve, pool, box):  # noqa: F811
    opspve.vm(100).start_error = "QEMU exited with code 1"
    sync_guests(pool, box, server["id"])
    done = ops.run(request(conn, server, "start", {"vmid": 100}))
    assert done["status"] == "failed" and done["message"] == "Start failed"
    assert done["error"] == "Starting VM 100 (web) failed: QEMU exited with code 1"
    # A stop of a stopped VM is not an error for PVE; a reset of it is (PVE answers 500 at once)
    reset = ops.run(request(conn, server, "reset", {"vmid": 100}))
    assert reset["status"] == "failed" and "VM 100 not running" in reset["error"]


# ------------------------------------------------------------------------------------------ SSH
def ssh_setup(conn, box, server, sshd, key="client_key", host_key=None, password=None):  # noqa: F811
    private, _ = sshd.key(key)
    ssh.set_credentials(conn, box, server["id"], host=sshd.host, port=sshd.port,
                        username=getpass.getuser(), host_key=host_key or sshd.host_key,
                        private_key=None if password else private, password=password)
    conn.commit()


def test_an_ssh_test_logs_in_with_the_pinned_key_and_records_latency_and_version(ops, server, conn, box,
                                                                                 sshd):  # noqa: F811
    ssh_setup(conn, box, server, sshd)
    done = ops.run(request(conn, server, "ssh_test"))
    assert done["status"] == "completed", done["error"]
    meta = done["metadata"]
    assert meta["version"] == "9.1.4" and meta["pveversion"] == PVEVERSION
    assert 0 < meta["latency_ms"] < 10000 and meta["port"] == sshd.port
    assert meta["host_key_fingerprint"].startswith("SHA256:")
    assert done["message"] == f"SSH OK: pve-manager 9.1.4, login in {meta['latency_ms']} ms"
    # The secret is stored encrypted, never in clear
    stored = conn.execute("select secret_ciphertext from server_ssh_credentials").fetchone()["secret_ciphertext"]
    assert "PRIVATE KEY" not in stored


def test_an_ssh_test_refuses_a_host_key_that_is_not_the_pinned_one(ops, server, conn, box, sshd):  # noqa: F811
    ssh_setup(conn, box, server, sshd, host_key=sshd.key("other_host_key")[1])
    done = ops.run(request(conn, server, "ssh_test"))
    assert done["status"] == "failed" and done["error_kind"] == "hostkey"
    assert "presented a host key that does not match the pinned one" in done["error"]


@pytest.mark.parametrize("how", ["stranger_key", "password"])
def test_an_ssh_test_with_bad_credentials_fails(ops, server, conn, box, sshd, how):  # noqa: F811
    if how == "password":
        ssh_setup(conn, box, server, sshd, password="not-the-password")
    else:
        ssh_setup(conn, box, server, sshd, key="stranger_key")
    done = ops.run(request(conn, server, "ssh_test"))
    assert done["status"] == "failed" and done["error_kind"] == "auth"
    assert "refused the login" in done["error"]


def test_ssh_credentials_are_checked_before_anything_is_written(conn, box, server):
    for kwargs, sentence in [
        (dict(host_key="not a key"), "not a valid OpenSSH public key"),
        (dict(password="x", private_key="y"), "either a password or a private key"),
        (dict(private_key="-----BEGIN NONSENSE-----"), "not an SSH private key"),
        (dict(port=70000), "between 1 and 65535"),
    ]:
        args = dict(host="127.0.0.1", username="root", host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH"
                    "a3Mn0Kq0yrnQIMFl9mUuJsFzAWvI7TVD8S9e/3pnWX", password="pw")
        args.update(kwargs)
        if "private_key" in kwargs and "password" not in kwargs:
            args.pop("password")
        with pytest.raises(ValueError, match=sentence):
            ssh.set_credentials(conn, box, server["id"], **args)
    assert conn.execute("select count(*) as n from server_ssh_credentials").fetchone()["n"] == 0


# ----------------------------------------------------------------------------- dispatch and sweep
def test_pending_operations_are_dispatched_once_and_expired_ones_fail_unstarted(ops, server, conn):
    op_id = request(conn, server, "certificate_renewal", {"node": "pve1"})
    sent = []
    assert ops.dispatch(sent.append) == [op_id] and sent == [op_id]
    assert ops.dispatch(sent.append) == []  # already handed over
    # Nobody took it for longer than the pending timeout: it is failed, not started late
    conn.execute("update active_operations set started_at = now() - interval '11 minutes' where id = %s", (op_id,))
    conn.commit()
    assert ops.run(op_id) is None
    swept = ops.sweep()
    assert [str(r["id"]) for r in swept] == [op_id]
    row = row_of(conn, op_id)
    assert row["status"] == "failed" and "no worker took this operation within 600 s" in row["error"]
    assert audit_of(conn, op_id)[-1] == ("operation.fail", "system")
