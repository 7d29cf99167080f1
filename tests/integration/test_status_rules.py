"""The status rules, as the fold decides them (migration status_fold) from a server's row and its
newest polls: hysteresis before offline, degraded and its reasons, what a single poll may change,
the learned timeout. Each case writes real polls through the worker's Recorder (its write folds)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from worker.polling import PollResult, Recorder, utcnow

STEP = timedelta(seconds=10)
VISIBLE = ("connection_status", "health_check_error", "health_check_error_kind", "pve_version", "nodes_online",
           "nodes_total", "used_fallback")
ONLINE = {"connection_status": "online", "health_check_error": None, "health_check_error_kind": None,
          "pve_version": "9.1.4", "nodes_online": 1, "nodes_total": 1, "used_fallback": False}
UNKNOWN = dict(ONLINE, connection_status="unknown", pve_version=None, nodes_online=None, nodes_total=None)
TIMEOUT = "pve did not answer within 5000 ms"


def poll(sid, at, success=True, **kw) -> PollResult:
    base = dict(server_id=sid, scheduled_at=at, created_at=at, success=success, response_time_ms=10 if success else None,
                pve_version="9.1.4", nodes_online=1, nodes_total=1, quorate=True)
    if not success:
        base.update(error_kind="timeout", error_message=TIMEOUT, pve_version=None, nodes_online=None,
                    nodes_total=None, quorate=None)
    base.update(kw)
    return PollResult(**base)


@pytest.fixture
def decide(add_server, conn, pool, settings):
    """decide(current row, outcomes newest first, **fields of the newest poll) -> the visible fields the
    fold leaves on a new server whose row was `current` before those polls."""
    names = iter(range(1000))

    def run(current: dict, flags: list[bool], **newest) -> dict:
        sid = str(add_server(f"rules{next(names)}", "https://rules.example.test:8006")["id"])
        conn.execute("update proxmox_servers set connection_status = %(connection_status)s::connection_status,"
                     " health_check_error = %(health_check_error)s, health_check_error_kind = %(health_check_error_kind)s,"
                     " pve_version = %(pve_version)s, nodes_online = %(nodes_online)s, nodes_total = %(nodes_total)s,"
                     " used_fallback = %(used_fallback)s where id = %(id)s", {**current, "id": sid})
        conn.commit()
        now = utcnow().replace(microsecond=0)
        polls = [poll(sid, now - STEP * i, ok, **(newest if i == 0 else {})) for i, ok in enumerate(flags)]
        Recorder(pool, settings).write(polls[::-1])
        row = conn.execute(f"select {', '.join(VISIBLE)}, connection_status::text as connection_status"
                           " from proxmox_servers where id = %s", (sid,)).fetchone()
        conn.commit()
        return {k: row[k] for k in VISIBLE}
    return run


def test_one_or_two_failures_keep_an_online_server_online(decide):
    assert decide(ONLINE, [False, True])["connection_status"] == "online"
    assert decide(ONLINE, [False, False, True]) == ONLINE


def test_the_third_consecutive_failure_takes_it_offline_with_the_error(decide, settings):
    assert settings.offline_after == 3
    st = decide(ONLINE, [False, False, False, True])
    assert st["connection_status"] == "offline"
    assert (st["health_check_error"], st["health_check_error_kind"]) == (TIMEOUT, "timeout")


def test_a_new_server_stays_unknown_until_it_answers_or_fails_three_times(decide):
    assert decide(UNKNOWN, [False])["connection_status"] == "unknown"
    assert decide(UNKNOWN, [True])["connection_status"] == "online"
    assert decide(UNKNOWN, [False, False, False])["connection_status"] == "offline"


def test_answering_after_failures_is_degraded_until_they_leave_the_window(decide):
    offline = dict(ONLINE, connection_status="offline")
    st = decide(offline, [True, False, False, False, True])
    assert st["connection_status"] == "degraded" and st["health_check_error"] == "2 or more of the last 10 polls failed"
    assert decide(offline, [True] * 7 + [False, False, False])["connection_status"] == "degraded"
    assert decide(offline, [True] * 8 + [False, False])["connection_status"] == "degraded"
    # the eleventh poll back is outside the window
    assert decide(offline, [True] * 9 + [False])["connection_status"] == "online"
    assert decide(offline, [True] * 9 + [False, False])["connection_status"] == "online"


def test_fallback_offline_nodes_and_lost_quorum_make_an_answering_server_degraded(decide):
    assert decide(ONLINE, [True], used_fallback=True)["health_check_error"] == "answers only on its fallback address"
    st = decide(ONLINE, [True], nodes_online=2, nodes_total=3)
    assert st["connection_status"] == "degraded" and st["health_check_error"] == "1 of 3 cluster nodes offline"
    assert (st["nodes_online"], st["nodes_total"]) == (2, 3)
    assert decide(ONLINE, [True], quorate=False)["health_check_error"] == "the cluster has lost quorum"
    both = decide(ONLINE, [True], used_fallback=True, quorate=False)["health_check_error"]
    assert both == "answers only on its fallback address; the cluster has lost quorum"


def test_an_unchanged_healthy_poll_changes_nothing_visible_and_a_new_version_shows(decide):
    assert decide(ONLINE, [True] * 10) == ONLINE
    assert decide(ONLINE, [True], pve_version="9.2.0")["pve_version"] == "9.2.0"
    # a failed poll keeps what the last answer said
    assert decide(ONLINE, [False])["pve_version"] == "9.1.4"


def test_the_learned_timeout_is_four_times_p95_within_bounds(add_server, conn, pool, settings):
    def learned(times: list[int]) -> int | None:
        sid = str(add_server(f"learn{len(times)}-{times[0]}", "https://learn.example.test:8006")["id"])
        conn.commit()
        now = utcnow().replace(microsecond=0)
        Recorder(pool, settings).write([poll(sid, now - STEP * i, response_time_ms=ms) for i, ms in enumerate(times)])
        value = conn.execute("select learned_timeout_ms from proxmox_servers where id = %s", (sid,)).fetchone()
        conn.commit()
        return value["learned_timeout_ms"]

    assert learned([100] * 4) is None  # too few samples: the default applies
    assert learned([5] * 20) == settings.timeout_min_ms
    assert learned([600] * 20) == 2400
    assert learned([9000] * 20) == settings.timeout_max_ms
