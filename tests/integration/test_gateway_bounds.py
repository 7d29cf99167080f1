"""The console gateway under hostile browsers: a session holds a bounded amount of memory. A frame
over MAX_BROWSER_FRAME closes the console with 1009 and a sentence; input for a shell that does not
read waits in the browser's TCP connection (the gateway stops reading it), not in the gateway."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.gateway import console_token, make_gateway, ready, session_rows
from tests.support.seed import add_ssh_access
from tests.support.waiting import wait_until
from worker import consoles
from worker.gateway.app import MAX_BROWSER_FRAME, TOO_BIG

# A stalled send: the gateway stopped reading the browser (its upstream is full). A detector, not a
# timed assertion: the buffer checks below hold whenever it fires. (With pings every 2 s, the
# heartbeat usually drops the connection first, its pongs unread behind the input.)
STALL_S = 5


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_a_browser_frame_over_the_limit_closes_the_console_with_a_sentence(conn, uconn, console_fleet, gateway, sshd,
                                                                          secret_key):
    add_ssh_access(conn, secret_key, console_fleet.servers["pve1"], sshd, sshd["host_key"])
    with gateway.ws(console_token(uconn, console_fleet, protocol="ssh", vmid=None, node="pve1")) as ws:
        ready(ws)
        ws.send(consoles.term_input("x" * MAX_BROWSER_FRAME))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=15)
    assert closed.value.rcvd.code == 1009 and closed.value.rcvd.reason == TOO_BIG
    row = wait_until(lambda: [r for r in session_rows(conn) if r["status"] == "closed"], 15, what="the row closed")[0]
    assert row["close_reason"] == TOO_BIG


@pytest.fixture
def quick_gateway(db_url, secret_key):
    """Pings every 2 s, so a browser that went away behind a full upstream is noticed soon."""
    gw = make_gateway(db_url, secret_key, ping_s=2)
    yield gw
    gw.stop()


def test_input_for_a_shell_that_does_not_read_is_not_buffered_by_the_gateway(conn, uconn, console_fleet, quick_gateway,
                                                                            sshd, secret_key):
    """300 frames of almost 1 MiB into `sleep` (which never reads its raw terminal): the gateway
    awaits the SSH channel's drain, so it stops reading the browser; its channel buffer stays under
    a frame plus the high-water mark instead of holding everything (265 MiB before). The browser
    leaving meanwhile still ends the session (the heartbeat notices it)."""
    gateway = quick_gateway
    add_ssh_access(conn, secret_key, console_fleet.servers["pve1"], sshd, sshd["host_key"])
    token = console_token(uconn, console_fleet, protocol="ssh", vmid=None, node="pve1")
    frame = consoles.term_input("x" * (MAX_BROWSER_FRAME - 64))
    before = rss_bytes()
    peaks = []

    def buffered() -> int:
        bridges = list(gateway.gateway.bridges.values())
        return bridges[0].upstream.process.stdin.channel.get_write_buffer_size() if bridges else 0

    async def scenario() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{gateway.config.port}/ws?token={token}",
                                       max_msg_size=0) as ws:
                assert json.loads((await ws.receive(timeout=15)).data)["type"] == "ready"
                await ws.send_str(consoles.term_input("stty raw -echo; echo READ''Y; exec sleep 600\r"))
                seen = b""
                while b"READY" not in seen:
                    seen += (await ws.receive(timeout=15)).data
                sent = 0
                try:
                    for sent in range(300):
                        await asyncio.wait_for(ws.send_str(frame), STALL_S)
                        peaks.append(buffered())
                    sent = 300
                except (asyncio.TimeoutError, ConnectionError, aiohttp.ClientError):
                    pass  # stalled, or dropped by the heartbeat: the gateway stopped reading either way
                peaks.append(buffered())
                return sent

    sent = asyncio.run(asyncio.wait_for(scenario(), 300))
    assert sent < 300, "the gateway read every frame of a browser whose shell does not read"
    assert max(peaks) <= MAX_BROWSER_FRAME + (256 << 10), max(peaks)
    assert rss_bytes() - before < 96 << 20
    row = wait_until(lambda: [r for r in session_rows(conn) if r["status"] == "closed"], 15, what="the row closed")[0]
    assert row["close_reason"] == "the browser stopped answering while the SSH side was not reading its input"
