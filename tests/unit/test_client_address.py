"""The console gateway's client address behind proxies: the right-most X-Forwarded-For hop that is
not a trusted proxy; what a client writes into the header itself is never believed."""

from __future__ import annotations

import ipaddress

import pytest

from worker.gateway.proxies import client_address, parse_address
from worker.settings import VARS, SettingsError

LOOPBACK = VARS["PROXWATCH_GATEWAY_TRUSTED_PROXIES"].default
PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")) + LOOPBACK


@pytest.mark.parametrize("peer, headers, client", [
    # A proxy on loopback appended the client; the client's own entry (first) is ignored.
    ("127.0.0.1", ["203.0.113.66, 198.51.100.7"], "198.51.100.7"),
    ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
    # Two trusted proxies in a row, then the client.
    ("127.0.0.1", ["203.0.113.66, 198.51.100.7, 10.1.2.3"], "198.51.100.7"),
    # The header in several lines reads as one list.
    ("127.0.0.1", ["203.0.113.66", "198.51.100.7, 10.1.2.3"], "198.51.100.7"),
    # Malformed entries are skipped, not taken.
    ("127.0.0.1", ["198.51.100.7, not-an-ip, , 999.1.1.1"], "198.51.100.7"),
    ("127.0.0.1", ["garbage"], "127.0.0.1"),
    # Ports and brackets, IPv6, IPv4-mapped IPv6.
    ("127.0.0.1", ["198.51.100.7:4711"], "198.51.100.7"),
    ("::1", ["[2001:db8::5]:443, fd00::1"], "2001:db8::5"),
    ("::ffff:127.0.0.1", ["::ffff:198.51.100.7"], "198.51.100.7"),
    # A peer that is not a trusted proxy is the client, whatever it sends.
    ("198.51.100.7", ["10.0.0.1"], "198.51.100.7"),
    ("203.0.113.66", ["127.0.0.1"], "203.0.113.66"),
    # No header, or every hop trusted: the farthest trusted hop.
    ("127.0.0.1", [], "127.0.0.1"),
    ("127.0.0.1", ["10.9.9.9, 10.1.1.1"], "10.9.9.9"),
])
def test_the_client_is_the_right_most_untrusted_hop(peer, headers, client):
    assert client_address(peer, headers, PROXIES) == client


def test_with_the_default_only_loopback_proxies_are_trusted():
    assert client_address("127.0.0.1", ["198.51.100.7, 10.1.2.3"], LOOPBACK) == "10.1.2.3"


def test_no_peer_address_is_passed_through():
    assert client_address(None, ["198.51.100.7"], PROXIES) is None


@pytest.mark.parametrize("text, parsed", [("1.2.3.4", "1.2.3.4"), (" 1.2.3.4:80 ", "1.2.3.4"), ("[::1]", "::1"),
                                          ("\"[::1]:80\"", "::1"), ("unknown", None), ("", None), (None, None)])
def test_parse_address(text, parsed):
    address = parse_address(text)
    assert (str(address) if address else None) == parsed


def test_the_trusted_proxies_setting_reads_a_list_of_networks(monkeypatch, tmp_path):
    from worker.settings import load

    monkeypatch.setenv("PROXWATCH_HOME", str(tmp_path))
    monkeypatch.setenv("PROXWATCH_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1,fd00::/8")
    assert [str(n) for n in load().gateway.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32", "fd00::/8"]
    monkeypatch.setenv("PROXWATCH_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, proxy.example")
    with pytest.raises(SettingsError, match="'proxy.example' is not an address or a network"):
        load()
