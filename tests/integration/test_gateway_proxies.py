"""The console gateway behind a reverse proxy, end to end: the session registry records the
right-most X-Forwarded-For hop that is not a trusted proxy, never what the browser wrote itself."""

from __future__ import annotations

import ipaddress
import json

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.gateway import make_gateway
from tests.support.seed import call, seed_teams
from worker import inventory
from worker.crypto import Box
from worker.polling import Poller


@pytest.fixture
def fleet(conn, secret_key, pve, fingerprint, pool, settings):
    """Team acme with server pve1 = the fake PVE, guest 100 running."""
    pve.add_vm(100, "web", status="running")
    f = seed_teams(conn, secret_key, servers={"pve1": ("acme", pve.url)}, fingerprint=fingerprint)
    assert inventory.sync_guests(Poller(pool, Box(secret_key), settings), f.servers["pve1"]).guests == 1
    return f


def open_console(gateway, uconn, fleet, forwarded_for: str | None) -> str:
    """A VNC console through the gateway with that X-Forwarded-For; the client address registered."""
    token = call(uconn, fleet.users["olga"], "select public.request_console(%s, 'vnc', 100, null) as r",
                 (fleet.servers["pve1"],), many=False)["r"]["token"]
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with ws_connect(f"ws://127.0.0.1:{gateway.config.port}/ws?token={token}", open_timeout=10,
                    additional_headers=headers) as ws:
        assert json.loads(ws.recv(timeout=15))["type"] == "ready"
        return call(uconn, fleet.users["olga"], "select client_ip from public.active_connections()",
                    many=False)["client_ip"]


@pytest.mark.parametrize("trusted, forwarded_for, client", [
    # The proxy (on loopback, trusted by default) appended the browser's address; the browser's own
    # entry in front of it is a lie.
    (None, "203.0.113.66, 198.51.100.7", "198.51.100.7"),
    (None, "198.51.100.7, garbage", "198.51.100.7"),
    # The peer is not a trusted proxy: its own address, whatever it claims.
    ((ipaddress.ip_network("10.0.0.0/8"),), "198.51.100.7", "127.0.0.1"),
    (None, None, "127.0.0.1"),
])
def test_behind_a_trusted_proxy_the_registry_gets_the_right_most_untrusted_hop(db_url, secret_key, uconn, fleet,
                                                                              trusted, forwarded_for, client):
    kw = {"trusted_proxies": trusted} if trusted else {}
    gateway = make_gateway(db_url, secret_key, trust_proxy=True, **kw)
    try:
        assert open_console(gateway, uconn, fleet, forwarded_for) == client
    finally:
        gateway.stop()


def test_without_trust_proxy_the_header_is_ignored(db_url, secret_key, uconn, fleet):
    gateway = make_gateway(db_url, secret_key)
    try:
        assert open_console(gateway, uconn, fleet, "198.51.100.7") == "127.0.0.1"
    finally:
        gateway.stop()
