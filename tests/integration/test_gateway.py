"""The console gateway end to end on real services: a fake PVE over real HTTPS that implements
vncproxy / termproxy / vncwebsocket with RFB 3.8 (fakepve), a real sshd on 127.0.0.1, the real
database with the registry, and WebSocket clients playing the browser."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import httpx
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.support.gateway import console_token, make_gateway, ready, session_rows
from tests.support.processes import ROOT
from tests.support.seed import add_ssh_access, call
from tests.support.waiting import free_port, wait_until as wait_for
from worker import consoles, db


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: the challenge DES-encrypted with the password (bits of each byte mirrored)."""
    key = (password.encode() + b"\0" * 8)[:8]
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return enc.update(challenge) + enc.finalize()


class Stream:
    """Reads the gateway's binary frames as one byte stream."""

    def __init__(self, ws):
        self.ws, self.buf = ws, b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            frame = self.ws.recv(timeout=10)
            assert isinstance(frame, bytes), frame
            self.buf += frame
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def until(self, needle: bytes, timeout=10.0) -> bytes:
        """Read until the pattern (a regular expression over bytes) appears."""
        deadline = time.monotonic() + timeout
        while not re.search(needle, self.buf):
            frame = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            self.buf += frame if isinstance(frame, bytes) else frame.encode()
        return self.buf


def test_a_vnc_console_streams_the_rfb_handshake_through_the_gateway_both_ways(conn, uconn, console_fleet, gateway, pve):
    token = console_token(uconn, console_fleet)
    # The console page is served for a valid link (without using it up).
    page = httpx.get(f"{gateway.url}/console", params={"token": token})
    assert page.status_code == 200 and "/static/novnc/core/rfb.js" in page.text and "web (qemu/100)" in page.text
    assert httpx.get(f"{gateway.url}/static/novnc/core/rfb.js").status_code == 200
    with gateway.ws(token) as ws:
        hello = ready(ws)
        assert hello["protocol"] == "vnc" and hello["password"].startswith("PVEVNC:")
        rfb = Stream(ws)
        # The browser side receives the RFB 3.8 handshake from PVE, through the gateway …
        assert rfb.read(12) == b"RFB 003.008\n"
        ws.send(b"RFB 003.008\n")
        assert rfb.read(2) == b"\x01\x02"                 # one security type: VNC authentication
        ws.send(b"\x02")
        challenge = rfb.read(16)
        ws.send(vnc_response(hello["password"], challenge))
        assert rfb.read(4) == b"\x00\x00\x00\x00"         # … and its answers reach PVE: authenticated
        ws.send(b"\x01")                                  # ClientInit (shared)
        width, height = struct.unpack(">HH", rfb.read(4))
        rfb.read(16)
        name = rfb.read(struct.unpack(">I", rfb.read(4))[0])
        assert (width, height, name) == (4, 2, b"web")
        # While it is open, the registry has it, with the client's address.
        rows = session_rows(conn)
        assert [(r["status"], r["protocol"], r["target"], r["ip"], r["user_email"]) for r in rows] == \
            [("open", "vnc", "web (qemu/100)", "127.0.0.1", "olga@acme.test")]
    # Closing the browser side closes the session explicitly, with the reason.
    row = wait_for(lambda: [r for r in session_rows(conn) if r["status"] == "closed"])[0]
    assert row["close_reason"] == "the browser closed the console"
    actions = [r["action"] for r in conn.execute("select action from public.audit_log order by id")]
    assert actions == ["console.ticket.issue", "connection.session.open", "connection.session.close"]
    audit = conn.execute("select details from public.audit_log where action = 'console.ticket.issue'").fetchone()
    assert audit["details"]["protocol"] == "vnc" and "PVEVNC" not in str(audit["details"])


