"""One malformed guest entry in PVE's /cluster/resources answer is skipped and counted; the rest are
stored and the sync's skips are recorded (guest_syncs). Real HTTPS throughout: fakepve where it can
produce the fault (a NUL in a name, cpu 1e6, vmid 0, uptime 1e12, a word where a number belongs),
and a tiny PVE-shaped HTTPS server of our own for what fakepve cannot send (missing fields, entries
of the wrong JSON type)."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fakepve.certs import make_cert

from worker import inventory
from worker.crypto import Box
from worker.polling import Poller


@pytest.fixture
def poller(pool, secret_key, settings):
    return Poller(pool, Box(secret_key), settings)


def stored(conn) -> dict[int, dict]:
    conn.commit()
    return {r["vmid"]: r for r in conn.execute("select * from public.guests")}


def last_sync(conn) -> dict:
    conn.commit()
    return conn.execute("select * from public.guest_syncs").fetchone()


def test_malformed_entries_from_fakepve_are_skipped_counted_and_the_rest_stored(conn, add_server, pve, poller):
    # Given a cluster with two good guests and five PVE answers no parser should trust
    pve.add_vm(100, "web", status="running")
    pve.add_ct(200, "dns", status="running")
    pve.add_vm(101, "nul\x00name", status="running")
    pve.add_vm(102, "hot", status="running").stats["cpu"] = 1e6
    pve.add_vm(103, "old", status="running").stats["uptime"] = 10 ** 12
    pve.add_vm(104, "wordy", status="running").stats["maxmem"] = "lots"
    pve.add_vm(105, "zero", status="stopped").vmid = 0
    sid = str(add_server("pve1", pve.url)["id"])
    # When the guests are synced
    result = inventory.sync_guests(poller, sid)
    # Then the good ones are stored, the others skipped and counted, and the sync is not an error
    assert result.error_kind is None
    assert sorted(stored(conn)) == [100, 200]
    assert (result.guests, result.skipped) == (2, 5)
    sync = last_sync(conn)
    assert sync["error_message"] is None and sync["guest_count"] == 2 and sync["skipped"] == 5
    detail = sync["skipped_detail"]
    for words in ("5 guest entries", "qemu/101: name", "control characters", "cpu 1000000.0 is outside",
                  "uptime", "maxmem 'lots' is not a number", "vmid 0 is outside"):
        assert words in detail, (words, detail)


def test_a_guest_whose_entry_turns_malformed_keeps_its_stored_row(conn, add_server, pve, poller):
    pve.add_vm(100, "web", status="running")
    pve.add_vm(101, "db", status="running")
    sid = str(add_server("pve1", pve.url)["id"])
    inventory.sync_guests(poller, sid)
    before = stored(conn)[101]
    pve.vm(101).stats["cpu"] = "NaN"
    result = inventory.sync_guests(poller, sid)
    # Skipped, not vanished: the last good row stays until PVE answers sensibly again.
    assert (result.skipped, result.removed) == (1, 0)
    assert stored(conn)[101]["updated_at"] == before["updated_at"]
    pve.vm(101).stats.pop("cpu")
    result = inventory.sync_guests(poller, sid)
    assert result.skipped == 0 and last_sync(conn)["skipped"] == 0 and last_sync(conn)["skipped_detail"] is None


# ------------------------------------------------------- a PVE-shaped server that answers anything
class _Handler(BaseHTTPRequestHandler):
    answer: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"data": self.server.answer}).encode() if self.path.startswith(
            "/api2/json/cluster/resources") else b'{"data": null}'
        self.send_response(200 if self.path.startswith("/api2/json/cluster/resources") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_pve(tmp_path):
    """https://127.0.0.1:PORT answering GET /cluster/resources with whatever `server.answer` holds."""
    cert, key = make_cert(str(tmp_path), hosts=("127.0.0.1",))[:2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.answer = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


GOOD = {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve1", "name": "web", "status": "running",
        "cpu": 0.5, "maxcpu": 2, "mem": 1024, "maxmem": 4096, "uptime": 60}


@pytest.mark.parametrize("bad, words", [
    ({"id": "qemu/101", "type": "qemu", "node": "pve1", "name": "no-vmid"}, "vmid is missing"),
    ({"id": "x/102", "vmid": 102, "node": "pve1"}, "type is missing"),
    ({"id": "qemu/103", "type": ["qemu"], "vmid": 103}, "type is list"),
    ({"id": "qemu/104", "type": "qemu", "vmid": {"n": 104}}, "vmid is dict, not a number"),
    ({"id": "qemu/105", "type": "qemu", "vmid": True}, "vmid is bool"),
    ({"id": "qemu/106", "type": "qemu", "vmid": 106, "name": {"x": 1}}, "name is dict, not text"),
    ({"id": "qemu/107", "type": "qemu", "vmid": 107, "mem": 10 ** 30, "maxmem": 1}, "mem"),
    ({"id": "qemu/108", "type": "qemu", "vmid": 108, "template": "maybe"}, "template 'maybe' is not 0 or 1"),
    ({"id": "qemu/109", "type": "qemu", "vmid": 10 ** 400}, "vmid"),
    ("a string where an object belongs", "entry 2: the entry is str, not an object"),
    (None, "the entry is NoneType"),
    ({"id": "qemu/110", "type": "qemu", "vmid": 110, "tags": "a\x00b"}, "tags"),
    ({"id": "qemu/111", "type": "qemu", "vmid": 111, "name": "\ud800"}, "name"),
])
def test_entries_fakepve_cannot_send_are_skipped_too(conn, add_server, poller, odd_pve, bad, words):
    odd_pve.answer = [GOOD, bad, {"id": "node/pve1", "type": "node", "node": "pve1"}]
    sid = str(add_server("odd", f"https://127.0.0.1:{odd_pve.server_port}", insecure=True)["id"])
    result = inventory.sync_guests(poller, sid)
    assert result.error_kind is None, result.error_message
    assert (result.guests, result.skipped) == (1, 1)
    assert sorted(stored(conn)) == [100]
    assert words in last_sync(conn)["skipped_detail"]


def test_the_same_vmid_twice_is_stored_once_and_the_second_counted(conn, add_server, poller, odd_pve):
    odd_pve.answer = [GOOD, {**GOOD, "name": "twin"}]
    sid = str(add_server("odd", f"https://127.0.0.1:{odd_pve.server_port}", insecure=True)["id"])
    result = inventory.sync_guests(poller, sid)
    assert (result.guests, result.skipped) == (1, 1) and stored(conn)[100]["name"] == "web"
    assert "listed twice" in last_sync(conn)["skipped_detail"]
