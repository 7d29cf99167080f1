"""The operation buttons and the Operations page in Streamlit's AppTest, against a real stand-in and a
real, seeded database: the seed's button states, requests through request_operation() with the
user's JWT, two sessions seeing the same state, a viewer who cannot press."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from tests.support.seed import ALICE, BOB, seed_fleet
from tests.support.streamlit import APP, DASHBOARD, app_test, html_tables, sign_in_env
from worker import admin, operations

PAGE = str(DASHBOARD / "views" / "3_Operations.py")
VIEWER = ("vera@acme.test", "vera-password-1")


@pytest.fixture
def fleet(db_url, secret_key, conn):
    f = seed_fleet(db_url, secret_key)
    admin.add_user(conn, VIEWER[0], VIEWER[1], "acme", "viewer")
    return f


def run_as(monkeypatch, standin, who, script=APP) -> AppTest:
    return app_test(monkeypatch, script, sign_in_env(standin, who))


def buttons(app) -> dict:
    return {b.label: b for b in app.button}


def test_the_server_shows_the_operation_buttons_and_a_press_starts_a_restart(monkeypatch, standin, fleet, conn):
    app = run_as(monkeypatch, standin, ALICE)
    shown = buttons(app)
    assert {"Test SSH", "Restart Service", "Renew Certificate"} <= set(shown)
    assert shown["Test SSH"].disabled  # no SSH access set for pve-alpha
    assert not shown["Restart Service"].disabled and not shown["Renew Certificate"].disabled

    # When the admin picks pveproxy and presses Restart Service
    app.selectbox(key=f"ops-service-{fleet.servers['pve-alpha']}").select("pveproxy").run()
    buttons(app)["Restart Service"].click().run()
    assert not app.exception, app.exception

    # Then one restart is requested through the API, as the admin
    conn.commit()
    row = conn.execute("select o.operation_type, o.params, o.status, o.created_by, u.email from active_operations o "
                       "join auth.users u on u.id = o.requested_by").fetchone()
    assert row == {"operation_type": "service_restart", "params": {"service": "pveproxy"}, "status": "pending",
                   "created_by": "user", "email": ALICE[0]}
    # and the button is the seed's active state: disabled, the time remaining, a progress bar
    active = [b for b in app.button if b.label.startswith("Restarting…")]
    assert len(active) == 1 and active[0].disabled
    assert active[0].label in ("Restarting… (0:20 remaining)", "Restarting… (0:19 remaining)")
    assert any(p.value == 0 for p in app.get("progress"))

    # A second session (another tab, or another person) shows the same state
    other = run_as(monkeypatch, standin, ALICE)
    assert any(b.label.startswith("Restarting… (0:") and b.disabled for b in other.button)


def test_running_renewal_success_and_failure_states(monkeypatch, standin, fleet, conn):
    sid = fleet.servers["pve-alpha"]
    renewal = operations.enqueue(conn, sid, "certificate_renewal", {})["operationId"]
    conn.execute("update active_operations set status = 'in_progress', progress = 60, "
                 "message = 'All domains validated' where id = %s", (renewal,))
    done = operations.enqueue(conn, sid, "service_restart", {"service": "pveproxy"})["operationId"]
    conn.execute("update active_operations set status = 'completed', progress = 100, completed_at = now(), "
                 "message = 'pveproxy on pve1 restarted in 4 s' where id = %s", (done,))
    conn.commit()
    app = run_as(monkeypatch, standin, ALICE)
    shown = buttons(app)
    assert shown["Processing Renewal (60%)"].disabled
    assert any(p.value == 60 and p.text == "All domains validated" for p in app.get("progress"))
    # The restart just finished: shown briefly, and the button is back
    assert any("pveproxy on pve1 restarted in 4 s" in s.value for s in app.success)
    assert not shown["Restart Service"].disabled

    # A failed renewal shows its error and a retry
    conn.execute("update active_operations set status = 'failed', completed_at = now(), message = 'Renewal failed', "
                 "error = 'The certificate renewal of pve1 failed: order status: invalid' where id = %s", (renewal,))
    conn.commit()
    app = run_as(monkeypatch, standin, ALICE)
    assert any("Renewal failed: The certificate renewal of pve1 failed: order status: invalid"
               in re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", e.value)   # messages come escaped (dashboard/text.py)
               for e in app.error)
    retry = buttons(app)["Retry Renew Certificate"]
    assert not retry.disabled
    retry.click().run()
    conn.commit()
    assert conn.execute("select count(*) as n from active_operations where operation_type = 'certificate_renewal' "
                        "and status = 'pending'").fetchone()["n"] == 1


def test_a_viewer_sees_the_state_but_cannot_press(monkeypatch, standin, fleet, conn):
    operations.enqueue(conn, fleet.servers["pve-alpha"], "certificate_renewal", {}, "cron")
    conn.commit()
    app = run_as(monkeypatch, standin, VIEWER)
    shown = buttons(app)
    assert shown["Restart Service"].disabled and shown["Test SSH"].disabled
    assert shown["Processing Renewal (0%)"].disabled
    # Another tenant's user does not see acme's server at all
    bob = run_as(monkeypatch, standin, BOB)
    assert not any(b.label.startswith("Processing Renewal") for b in bob.button)


def test_the_operations_page_lists_running_and_past_operations_filterable(monkeypatch, standin, fleet, conn):
    sid = fleet.servers["pve-alpha"]
    first = operations.enqueue(conn, sid, "service_restart", {"service": "pvedaemon"})["operationId"]
    conn.execute("update active_operations set status = 'failed', completed_at = now(), message = 'Restart failed', "
                 "error = 'Restarting pvedaemon on pve1 failed: unknown service command' where id = %s", (first,))
    conn.commit()  # the next one is requested later
    operations.enqueue(conn, sid, "certificate_renewal", {}, "cron")
    conn.commit()
    page = run_as(monkeypatch, standin, ALICE, PAGE)
    assert page.title[0].value == "Operations"
    assert any(h.value == "Running now (1)" for h in page.subheader)
    history = html_tables(page)[0]
    assert history["Operation"].tolist() == ["Renew Certificate", "Restart Service"]
    assert history["Status"].tolist() == ["○ waiting", "✕ failed"]
    assert history["Requested by"].tolist() == ["daily job", "person"]
    assert "unknown service command" in history["Result"].tolist()[1]
    # Filter: failed only
    page.selectbox(key="ops-filter-status").select("Failed").run()
    assert html_tables(page)[0]["Operation"].tolist() == ["Restart Service"]
    # The buttons are here too, per server
    assert {"Test SSH", "Restart Service"} <= {b.label for b in page.button}


def test_guest_power_buttons_on_the_operations_page(monkeypatch, standin, fleet, conn):
    sid = fleet.servers["pve-alpha"]
    # Guests as the guest sync writes them
    conn.execute("insert into guests (server_id, tenant_id, vmid, guest_type, node, name, status) "
                 "select id, tenant_id, 100, 'qemu', 'pve1', 'web', 'stopped' from proxmox_servers where id = %s "
                 "union all select id, tenant_id, 200, 'lxc', 'pve1', 'dns', 'running' from proxmox_servers "
                 "where id = %s", (sid, sid))
    conn.commit()
    page = run_as(monkeypatch, standin, ALICE, PAGE)
    # A stopped VM offers Start; pressing it requests a start of that guest
    assert "Start" in buttons(page) and "Shutdown" not in buttons(page)
    buttons(page)["Start"].click().run()
    assert not page.exception, page.exception
    conn.commit()
    row = conn.execute("select operation_type, target, params from active_operations").fetchone()
    assert row["operation_type"] == "start" and row["target"] == "qemu/100" and row["params"]["guest_name"] == "web"
    starting = buttons(page)["Starting…"]
    assert starting.disabled
    # A running container offers Shutdown and Stop, but no Reset (containers cannot be reset)
    page.selectbox(key=f"ops-page-guest-{sid}").select(200).run()
    labels = set(buttons(page))
    assert {"Shutdown", "Stop"} <= labels and "Reset" not in labels and "Start" not in labels
