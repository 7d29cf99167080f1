"""`proxwatch ops` as a person runs it: real subprocesses, a real worker, database, Redis, a PVE over
HTTPS and a real sshd. Bad input gets one sentence, exit 2, and writes nothing."""

from __future__ import annotations

import getpass
import json

import pytest

from tests.support.processes import run_cli
from tests.support.seed import TOKEN, count, sync_guests


@pytest.fixture
def cli(ops_env):
    def run(*args, ok=True, env=None):
        proc = run_cli(env or ops_env, *args, timeout=180)
        if ok:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc
    return run


@pytest.fixture
def fleet(cli, opspve, fingerprint, conn, pool, box):
    cli("tenants", "add", "acme")
    cli("servers", "add", "pve1", opspve.url, "--token", TOKEN, "--fingerprint", fingerprint)
    server_id = conn.execute("select id from proxmox_servers where name = 'pve1'").fetchone()["id"]
    sync_guests(pool, box, server_id)
    return server_id


def test_request_follow_list_and_show_operations(cli, fleet, procs, conn, opspve, sshd, tmp_path):
    procs.worker()
    # SSH access, with the node's host key from its .pub file and a private key file
    (tmp_path / "host.pub").write_text(sshd.key("host_key")[1] + " root@pve1\n")
    (tmp_path / "id").write_text(sshd.key("client_key")[0])
    out = cli("ops", "ssh-set", "pve1", "--host", sshd.host, "--port", str(sshd.port), "--user", getpass.getuser(),
              "--host-key-file", str(tmp_path / "host.pub"), "--key-file", str(tmp_path / "id")).stdout
    assert "key login, host key pinned (SHA256:" in out

    # ssh_test: followed to its end
    done = cli("ops", "request", "pve1", "ssh_test")
    assert "ssh_test on pve1 started: operation" in done.stdout
    assert "✓ SSH OK: pve-manager 9.1.4, login in" in done.stdout, done.stdout + done.stderr

    # A restart, followed with its progress bar to 100 %
    opspve.restart_secs = 20
    restart = cli("ops", "request", "pve1", "service_restart", "--param", "service=pveproxy", "--node", "pve1")
    assert "✓ pveproxy on pve1 restarted in" in restart.stdout
    assert "100%" in restart.stdout

    # --no-wait returns at once; the same request again is told it runs already, with its id
    opspve.vm(100).start_secs = 150
    first = cli("ops", "request", "pve1", "start", "--param", "vmid=100", "--no-wait").stdout
    op_id = first.strip().rsplit(" ", 1)[-1]
    second = cli("ops", "request", "pve1", "start", "--param", "vmid=100", "--no-wait").stdout
    assert f"already running: start on pve1, operation {op_id}" in second
    # Following it from another terminal ends when it ends
    followed = cli("ops", "request", "pve1", "start", "--param", "vmid=100")
    assert "✓ VM 100 (web) started (now running)" in followed.stdout

    # A failing operation exits 1 with PVE's reason
    opspve.fail("POST", "/nodes/pve1/services/pvedaemon/restart", error="unknown_service_command")
    failed = cli("ops", "request", "pve1", "service_restart", "--param", "service=pvedaemon", ok=False)
    assert failed.returncode == 1
    assert "✗ Restart failed: Restarting pvedaemon on pve1 failed: unknown service command" in failed.stderr

    listing = cli("ops", "list").stdout
    for word in ("ssh_test", "service_restart", "start", "completed", "failed", op_id):
        assert word in listing, listing
    rows = json.loads(cli("ops", "list", "pve1", "--status", "failed", "--json").stdout)
    assert [r["operation_type"] for r in rows] == ["service_restart"]
    shown = cli("ops", "show", op_id).stdout
    assert "status: completed" in shown and "upid: UPID:pve1:" in shown and '"guest_status": "running"' in shown


@pytest.mark.parametrize("args, sentence", [
    (("pve1", "service_restart", "--param", "service=apache2"), "'apache2' is not a service PVE can restart"),
    (("pve1", "start", "--param", "vmid=999"), "server pve1 has no guest 999"),
    (("pve1", "reboot"), "unknown operation type 'reboot'"),
    (("pve1", "service_restart", "--param", "service"), "'service' is not KEY=VALUE"),
    (("pve9", "ssh_test"), "there is no server named 'pve9'"),
    (("pve1", "ssh_test"), "no SSH credentials for server pve1"),
])
def test_bad_requests_get_a_sentence_and_write_nothing(cli, fleet, conn, args, sentence):
    proc = cli("ops", "request", *args, ok=False)
    assert proc.returncode == 2 and sentence in proc.stderr, proc.stderr
    assert count(conn, "active_operations") == 0 and count(conn, "audit_log") == 0


def test_bad_ssh_settings_are_refused(cli, fleet, conn, tmp_path):
    (tmp_path / "k.pub").write_text("not a key\n")
    proc = cli("ops", "ssh-set", "pve1", "--host", "10.0.0.5", "--host-key-file", str(tmp_path / "k.pub"),
               "--password", "pw", ok=False)
    assert proc.returncode == 2 and "not a valid OpenSSH public key" in proc.stderr
    proc = cli("ops", "ssh-set", "pve1", "--host", "10.0.0.5", "--password", "pw", ok=False)
    assert proc.returncode == 2 and "exactly one of --host-key, --host-key-file or --scan" in proc.stderr
    assert count(conn, "server_ssh_credentials") == 0


def test_without_a_broker_the_operation_fails_at_once_instead_of_starting_later(cli, fleet, ops_env, conn):
    from tests.support.waiting import free_port

    env = dict(ops_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    proc = cli("ops", "request", "pve1", "certificate_renewal", "--node", "pve1", ok=False, env=env)
    assert proc.returncode == 1 and "could not be handed to a worker" in proc.stderr
    conn.commit()
    row = conn.execute("select status, error from active_operations").fetchone()
    assert row["status"] == "failed" and row["error"].startswith("no worker could be reached")
