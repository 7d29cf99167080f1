"""Property tests: whatever a person or a server sends, the parsers answer with a value or a
sentence, never another exception — the URL parser (worker/urls.py), the Realtime filter parser
(worker/embedded/standin/filters.py) and the PVE response classifier (worker/pve.py)."""

from __future__ import annotations

import re

import requests
from hypothesis import given, settings, strategies as st
from proxmoxer.core import AuthenticationError, ResourceException

from worker import pve
from worker.embedded.standin import filters
from worker.embedded.standin.filters import parse_filter
from worker.errors import ProxwatchError
from worker.urls import UrlError, server_url

FAST = settings(max_examples=200, deadline=None)
# Printable-or-not ASCII without NUL; the password test builds its '@' or ':' in rather than
# filtering for it (filtering most examples away is slow and trips Hypothesis' health check).
ASCII = st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=10)
KINDS = {pve.TIMEOUT, pve.REFUSED, pve.DNS, pve.NETWORK, pve.TLS, pve.AUTH, pve.HTTP, pve.BAD_RESPONSE, pve.CONFIG}
# What the proxmox_servers.base_url check accepts (supabase/migrations/20261122000100_spine.sql).
STORED = re.compile(r"^https://[^/\s]+(:[0-9]+)?/?$")

_URL_PIECES = st.sampled_from(["https://", "http://", "pve", ".", "-", "[", "]", ":", "8006", "99999", "@", "?", "#",
                               "/", "%", " ", "\x00", "é", "fd00::1", "1.2.3.4", "xn--", "\\", "'"])
URLS = st.one_of(st.text(max_size=60), st.lists(_URL_PIECES, max_size=10).map("".join),
                 st.builds(lambda host: f"https://{host}", st.text(max_size=30)))


def a_sentence(exc: BaseException) -> bool:
    text = str(exc)
    return bool(text.strip()) and "Traceback" not in text and len(text) < 2000


@FAST
@given(URLS)
def test_any_text_is_an_address_or_a_sentence(text):
    try:
        url = server_url(text)
    except UrlError as exc:
        assert isinstance(exc, ProxwatchError) and a_sentence(exc)
        return
    # An accepted address is stored as is, fits the table's check, and parses to itself.
    assert STORED.match(url) and url.startswith("https://") and "?" not in url and "@" not in url
    assert server_url(url) == url


@FAST
@given(st.tuples(ASCII, st.sampled_from(["@", ":"]), ASCII).map("".join))
def test_a_password_in_an_address_is_never_repeated(secret):
    try:
        server_url(f"https://root:{secret}@pve.example:8006")
    except UrlError as exc:
        assert f":{secret}@" not in str(exc)


FILTERS = st.one_of(
    st.none(), st.text(max_size=80),
    st.lists(st.sampled_from(["id", "server_id", "=", "eq", "neq", "in", "lt", ".", ",", "(", ")", '"', "\\", "1",
                              "a,b", " ", "\x00", "é", "is", "null", "not"]), max_size=12).map("".join))


# The parser's refusal: a sentence in ProxwatchError, ValueError, or the stand-in's own ParamsError
# (the Realtime server's "Error parsing `filter` params: …", sent to the subscriber as it is).
REFUSALS = (ProxwatchError, ValueError) + ((filters.ParamsError,) if hasattr(filters, "ParamsError") else ())


@FAST
@given(FILTERS)
def test_any_filter_is_conditions_or_a_sentence(text):
    try:
        conditions = parse_filter(text)
    except REFUSALS as exc:
        assert a_sentence(exc)
        return
    assert isinstance(conditions, tuple)


BODIES = st.one_of(st.none(), st.text(max_size=300), st.just(""), st.just("   \n  "), st.just("\n\n"),
                   st.binary(max_size=50).map(lambda b: b.decode("latin-1")))


@FAST
@given(status=st.integers(min_value=-1, max_value=1000), message=st.one_of(st.none(), st.text(max_size=50)),
       content=BODIES, errors=st.one_of(st.none(), st.dictionaries(st.text(max_size=10), st.text(max_size=20))),
       url=st.text(max_size=40))
def test_any_pve_status_and_body_is_one_error_of_a_known_kind(status, message, content, errors, url):
    try:
        exc = ResourceException(status, message, content, errors=errors)
    except TypeError:    # proxmoxer's own message building (content None + errors) is not ours to test
        exc = ResourceException(status, message, content)
    error = pve.classify(exc, url, 5.0)
    assert isinstance(error, pve.PveError) and error.kind in KINDS and a_sentence(error)
    if status in (401, 403):
        assert error.kind == pve.AUTH and error.permanent


FAILURES = st.one_of(
    st.builds(AuthenticationError, st.text(max_size=50)),
    st.builds(requests.exceptions.ConnectionError, st.text(max_size=50)),
    st.builds(requests.exceptions.SSLError, st.text(max_size=50)),
    st.builds(requests.exceptions.Timeout, st.text(max_size=50)),
    st.builds(ValueError, st.text(max_size=50)),
    st.builds(KeyError, st.text(max_size=50)),
    st.builds(OSError, st.text(max_size=50)),
    st.builds(RuntimeError, st.text(max_size=50)),
)


@FAST
@given(FAILURES, st.text(max_size=40), st.floats(min_value=0.001, max_value=120))
def test_any_failure_of_a_call_is_one_error_of_a_known_kind(exc, url, timeout_s):
    error = pve.classify(exc, url, timeout_s)
    assert isinstance(error, pve.PveError) and error.kind in KINDS and a_sentence(error)



JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=5)


@FAST
@given(JSON_VALUES)
def test_a_reported_version_is_printable_text_or_not_the_pve_api(value):
    # whatever a server puts in /version's "version": a version to store, or ValueError (bad_response)
    try:
        text = pve._version_text(value)
    except ValueError:
        return
    assert isinstance(text, str) and text and len(text) <= pve.MAX_VERSION and text.isprintable()


def test_what_pve_reports_as_its_version_is_kept():
    # what PVE sends ("8.2.4"; "4.4" on old releases), a number taken as written, blanks stripped
    assert [pve._version_text(v) for v in ("8.2.4", " 4.4 ", 7, 8.1)] == ["8.2.4", "4.4", "7", "8.1"]
    for odd in (None, True, ["8.2"], "", "8.2\x00.4", "9" * 65, float("nan")):
        try:
            pve._version_text(odd)
        except ValueError:
            continue
        raise AssertionError(f"{odd!r} was taken as a version")
