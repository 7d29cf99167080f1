"""Pure pieces of consoles and sessions: PVE paths per console kind, the terminal framing, durations,
the guest row a person sees, host-key parsing, and the pages' escaping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from worker import consoles, inventory, sessions, ssh
from worker.consoles import ConsoleTarget, Ticket
from worker.gateway import pages


def target(**kw) -> ConsoleTarget:
    base = dict(server_id="s", tenant_id="t", server_name="pve1", protocol="vnc", node="pve1", guest_type="qemu",
                vmid=100)
    return ConsoleTarget(**{**base, **kw})


def test_each_console_kind_asks_pve_at_its_own_path():
    assert consoles.ticket_call(target()) == ("nodes/pve1/qemu/100/vncproxy", {"websocket": 1})
    assert consoles.ticket_call(target(protocol="term")) == ("nodes/pve1/qemu/100/termproxy", {})
    assert consoles.ticket_call(target(protocol="term", guest_type="lxc", vmid=200)) == \
        ("nodes/pve1/lxc/200/termproxy", {})
    assert consoles.ticket_call(target(protocol="term", guest_type=None, vmid=None)) == ("nodes/pve1/termproxy", {})
    with pytest.raises(ValueError, match="needs a qemu guest"):
        consoles.ticket_call(target(guest_type="lxc"))
    with pytest.raises(ValueError, match="ssh consoles do not use a PVE ticket"):
        consoles.ticket_call(target(protocol="ssh"))


def test_the_websocket_path_carries_port_and_ticket_url_encoded():
    path = consoles.websocket_path(target(), Ticket(user="root@pam", ticket="PVEVNC:ab+c/d=", port="5901"))
    assert path == "nodes/pve1/qemu/100/vncwebsocket?port=5901&vncticket=PVEVNC%3Aab%2Bc%2Fd%3D"


def test_the_terminal_framing_round_trips_and_refuses_garbage():
    assert consoles.term_input("héllo") == "0:6:héllo"
    assert consoles.parse_term_frame(consoles.term_input("héllo")) == ("input", "héllo")
    assert consoles.parse_term_frame("0:3:a:b") == ("input", "a:b")
    assert consoles.parse_term_frame(consoles.term_resize(120, 40)) == ("resize", 120, 40)
    assert consoles.parse_term_frame("2") == ("ping",)
    for bad in ("0:5:abc", "0:x:abc", "1:0:10:", "1:10:10", "9", ""):
        with pytest.raises(ValueError):
            consoles.parse_term_frame(bad)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("45", 45),
                                          ("1.5 min", 90), ("10 seconds", 10)])
def test_durations_read_as_a_person_writes_them(text, seconds):
    assert sessions.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "0.2s", "-5m"])
def test_bad_durations_get_a_sentence(text):
    with pytest.raises(ValueError, match="duration|shorter than one second"):
        sessions.parse_duration(text)


def test_a_guest_row_rounds_usage_to_steps_and_reads_tags():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    row = inventory.guest_row({"type": "lxc", "vmid": "200", "node": "n1", "name": "dns", "status": "running",
                               "cpu": 0.124, "mem": 300 << 20, "maxmem": 1 << 30, "uptime": 120,
                               "tags": "web,prod;db", "template": 0}, now)
    assert row["vmid"] == 200 and row["cpu_pct"] == 10 and row["mem_pct"] == 30
    assert row["tags"] == "db;prod;web" and row["started_at"] == now - timedelta(minutes=2)
    assert inventory.guest_row({"type": "node", "node": "n1"}, now) is None
    stopped = inventory.guest_row({"type": "qemu", "vmid": 1, "status": "stopped", "cpu": 0, "uptime": 0}, now)
    assert stopped["cpu_pct"] is None and stopped["started_at"] is None


def test_host_keys_must_be_openssh_public_key_lines():
    with pytest.raises(ssh.SshError, match="not an OpenSSH public key line"):
        ssh.parse_host_key("not a key")
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    assert ssh.fingerprint(line).startswith("SHA256:")


def test_pages_escape_what_they_show():
    html = pages.vnc_page('<script>alert("x")</script>')
    assert "<script>alert" not in html.split('<script type="module">')[0]
    assert "&lt;b&gt;nope&lt;/b&gt;" in pages.error_page("<b>nope</b>")
    assert '"type": "error"' in pages.error_message("x")
