"""dashboard/live.py against the real stand-in: the feed a page watches moves when its rows change,
stays still for rows the user may not see, shows "Reconnecting…" while the stand-in is away and is
"Live" (with a bumped version, so the page re-reads) once it is back; one socket per user."""

from __future__ import annotations

import time

import psycopg
import pytest

from dashboard import hub, live
from tests.support.seed import ALICE, BOB
from tests.support.standin import signed_in
from tests.support.waiting import wait_until
from worker.embedded.standin import StandIn

WAIT_S = 20


def until(predicate, what: str, timeout: float = WAIT_S):
    wait_until(predicate, timeout, interval=0.05, what=what)


def set_status(db_url, server_id, status):
    with psycopg.connect(db_url) as conn:
        conn.execute("update public.proxmox_servers set connection_status = %s where id = %s", (status, server_id))


def test_a_feed_moves_with_the_users_rows_only(standin, fleet, db_url):
    state = {}
    client = signed_in(standin, ALICE)
    state["proxwatch_client"] = client
    feed = live.watch(state, [("proxmox_servers", None)])
    until(lambda: feed.connected and feed.status == "Live", "the feed is live")
    start = feed.version
    # Given a change the user may see, the feed moves and carries it.
    set_status(db_url, fleet.servers["pve-alpha"], "offline")
    until(lambda: feed.version == start + 1, "the feed moved")
    assert feed.last_change["record"]["id"] == fleet.servers["pve-alpha"]
    assert feed.last_change["record"]["connection_status"] == "offline"
    # A change in another tenant does not move it; the next own change does, by exactly one.
    set_status(db_url, fleet.servers["pve-gamma"], "offline")
    set_status(db_url, fleet.servers["pve-beta"], "online")
    until(lambda: feed.version == start + 2, "the feed moved again")
    assert feed.last_change["record"]["id"] == fleet.servers["pve-beta"]
    time.sleep(0.3)
    assert feed.version == start + 2
    live.forget(state)


def test_a_filtered_feed_follows_one_servers_metrics(standin, fleet, db_url):
    client = signed_in(standin, ALICE)
    alpha, beta = fleet.servers["pve-alpha"], fleet.servers["pve-beta"]
    feed = live.watch(client, [("connection_metrics", f"server_id=eq.{alpha}")])
    until(lambda: feed.connected, "the feed is live")
    start = feed.version
    with psycopg.connect(db_url) as conn:
        for sid in (beta, alpha):
            conn.execute("insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success,"
                         " response_time_ms) select id, tenant_id, now(), true, 12 from public.proxmox_servers"
                         " where id = %s", (sid,))
            conn.commit()
    until(lambda: feed.version == start + 1, "the alpha metric arrived")
    assert feed.last_change["record"]["server_id"] == alpha
    live.forget(client)


def test_one_socket_per_user_and_pages_share_a_feed(standin, fleet):
    alice_tab1, alice_tab2 = signed_in(standin, ALICE), signed_in(standin, ALICE)
    bob = signed_in(standin, BOB)
    a1 = live.watch(alice_tab1, [("proxmox_servers", None)])
    a2 = live.watch(alice_tab2, [("proxmox_servers", None)])
    b = live.watch(bob, [("proxmox_servers", None)])
    assert a1 is a2 and a1 is not b
    hubs = [h for h in hub._hubs.values() if h.url == standin.url]
    assert len(hubs) == 2  # one per user
    live.forget(alice_tab1)
    live.forget(bob)


def test_the_feed_reconnects_after_the_standin_comes_back(db_url, pw_secrets, fleet):
    first = StandIn(db_url, pw_secrets["jwt_secret"]).start()
    port, second = first.port, None
    try:
        client = signed_in(first, ALICE)
        feed = live.watch(client, [("proxmox_servers", None)])
        until(lambda: feed.connected, "the feed is live")
        first.stop()
        until(lambda: feed.status == "Reconnecting…" and not feed.connected, "the feed reports the drop")
        dropped_at = feed.version
        second = StandIn(db_url, pw_secrets["jwt_secret"], port=port).start()
        until(lambda: feed.status == "Live", "the feed is live again", timeout=60)
        assert feed.version > dropped_at  # the page re-reads what it may have missed
        set_status(db_url, fleet.servers["pve-alpha"], "degraded")
        until(lambda: (feed.last_change or {}).get("record", {}).get("connection_status") == "degraded",
              "a change after the reconnect arrives")
        live.forget(client)
    finally:
        first.stop()
        if second:
            second.stop()


def test_a_binding_must_name_a_table():
    with pytest.raises(ValueError, match="a live binding is"):
        live.watch({}, ["proxmox_servers"])
