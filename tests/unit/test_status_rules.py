"""The pure rules: status hysteresis, learned timeout, scheduler ticks, input parsing."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from worker.admin import InputError, check_url
from worker.polling import PollResult, learned_timeout, next_status
from worker.pve import normalize_fingerprint, parse_token
from worker.scheduler import tick
from worker.settings import load

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
ONLINE = {"connection_status": "online", "health_check_error": None, "health_check_error_kind": None,
          "pve_version": "9.1.4", "nodes_online": 1, "nodes_total": 1, "used_fallback": False}


def result(success=True, **kw):
    base = dict(server_id="s", scheduled_at=NOW, created_at=NOW, success=success,
                response_time_ms=10 if success else None, pve_version="9.1.4", nodes_online=1, nodes_total=1)
    if not success:
        base.update(error_kind="timeout", error_message="pve did not answer within 5000 ms", pve_version=None,
                    nodes_online=None, nodes_total=None)
    base.update(kw)
    return PollResult(**base)


def test_one_or_two_failures_keep_an_online_server_online():
    assert next_status(ONLINE, [False, True], result(False), 3)["connection_status"] == "online"
    assert next_status(ONLINE, [False, False, True], result(False), 3) == ONLINE


def test_the_third_consecutive_failure_takes_it_offline_with_the_error():
    st = next_status(ONLINE, [False, False, False, True], result(False), 3)
    assert st["connection_status"] == "offline"
    assert st["health_check_error"] == "pve did not answer within 5000 ms" and st["health_check_error_kind"] == "timeout"


def test_a_new_server_stays_unknown_until_it_answers_or_fails_three_times():
    unknown = dict(ONLINE, connection_status="unknown", pve_version=None)
    assert next_status(unknown, [False], result(False), 3)["connection_status"] == "unknown"
    assert next_status(unknown, [True], result(), 3)["connection_status"] == "online"


def test_answering_after_failures_is_degraded_until_they_leave_the_window():
    offline = dict(ONLINE, connection_status="offline")
    st = next_status(offline, [True, False, False, False, True], result(), 3)
    assert st["connection_status"] == "degraded" and "polls failed" in st["health_check_error"]
    clean = [True] * 7 + [False, False, False]
    assert next_status(offline, clean, result(), 3)["connection_status"] == "degraded"
    assert next_status(offline, [True] * 8 + [False, False], result(), 3)["connection_status"] == "degraded"
    assert next_status(offline, [True] * 9 + [False], result(), 3)["connection_status"] == "online"


def test_fallback_offline_nodes_and_lost_quorum_make_an_answering_server_degraded():
    assert "fallback" in next_status(ONLINE, [True], result(used_fallback=True), 3)["health_check_error"]
    st = next_status(ONLINE, [True], result(nodes_online=2, nodes_total=3), 3)
    assert st["connection_status"] == "degraded" and st["health_check_error"] == "1 of 3 cluster nodes offline"
    assert "quorum" in next_status(ONLINE, [True], result(quorate=False), 3)["health_check_error"]


def test_an_unchanged_healthy_poll_changes_nothing_visible():
    assert next_status(ONLINE, [True] * 10, result(), 3) == ONLINE


def test_the_learned_timeout_is_four_times_p95_within_bounds():
    s = load()
    assert learned_timeout(None, 0, s) is None
    assert learned_timeout(100, 3, s) is None  # too few samples
    assert learned_timeout(5, 50, s) == s.timeout_min_ms
    assert learned_timeout(600, 50, s) == 2400
    assert learned_timeout(9000, 50, s) == s.timeout_max_ms


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