def test_a_terminal_console_pipes_input_and_output_and_ends_when_pve_ends_it(conn, uconn, console_fleet, gateway, pve):
    token = console_token(uconn, console_fleet, protocol="term", vmid=101)
    with gateway.ws(token) as ws:
        ready(ws)
        out = Stream(ws)
        out.until(b"starting serial terminal")
        ws.send(consoles.term_input("echo hi"))
        out.until(b"echo hi")
        assert any(frame == "0:7:echo hi" for frame in pve.termdata)
        # PVE's side ends (the fake ends its terminal on a binary frame): the gateway closes the browser side.
        ws.send(b"\x00")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
        assert closed.value.rcvd.code == 4003 and closed.value.rcvd.reason == "the PVE side ended the console"
    row = wait_for(lambda: [r for r in session_rows(conn) if r["status"] == "closed"])[0]
    assert row["close_reason"] == "the PVE side ended the console"


def test_a_console_link_works_once(uconn, console_fleet, gateway):
    token = console_token(uconn, console_fleet)
    with gateway.ws(token) as ws:
        ready(ws)
    with gateway.ws(token) as ws:
        import json
        message = json.loads(ws.recv(timeout=10))
        assert message == {"type": "error",
                           "message": "this console link was used already: open the console again from the dashboard"}
    page = httpx.get(f"{gateway.url}/console", params={"token": token})
    assert page.status_code == 410 and "used already" in page.text
    assert httpx.get(f"{gateway.url}/console", params={"token": "nonsense"}).status_code == 410


def test_at_the_host_limit_the_browser_gets_the_sentence_and_nothing_opens(conn, uconn, console_fleet, gateway, pve):
    conn.execute(db.q("update_session_settings"), {"max_total": None, "max_per_host": 1, "stale_after": None,
                                                   "retention": None})
    conn.commit()
    first = gateway.ws(console_token(uconn, console_fleet, vmid=100))
    ready(first)
    with gateway.ws(console_token(uconn, console_fleet, vmid=101)) as second:
        import json
        assert json.loads(second.recv(timeout=10)) == {
            "type": "error", "message": "maximum number of connections to host pve1 (1) reached"}
        with pytest.raises(ConnectionClosed) as closed:
            second.recv(timeout=5)
        assert closed.value.rcvd.code == 4429
    first.close()
    stats = conn.execute(db.q("session_stats")).fetchone()["stats"]
    assert (stats["successful"], stats["failed"]) == (1, 1)
    # The refused console never asked PVE for a ticket (the early capacity check).
    assert sum(1 for m, p, _ in pve.requests if p.endswith("/vncproxy")) == 1


def test_an_admin_kill_drops_the_console_within_two_seconds(conn, uconn, console_fleet, gateway):
    with gateway.ws(console_token(uconn, console_fleet)) as ws:
        sid = ready(ws)["session_id"]
        killed_at = time.monotonic()
        call(uconn, console_fleet.users["alice"], "select public.kill_session(%s)", (sid,))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
        elapsed = time.monotonic() - killed_at
    assert elapsed < 2.0, elapsed
    assert closed.value.rcvd.code == 4001 and closed.value.rcvd.reason == "killed by alice@acme.test"
    assert [r["status"] for r in session_rows(conn)] == ["killed"]


def test_a_wrong_pinned_certificate_refuses_the_console_with_a_sentence(conn, uconn, console_fleet, gateway):
    conn.execute("update public.proxmox_servers set tls_fingerprint = %s", (":".join(["AB"] * 32),))
    conn.commit()
    with gateway.ws(console_token(uconn, console_fleet)) as ws:
        import json
        message = json.loads(ws.recv(timeout=15))
    assert message["type"] == "error" and "does not match the pinned one" in message["message"]
    assert session_rows(conn) == []


