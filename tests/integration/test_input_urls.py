"""A server's address, parsed once in Python (worker/urls.py, what the CLI uses) and once in SQL
(public.server_url, what update_server() uses): the same cases give the same address or the same
refusal, and no input gets anything but a value or a sentence."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from worker.urls import UrlError, server_url

# (input, stored address) — or (input, the words of the refusal).
ACCEPTED = [
    ("https://pve.lan", "https://pve.lan:8006"),
    ("https://pve.lan/", "https://pve.lan:8006"),
    ("  https://PVE.Example.com:443/ ", "https://pve.example.com:443"),
    ("HTTPS://pve.lan:8006", "https://pve.lan:8006"),
    ("https://192.0.2.10", "https://192.0.2.10:8006"),
    ("https://10.0.0.1:1", "https://10.0.0.1:1"),
    ("https://[fd00::1]:8006", "https://[fd00::1]:8006"),
    ("https://[fd00::1]", "https://[fd00::1]:8006"),
    ("https://[FD00:0:0::A]/", "https://[fd00:0:0::a]:8006"),
    ("https://[::ffff:192.0.2.1]:9000", "https://[::ffff:192.0.2.1]:9000"),
    ("https://xn--bcher-kva.example:65535", "https://xn--bcher-kva.example:65535"),
    ("https://a-b.c-d.e", "https://a-b.c-d.e:8006"),
]
REFUSED = [
    ("https://host?x=1", "has a query"),
    ("https://host:8006?x=1", "has a query"),
    ("https://host?", "has a query"),
    ("https://host#top", "has a fragment"),
    ("https://root:secret@host", "user name or password"),
    ("https://root@host:8006", "user name or password"),
    ("https://host/api2/json", "has a path"),
    ("https://host//", "has a path"),
    ("http://host", "must start with https://"),
    ("ftp://host", "must start with https://"),
    ("host:8006", "must start with https://"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("https://", "has no host"),
    ("https://:8006", "has no host"),
    ("https://host:0", "port outside 1-65535"),
    ("https://host:65536", "port outside 1-65535"),
    ("https://host:99999", "port outside 1-65535"),
    ("https://host:", "not a number"),
    ("https://host:+80", "not a number"),
    ("https://host:123456", "not a number"),
    ("https://host:80:80", "looks like an IPv6 address"),
    ("https://fd00::1", "looks like an IPv6 address"),
    ("https://fd00::1:8006", "looks like an IPv6 address"),
    ("https://[fd00::1", "brackets"),
    ("https://fd00::1]", "brackets"),
    ("https://x[fd00::1]", "brackets"),
    ("https://[fd00::1][::2]", "brackets"),
    ("https://[not-ipv6]:8006", "not an IPv6 address"),
    ("https://[192.0.2.1]", "not an IPv6 address"),
    ("https://[fe80::1%25eth0]", "not an IPv6 address"),
    ("https://[fd00::1]x", "not a port"),
    ("https://[fd00::1]:abc", "not a number"),
    ("https://pve lan", "spaces, control characters"),
    ("https://pvé.lan", "spaces, control characters"),
    ("https://pve\tlan", "spaces, control characters"),
    ("https://pve_lan", "not a host name"),
    ("https://-pve.lan", "not a host name"),
    ("https://pve..lan", "not a host name"),
    ("https://pve.lan.", "not a host name"),
    ("https://" + "a" * 64 + ".lan", "not a host name"),
    ("https://1.2.3.400", "not an IPv4 address"),
    ("https://1.2.3", "not an IPv4 address"),
    ("https://01.2.3.4", "not an IPv4 address"),
    ("https://" + "a." * 130 + "b", "longer than 253"),
    ("https://" + "a" * 300, "longer than 300"),
]


def sql_url(conn, url: str) -> tuple[str | None, str | None]:
    """(address, None) or (None, the refusal) from public.server_url."""
    try:
        return conn.execute("select public.server_url(%s, 'URL') as u", (url,)).fetchone()["u"], None
    except psycopg.errors.InvalidParameterValue as exc:
        return None, exc.diag.message_primary
    finally:
        conn.rollback()


def py_url(url: str) -> tuple[str | None, str | None]:
    try:
        return server_url(url), None
    except UrlError as exc:
        return None, str(exc)


@pytest.mark.parametrize("url, stored", ACCEPTED)
def test_python_and_sql_store_the_same_address(conn, url, stored):
    assert py_url(url) == (stored, None)
    assert sql_url(conn, url) == (stored, None)


@pytest.mark.parametrize("url, words", REFUSED)
def test_python_and_sql_refuse_the_same_address_with_the_same_sentence(conn, url, words):
    py_value, py_error = py_url(url)
    sql_value, sql_error = sql_url(conn, url)
    assert py_value is None and words in py_error
    assert sql_value is None and words in sql_error


def test_a_refusal_never_repeats_the_password_of_the_address(conn):
    for url in ("https://root:hunter2@host", "https://root:hunter2@host/path", "https://a@b@hunter2x@host?q"):
        _, py_error = py_url(url)
        _, sql_error = sql_url(conn, url)
        assert "hunter2" not in py_error and "hunter2" not in sql_error


# Pieces people (and attackers) put into an address.
_PIECES = st.sampled_from(["https://", "http://", "HTTPS://", "pve", ".lan", "-", "_", "[", "]", ":", "::", "8006",
                           "0", "65536", "1.2.3.4", "256", "fd00", "%25", "@", "?", "#", "/", "//", " ", "\t", "é",
                           "xn--", "a" * 63, "[fd00::1]", "[::ffff:1.2.3.4]", "\x7f", "\x01"])
_ADDRESSES = st.one_of(
    st.lists(_PIECES, max_size=8).map("".join),
    st.builds(lambda a, p: f"https://[{a}]" + (f":{p}" if p is not None else ""),
              st.ip_addresses(v=6).map(str), st.none() | st.integers(-1, 70000)),
    st.builds(lambda a, p: f"https://{a}:{p}", st.ip_addresses(v=4).map(str), st.integers(-1, 70000)),
    st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=40),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=_ADDRESSES)
def test_python_and_sql_agree_on_any_address(conn, url):
    py_value, py_error = py_url(url)
    sql_value, sql_error = sql_url(conn, url)
    assert py_value == sql_value, (url, py_error, sql_error)
    assert (py_error is None) == (sql_error is None)
