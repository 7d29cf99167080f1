"""The pure rules: scheduler ticks, input parsing. (The status rules are decided by the database's
fold: tests/integration/test_status_rules.py.)"""

from __future__ import annotations

import uuid

import pytest

from worker.admin import InputError, check_url
from worker.pve import normalize_fingerprint, parse_token
from worker.scheduler import tick


def test_ticks_are_aligned_per_server_and_spread_across_servers():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    t = 1_800_000_000.0
    ta = tick(a, 10, t)
    assert t - 10 < ta <= t
    assert tick(a, 10, ta) == ta and tick(a, 10, ta + 9.999) == ta and tick(a, 10, ta + 10) == ta + 10
    phases = {tick(str(uuid.uuid4()), 10, t) for _ in range(50)}
    assert len(phases) > 40  # polls spread over the interval instead of bursting


def test_token_and_fingerprint_parsing():
    assert parse_token("root@pam!monitor=abc-123") == ("root@pam", "monitor", "abc-123")
    for bad in ("root@pam=abc", "root!tok=abc", "root@pam!tok", "root@pam!tok="):
        with pytest.raises(ValueError):
            parse_token(bad)
    fp = "ab" * 32
    assert normalize_fingerprint(fp) == ":".join(["AB"] * 32)
    assert normalize_fingerprint(normalize_fingerprint(fp).lower()) == ":".join(["AB"] * 32)
    with pytest.raises(ValueError):
        normalize_fingerprint("ab" * 31)


def test_urls_default_to_the_pve_port_and_reject_paths_and_other_schemes():
    assert check_url("https://pve.lan") == "https://pve.lan:8006"
    assert check_url("https://pve.lan:443/") == "https://pve.lan:443"
    for bad in ("http://pve.lan", "https://pve.lan/api2/json", "https://pve.lan:99999", "pve.lan"):
        with pytest.raises(InputError):
            check_url(bad)