def test_a_browser_that_vanishes_without_closing_is_dropped_and_its_session_closed(conn, uconn, console_fleet, db_url,
                                                                                    secret_key):
    gw = make_gateway(db_url, secret_key, ping_s=2)
    try:
        token = console_token(uconn, console_fleet)
        # A raw client: it completes the WebSocket handshake, then never reads nor answers a ping again.
        sock = socket.create_connection(("127.0.0.1", gw.config.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        wait_for(lambda: [r for r in session_rows(conn) if r["status"] == "open"], timeout=10)
        row = wait_for(lambda: [r for r in session_rows(conn) if r["status"] == "closed"], timeout=10)[0]
        assert row["close_reason"] == "the browser stopped answering"
        sock.close()
    finally:
        gw.stop()


def test_a_gateway_killed_outright_leaves_sessions_that_the_sweep_expires(conn, uconn, console_fleet, db_url, secret_key,
                                                                         fakepve_cafile):
    # Given `python -m worker.gateway` as its own process, holding one console
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": "redis://127.0.0.1:1/0",
           "PROXWATCH_SECRET_KEY": secret_key, "PROXWATCH_GATEWAY_PORT": str(port), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "worker.gateway"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(port), timeout=20, interval=0.2)
        ws = ws_connect(f"ws://127.0.0.1:{port}/ws?token={console_token(uconn, console_fleet)}", open_timeout=10)
        ready(ws)
        # When the gateway dies without closing anything
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert [r["status"] for r in session_rows(conn)] == ["open"]
        # Then the sweep expires the session once its heartbeat is older than the (shortened) grace
        time.sleep(1.2)
        conn.rollback()  # a fresh transaction: now() is the time of the sweep
        assert conn.execute(db.q("cleanup_stale_connections"), {"max_age": "1 second"}).fetchone()["cleaned"] == 1
        conn.commit()
        row = session_rows(conn)[0]
        assert row["status"] == "expired" and "no heartbeat" in row["close_reason"]
        ws.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_stopping_the_gateway_closes_its_sessions_with_the_reason(conn, uconn, console_fleet, db_url, secret_key):
    gw = make_gateway(db_url, secret_key)
    ws = gw.ws(console_token(uconn, console_fleet))
    ready(ws)
    gw.stop()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1001
    assert [(r["status"], r["close_reason"]) for r in session_rows(conn)] == [("closed", "the console gateway stopped")]


# ----------------------------------------------------------------------------------------- SSH
def test_an_ssh_terminal_to_a_node_runs_echo_hi(conn, uconn, console_fleet, gateway, sshd, secret_key):
    add_ssh_access(conn, secret_key, console_fleet.servers["pve1"], sshd, sshd["host_key"])
    with gateway.ws(console_token(uconn, console_fleet, protocol="ssh", vmid=None, node="pve1")) as ws:
        hello = ready(ws)
        assert hello["protocol"] == "ssh" and hello["password"] is None
        ws.send(consoles.term_resize(100, 30))
        ws.send(consoles.term_input("echo hi\r"))
        # The command's output line: "hi" alone, not the echoed "echo hi".
        out = Stream(ws).until(rb"(?<!echo )hi\r\n")
        assert b"echo hi" in out
        ws.send(consoles.term_input("exit\r"))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
    row = wait_for(lambda: [r for r in session_rows(conn) if r["status"] == "closed"])[0]
    assert row["protocol"] == "ssh" and row["target"] == "node pve1"
    assert row["close_reason"] == "the SSH side ended the console"


def test_an_ssh_terminal_refuses_a_node_whose_host_key_is_not_the_pinned_one(conn, uconn, console_fleet, gateway, sshd,
                                                                            secret_key):
    add_ssh_access(conn, secret_key, console_fleet.servers["pve1"], sshd, sshd["other_host_key"])
    with gateway.ws(console_token(uconn, console_fleet, protocol="ssh", vmid=None, node="pve1")) as ws:
        import json
        message = json.loads(ws.recv(timeout=15))
    assert message["type"] == "error"
    assert message["message"].startswith(f"127.0.0.1:{sshd['port']} presented a host key that does not match"
                                         " the pinned one")
    assert session_rows(conn) == []
