"""The pure parts of operations: reading PVE's answers (UPIDs, ACME task logs, pveversion, errors),
progress against an estimate, and what a button shows in each of the seed's states."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from proxmoxer.core import ResourceException

from dashboard import ops_ui, timefmt
from worker import cli_ops, ssh
from worker.operations import certificate_renewal, ssh_test, tasks
from worker.pve import PveError

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)

# What `pvenode acme cert renew` prints (pve-manager PVE/API2/ACME.pm), blank lines included.
ACME_TASK_LOG = """Loading ACME account details
Placing ACME order
Order URL: https://acme-v02.api.letsencrypt.org/acme/order/1234567/89012345

Getting authorization details from 'https://acme-v02.api.letsencrypt.org/acme/authz-v3/4567890'
... pending!
Setting up webserver
Triggering validation
Sleeping for 5 seconds
Status is 'valid'!

All domains validated!

Creating CSR
Finalizing order
Checking order status
valid!

Downloading certificate
Setting pveproxy certificate and key
Restarting pveproxy
Revoking old certificate
TASK OK""".splitlines()


def test_an_acme_task_log_gives_steps_that_only_move_forward():
    steps = [s for s in map(certificate_renewal.certificate_step, ACME_TASK_LOG) if s]
    progress = [p for p, _ in steps]
    assert progress == sorted(progress) and progress[0] == 10 and progress[-1] == 97
    assert (60, "All domains validated") in steps and (80, "Certificate issued") in steps
    assert certificate_renewal.certificate_step("Order URL: https://acme-v02.api.letsencrypt.org/acme/order/1") is None
    # "valid!" alone is the order; "Status is 'valid'!" is a domain
    assert certificate_renewal.certificate_step("Status is 'valid'!") == (55, "Domain validated")
    assert certificate_renewal.certificate_step("valid!") == (80, "Certificate issued")
    assert certificate_renewal.certificate_step("pve1.example.org is already validated!") == (55, "Domain already validated")


def test_timed_progress_follows_the_estimate_but_never_claims_to_be_done():
    assert tasks.timed_progress(0, 20000) == 0
    assert tasks.timed_progress(10, 20000) == 50
    assert tasks.timed_progress(60, 20000) == 95
    assert tasks.timed_progress(10, None) == 0


@pytest.mark.parametrize("upid, fields", [
    ("UPID:pve1:000A1B2C:0123ABCD:6743F2A1:srvrestart:pveproxy:root@pam:",
     {"node": "pve1", "type": "srvrestart", "id": "pveproxy", "user": "root@pam"}),
    ("UPID:node-2:00001234:123456789:6743F2A1:acmerenew::root@pam!monitor:",
     {"node": "node-2", "type": "acmerenew", "id": "", "user": "root@pam!monitor"}),
])
def test_upids_are_read_field_by_field(upid, fields):
    parsed = tasks.parse_upid(upid)
    assert {k: parsed[k] for k in fields} == fields
    assert parsed["starttime"] == 0x6743F2A1


def test_something_that_is_not_a_upid_is_refused():
    for text in ("UPID:pve1:xyz", "PVE:root@pam:1234::sig", "UPID:pve1:000A1B2C:0123ABCD:6743F2A1:qmstart:100:root@pam"):
        with pytest.raises(ValueError, match="is not a PVE task id"):
            tasks.parse_upid(text)


def test_pveversion_output_gives_the_version():
    assert ssh_test.parse_pveversion("pve-manager/9.1.4/5f8ca1e0a3c2e4b1 (running kernel: 6.14.8-2-pve)\n") == "9.1.4"
    assert ssh_test.parse_pveversion("pve-manager/8.4.1/2a5fa54a8503f96d (running kernel: 6.8.12-9-pve)") == "8.4.1"
    with pytest.raises(ValueError, match="unexpected pveversion output"):
        ssh_test.parse_pveversion("bash: pveversion: command not found")


def test_pves_per_parameter_reasons_are_kept_in_the_sentence():
    cause = ResourceException(400, "Parameter verification failed.", "Parameter verification failed.",
                              errors={"force": "Certificate does not expire within the next 30 days, and 'force' is not set."})
    error = PveError("http", "pve1:8006 answered 400 Parameter verification failed.")
    error.__cause__ = cause
    assert tasks.pve_message(error) == ("pve1:8006 answered 400 Parameter verification failed: force: Certificate "
                                             "does not expire within the next 30 days, and 'force' is not set.")
    assert tasks.pve_message(PveError("timeout", "pve1:8006 did not answer within 10000 ms")) == \
        "pve1:8006 did not answer within 10000 ms"


def test_cli_parameters_are_typed():
    assert cli_ops.parse_param("service=pveproxy") == ("service", "pveproxy")
    assert cli_ops.parse_param("vmid=100") == ("vmid", 100)
    assert cli_ops.parse_param("force=true") == ("force", True)
    assert cli_ops.parse_param("order=no") == ("order", False)
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        cli_ops.parse_param("pveproxy")


def test_host_keys_are_taken_from_a_pub_file_or_a_known_hosts_line():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHa3Mn0Kq0yrnQIMFl9mUuJsFzAWvI7TVD8S9e/3pnWX"
    assert ssh.check_host_key(key + " root@pve1\n") == key
    assert ssh.check_host_key("[10.0.0.5]:22 " + key) == key
    with pytest.raises(ValueError, match="not a valid OpenSSH public key"):
        ssh.check_host_key("ssh-ed25519 bm90IGEga2V5")


# ---------------------------------------------------------------------------------- the buttons
def state(op_type="service_restart", status="in_progress", progress=0, started_ago=0.0, completed_ago=None,
          estimate_ms=300000, **extra):
    row = {"operation_type": op_type, "status": status, "progress": progress, "message": "Restarting pveproxy on pve1",
           "started_at": (NOW - timedelta(seconds=started_ago)).isoformat(), "estimated_duration_ms": estimate_ms,
           "completed_at": (NOW - timedelta(seconds=completed_ago)).isoformat() if completed_ago is not None else None,
           "now": NOW.isoformat()}
    row.update(extra)
    return row


def test_a_button_shows_the_seeds_normal_labels():
    for op_type, label in [("ssh_test", "Test SSH"), ("service_restart", "Restart Service"),
                           ("certificate_renewal", "Renew Certificate"), ("start", "Start"), ("shutdown", "Shutdown")]:
        shown = ops_ui.button_state(op_type, None, NOW)
        assert (shown.kind, shown.label, shown.disabled) == ("idle", label, False)


def test_a_running_operation_disables_its_button_with_the_seeds_active_labels():
    restart = ops_ui.button_state("service_restart", state(started_ago=28), NOW)
    assert (restart.kind, restart.label, restart.disabled) == ("active", "Restarting… (4:32 remaining)", True)
    assert restart.caption == "Restarting pveproxy on pve1"
    late = ops_ui.button_state("service_restart", state(started_ago=400), NOW)
    assert late.label == "Restarting… (finishing)"
    renewal = ops_ui.button_state("certificate_renewal", state("certificate_renewal", progress=60), NOW)
    assert renewal.label == "Processing Renewal (60%)" and renewal.progress == 60
    assert ops_ui.button_state("ssh_test", state("ssh_test", status="pending"), NOW).label == "Testing…"
    # A power action of the guest shows the one running, whichever button it is drawn on
    assert ops_ui.button_state("stop", state("start"), NOW).label == "Starting…"


def test_success_is_shown_briefly_then_the_button_is_back():
    fresh = ops_ui.button_state("service_restart", state(status="completed", completed_ago=3, progress=100,
                                                         message="pveproxy on pve1 restarted in 4 s"), NOW)
    assert (fresh.kind, fresh.label, fresh.caption) == ("success", "Restart Service", "pveproxy on pve1 restarted in 4 s")
    old = ops_ui.button_state("service_restart", state(status="completed", completed_ago=60, progress=100), NOW)
    assert old.kind == "idle"


def test_a_failure_shows_the_error_and_offers_a_retry():
    shown = ops_ui.button_state("certificate_renewal", state("certificate_renewal", status="failed", completed_ago=30,
                                                             message="Renewal failed", error="order status: invalid"), NOW)
    assert (shown.kind, shown.label, shown.disabled) == ("failed", "Retry Renew Certificate", False)
    assert shown.error == "order status: invalid"
    stale = ops_ui.button_state("certificate_renewal", state("certificate_renewal", status="failed",
                                                             completed_ago=2 * 3600, error="x"), NOW)
    assert stale.kind == "idle"


def test_a_viewer_sees_states_on_disabled_buttons():
    assert ops_ui.button_state("service_restart", None, NOW, can_operate=False).disabled
    assert ops_ui.button_state("service_restart", state(), NOW, can_operate=False).disabled


def test_the_panel_ticks_while_something_runs_or_a_success_is_on_show():
    assert ops_ui.needs_ticking([state()], NOW)
    assert ops_ui.needs_ticking([state(status="completed", completed_ago=2)], NOW)
    assert not ops_ui.needs_ticking([state(status="completed", completed_ago=30), state(status="failed", completed_ago=1)],
                                    NOW)


def test_a_buttons_state_is_its_targets_latest_operation():
    rows = [state(node="pve1", params={"service": "pveproxy"}, status="completed", started_ago=50, completed_ago=40),
            state(node="pve2", params={"service": "pveproxy"}),
            state(node="pve1", params={"service": "pvedaemon"})]
    assert ops_ui.pick_state(rows, "service_restart", "pve1", service="pveproxy")["status"] == "completed"
    assert ops_ui.pick_state(rows, "service_restart", "pve2", service="pveproxy")["status"] == "in_progress"
    assert ops_ui.pick_state(rows, "certificate_renewal", "pve1") is None
    # requested before the node's name was known: counts for the node shown
    assert ops_ui.pick_state([state("ssh_test", node=None)], "ssh_test", "pve1")["operation_type"] == "ssh_test"
    assert timefmt.clock(272) == "4:32" and cli_ops.clock(59.6) == "1:00"
