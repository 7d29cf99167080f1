"""Conformance of the embedded Realtime with Supabase Realtime, point by point.

Each test drives the stand-in with the official `realtime` client (or, where the point is a frame
the client hides, with raw Phoenix frames) and names in its docstring the file of supabase/realtime
(github.com/supabase/realtime) whose behaviour it pins. On the next upgrade of Supabase Realtime,
diff those files and this module is the list of what to re-check.

Negative checks never sleep: changes arrive in commit order, so "X never arrived" is checked by
committing X and then a change the subscriber must see, and finding that one first.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import websockets
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from supabase import create_client

from dashboard import live
from tests.support.phoenix import RawSocket
from tests.support.seed import ALICE, BOB
from tests.support.standin import sign_in as token_for
from tests.support.waiting import wait_until
from worker.embedded.standin import StandIn
from worker.embedded.standin.filters import Condition, ParamsError, normalise_event, parse_filter
from worker.embedded.standin.limits import RateCounter

WAIT_S = 15
SUBSCRIBED = "Subscribed to PostgreSQL"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def sql(db_url: str, statement: str, params=None):
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(statement, params)
        rows = cur.fetchall() if cur.description else None
        conn.commit()
        return rows


def insert_metric(db_url, server_id, ms=None, kind=None, message=None) -> int:
    at = datetime.now(timezone.utc) + timedelta(microseconds=uuid.uuid4().int % 10**6)
    return sql(db_url, "insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success,"
               " response_time_ms, error_kind, error_message) select id, tenant_id, %s, %s, %s, %s, %s"
               " from public.proxmox_servers where id = %s returning id",
               (at, kind is None, ms, kind, message, server_id))[0][0]


def until(predicate, what: str, timeout: float = WAIT_S):
    wait_until(predicate, timeout, interval=0.02, what=what)


class Raw(RawSocket):
    """A raw Phoenix socket whose join reply is the next frame, as the real server answers."""

    async def join(self, topic, token, bindings) -> tuple[dict, str]:
        ref = await self.send(f"realtime:{topic}", "phx_join", {
            "config": {"broadcast": {"ack": False, "self": False}, "presence": {"key": "", "enabled": False},
                       "private": False, "postgres_changes": bindings}, "access_token": token})
        reply = await self.frame()
        assert reply["event"] == "phx_reply" and reply["ref"] == ref, reply
        return reply, ref

    async def joined(self, topic, token, bindings) -> dict:
        reply, _ = await self.join(topic, token, bindings)
        assert reply["payload"]["status"] == "ok", reply
        system = await self.system()
        assert system["status"] == "ok" and system["message"] == SUBSCRIBED, system
        return reply


async def official(standin, token, bindings: dict, topic="conf"):
    """The official client with named bindings; returns (client, channel, queue of (name, payload),
    states, errors, system payloads) once the subscription is confirmed or refused."""
    client = AsyncRealtimeClient(f"{standin.url}/realtime/v1", token=standin.anon_key, auto_reconnect=True)
    await client.set_auth(token)
    got, states, errors, system = asyncio.Queue(), [], [], []
    channel = client.channel(topic)
    for name, spec in bindings.items():
        channel.on_postgres_changes(spec.get("event", "*"), lambda p, name=name: got.put_nowait((name, p)),
                                    table=spec.get("table"), schema="public", filter=spec.get("filter"))
    channel.on_system(system.append)
    await channel.subscribe(lambda state, error: (states.append(state), errors.append(error) if error else None))
    deadline = time.monotonic() + WAIT_S
    while not system and not errors[1:] and not any(s == RealtimeSubscribeStates.CHANNEL_ERROR for s in states):
        assert time.monotonic() < deadline, (states, errors)
        await asyncio.sleep(0.02)
    return client, channel, got, states, errors, system


async def next_change(got: asyncio.Queue):
    return await asyncio.wait_for(got.get(), WAIT_S)


# ------------------------------------------------------------------ join, then subscribe


def test_the_join_reply_comes_first_and_the_subscription_is_confirmed_after_it(standin, fleet, db_url):
    """realtime_channel.ex join/3 replies {postgres_changes: params + id}, then
    handle_info(:postgres_subscribe) pushes the system message "Subscribed to PostgreSQL"."""
    token = token_for(standin, ALICE)

    async def scenario():
        async with Raw(standin) as raw:
            binding = {"event": "UPDATE", "schema": "public", "table": "proxmox_servers", "filter": "name=eq.pve-alpha"}
            reply, _ = await raw.join("first", token, [binding, dict(binding)])
            echoed = reply["payload"]["response"]["postgres_changes"]
            assert [{k: v for k, v in e.items() if k != "id"} for e in echoed] == [binding, binding]
            assert echoed[0]["id"] == echoed[1]["id"]  # :erlang.phash2(params): equal params, equal id
            assert await raw.frame() == {"topic": "realtime:first", "event": "system", "ref": None, "payload": {
                "extension": "postgres_changes", "status": "ok", "message": SUBSCRIBED, "channel": "first"}}
            sql(db_url, "update public.proxmox_servers set connection_status = 'offline' where id = %s",
                (fleet.servers["pve-alpha"],))
            change = await raw.frame()
            assert change["event"] == "postgres_changes" and change["payload"]["ids"] == [echoed[0]["id"]]

    run(scenario())


def test_a_bad_filter_or_table_is_a_system_error_while_the_join_stays_ok(standin, fleet):
    """cdc_rls.ex subscription_list/1 (:malformed_subscription_params), subscriptions.ex create/5
    (:subscription_insert_failed) and realtime.subscription_check_filters (migration
    20260626120000_readd_postgrest_filter_ops.ex): the join replied ok, then a system error with the
    server's sentence; not retried by the server."""
    token = token_for(standin, ALICE)
    alpha = fleet.servers["pve-alpha"]
    cases = {
        "metrics:error_kind=between.1": 'Error parsing `filter` params: ["between", "1"]',
        "metrics:undefined": 'Error parsing `filter` params: ["undefined"]',
        "metrics:server_id=in.1,2": "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
        "no_such_table:": "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for"
                          " the given connect parameters: [event: *, schema: public, table: no_such_table, filters: [],"
                          " select: nil]",
        "tenant_members:": "Please check Realtime is enabled",   # exists, not published
        "metrics:colour=eq.red": 'filters: [{"colour", "eq", "red", false}], select: nil]. Exception: ERROR P0001'
                                 " (raise_exception) invalid column for filter colour",
        "metrics:server_id=eq.pve-alpha": "Exception: ERROR 22P02 (invalid_text_representation) invalid input"
                                          ' syntax for type uuid: "pve-alpha"',
        "metrics:server_id=in.(" + ",".join([alpha] * 101) + ")": "too many values for `in` filter. Maximum 100",
        "metrics:response_time_ms=like.1%": "operator like requires a text-compatible column type, got integer",
        "metrics:error_kind=match.(": "invalid regular expression for match filter",
        "metrics:error_kind=is.maybe": "invalid value for is filter: must be null, true, false, or unknown",
    }

    async def scenario():
        async with Raw(standin) as raw:
            for n, (case, expected) in enumerate(cases.items()):
                table, _, filt = case.partition(":")
                table = "connection_metrics" if table == "metrics" else table
                binding = {"event": "*", "schema": "public", "table": table, **({"filter": filt} if filt else {})}
                reply, _ = await raw.join(f"bad{n}", token, [binding])
                assert reply["payload"]["status"] == "ok", reply
                system = await raw.system()
                assert system["status"] == "error" and system["extension"] == "postgres_changes", system
                assert expected in system["message"], (case, system["message"])

    run(scenario())


def test_filters_parse_as_the_server_parses_them():
    """subscriptions.ex parse_filters/1 (its doctests) and action_filter/1."""
    assert parse_filter("subject=in.(hidee,ho)") == (Condition("subject", "in", "{hidee,ho}"),)
    assert parse_filter("subject=not.like.hey%") == (Condition("subject", "like", "hey%", True),)
    assert parse_filter("id=gt.0,id=lt.100") == (Condition("id", "gt", "0"), Condition("id", "lt", "100"))
    assert parse_filter('name=eq."a,b"') == (Condition("name", "eq", "a,b"),)
    assert parse_filter("   ") == ()
    with pytest.raises(ParamsError, match="empty segments"):
        parse_filter("id=eq.1,,id=eq.2")
    assert [normalise_event({"event": e}) for e in ("insert", "Update", "DELETE", "*", "bogus", None)] == \
        ["INSERT", "UPDATE", "DELETE", "*", "*", "*"]


def test_every_operator_and_not_and_comma_select_what_postgres_would(standin, fleet, db_url):
    """subscriptions.ex @filter_types and realtime.check_equality_op / is_visible_through_filters
    (migration 20260626120000_readd_postgrest_filter_ops.ex): a comparison with NULL never passes,
    except `is` and `isdistinct`."""
    alpha = fleet.servers["pve-alpha"]
    bindings = {
        "like": "error_kind=like.t%", "ilike": "error_kind=ilike.T%", "is": "error_kind=is.null",
        "notis": "error_kind=not.is.null", "match": "error_kind=match.^ti", "imatch": "error_kind=imatch.^TL",
        "isdistinct": "error_kind=isdistinct.timeout", "notin": "error_kind=not.in.(timeout)",
        "noteq": "error_kind=not.eq.tls", "and": "error_kind=like.t%,error_kind=neq.tls",
    }

    async def scenario():
        client, _, got, *_ = await official(standin, token_for(standin, ALICE), {
            name: {"event": "INSERT", "table": "connection_metrics", "filter": f"server_id=eq.{alpha},{f}"}
            for name, f in bindings.items()})
        for ms, kind in ((10, None), (None, "timeout"), (None, "tls")):
            insert_metric(db_url, alpha, ms, kind)
        expected = {"like": ["timeout", "tls"], "ilike": ["timeout", "tls"], "is": [None], "notis": ["timeout", "tls"],
                    "match": ["timeout"], "imatch": ["tls"], "isdistinct": [None, "tls"], "notin": ["tls"],
                    "noteq": ["timeout"], "and": ["timeout"]}
        seen: dict = {}
        for _ in range(sum(map(len, expected.values()))):
            name, payload = await next_change(got)
            seen.setdefault(name, []).append(payload["data"]["record"]["error_kind"])
        assert seen == expected
        await client.close()

    run(scenario())


def test_event_names_are_normalised_as_the_server_does(standin, fleet, db_url):
    """subscriptions.ex action_filter/1: the event is upper-cased; an unknown one means every event."""
    token = token_for(standin, ALICE)
    alpha = fleet.servers["pve-alpha"]

    async def scenario():
        async with Raw(standin) as raw:
            reply = await raw.joined("events", token, [
                {"event": "update", "schema": "public", "table": "connection_metrics"},
                {"event": "whatever", "schema": "public", "table": "connection_metrics"}])
            lower, unknown = (b["id"] for b in reply["payload"]["response"]["postgres_changes"])
            metric = insert_metric(db_url, alpha, 5)
            sql(db_url, "update public.connection_metrics set response_time_ms = 6 where id = %s", (metric,))
            first, second = await raw.frame(), await raw.frame()
            assert (first["payload"]["data"]["type"], first["payload"]["ids"]) == ("INSERT", [unknown])
            assert (second["payload"]["data"]["type"], sorted(second["payload"]["ids"])) == \
                ("UPDATE", sorted([lower, unknown]))

    run(scenario())


# ------------------------------------------------------------- replica identity, old rows


def test_a_delete_carries_the_replica_identity_and_filters_on_other_columns_fail_closed(standin, fleet, db_url):
    """realtime.apply_rls / is_visible_through_filters (migration 20260709120000_fix_apply_rls_filter_role_leak.ex):
    a DELETE is filtered on the old row's identity columns only. proxmox_servers keeps the default
    identity; connection_metrics is REPLICA IDENTITY FULL (migration 20261130000200), so the
    dashboard's `server_id=eq.…` sees its deletes."""
    alpha, beta = fleet.servers["pve-alpha"], fleet.servers["pve-beta"]

    async def scenario():
        client, _, got, *_ = await official(standin, token_for(standin, ALICE), {
            "servers": {"event": "DELETE", "table": "proxmox_servers", "filter": "name=eq.pve-alpha"},
            "metrics": {"event": "DELETE", "table": "connection_metrics", "filter": f"server_id=eq.{beta}"}})
        metric = insert_metric(db_url, beta, 7)
        sql(db_url, "delete from public.connection_metrics where id = %s", (metric,))
        name, payload = await next_change(got)
        assert name == "metrics" and payload["data"]["old_record"]["id"] == metric
        assert payload["data"]["old_record"].keys() == {"id", "scheduled_at"}  # RLS: the key only
        # Server alpha deleted: its DELETE never matches `name=eq.…` (name is not in the identity);
        # the next change the subscriber gets is beta's next metric deletion.
        sql(db_url, "delete from public.proxmox_servers where id = %s", (alpha,))
        sentinel = insert_metric(db_url, beta, 8)
        sql(db_url, "delete from public.connection_metrics where id = %s", (sentinel,))
        name, payload = await next_change(got)
        assert name == "metrics" and payload["data"]["old_record"]["id"] == sentinel
        await client.close()

    run(scenario())


def test_an_update_old_record_is_the_key_unless_the_identity_is_full(standin, fleet, db_url):
    """apply_rls "old_record" for UPDATE: the identity columns (wal2json `identity`)."""
    alpha = fleet.servers["pve-alpha"]

    async def scenario():
        client, _, got, *_ = await official(standin, token_for(standin, ALICE), {
            "servers": {"event": "UPDATE", "table": "proxmox_servers"},
            "metrics": {"event": "UPDATE", "table": "connection_metrics"}})
        sql(db_url, "update public.proxmox_servers set connection_status = 'offline' where id = %s", (alpha,))
        metric = insert_metric(db_url, alpha, 7)
        sql(db_url, "update public.connection_metrics set response_time_ms = 8 where id = %s", (metric,))
        _, servers = await next_change(got)
        _, metrics = await next_change(got)
        assert servers["data"]["old_record"] == {"id": alpha}
        assert metrics["data"]["old_record"]["response_time_ms"] == 7 and metrics["data"]["old_record"]["id"] == metric
        assert metrics["data"]["old_record"]["server_id"] == alpha
        await client.close()

    run(scenario())


def test_large_unchanged_values_are_missing_from_an_update_unless_the_identity_is_full(standin, fleet, db_url):
    """apply_rls "if unchanged toast, get column name and value from old record" (migration
    20230308225145_output_full_record_when_unchanged_toast.ex): wal2json leaves out unchanged TOAST
    values; only a FULL identity brings them back."""
    alpha = fleet.servers["pve-alpha"]
    big = os.urandom(6000).hex()   # incompressible: stored out of line

    async def scenario():
        client, _, got, *_ = await official(standin, token_for(standin, ALICE), {
            "servers": {"event": "UPDATE", "table": "proxmox_servers"},
            "metrics": {"event": "UPDATE", "table": "connection_metrics"}})
        sql(db_url, "update public.proxmox_servers set health_check_error = %s where id = %s", (big, alpha))
        sql(db_url, "update public.proxmox_servers set connection_status = 'offline' where id = %s", (alpha,))
        metric = insert_metric(db_url, alpha, None, "timeout", big)
        sql(db_url, "update public.connection_metrics set response_time_ms = 9 where id = %s", (metric,))
        changed = (await next_change(got))[1]["data"]["record"]
        unchanged = (await next_change(got))[1]["data"]["record"]
        full = (await next_change(got))[1]["data"]["record"]
        assert changed["health_check_error"] == big                      # changed: carried
        assert "health_check_error" not in unchanged and unchanged["connection_status"] == "offline"
        assert full["error_message"] == big and full["response_time_ms"] == 9   # FULL: from the old row
        await client.close()

    run(scenario())


def test_a_change_over_one_megabyte_arrives_cut_with_the_413_error(standin, fleet, db_url):
    """apply_rls max_record_bytes (db_settings.ex poll_max_record_bytes 1,048,576): only values of
    at most 64 bytes, and errors ["Error 413: Payload Too Large"] (replication_poller.ex)."""
    alpha = fleet.servers["pve-alpha"]

    async def scenario():
        client, _, got, *_ = await official(standin, token_for(standin, ALICE), {
            "servers": {"event": "UPDATE", "table": "proxmox_servers"}})
        sql(db_url, "update public.proxmox_servers set health_check_error = %s where id = %s",
            (os.urandom(600_000).hex(), alpha))
        data = (await next_change(got))[1]["data"]
        assert data["errors"] == ["Error 413: Payload Too Large"]
        assert "health_check_error" not in data["record"] and data["record"]["id"] == alpha
        assert data["record"]["name"] == "pve-alpha"
        await client.close()

    run(scenario())


# ------------------------------------------------------------ row-level security on delete


def test_a_delete_reaches_other_tenants_with_its_key_only(standin, fleet, db_url):
    """apply_rls: "if RLS enabled, we can't secure deletes so filter to pkey" — RLS is not applied
    to a DELETE; only the key leaks. Every published table has RLS on and a surrogate key — plus,
    on the partitioned connection_metrics, the partition key scheduled_at, which Postgres requires
    in a partitioned table's primary key (migration 20261130001000); a poll's time says nothing
    the surrogate id did not already order."""
    alpha = fleet.servers["pve-alpha"]
    published = sql(db_url, "select c.relname, c.relrowsecurity from pg_publication_tables p join pg_class c"
                    " on c.oid = format('%%I.%%I', p.schemaname, p.tablename)::regclass"
                    " where p.pubname = 'supabase_realtime'", ())
    assert published and all(rls for _, rls in published), published
    keys = sql(db_url, "select c.relname, array_agg(a.attname::text) from pg_publication_tables p"
               " join pg_class c on c.oid = format('%%I.%%I', p.schemaname, p.tablename)::regclass"
               " join pg_index i on i.indrelid = c.oid and i.indisprimary"
               " join pg_attribute a on a.attrelid = c.oid and a.attnum = any(i.indkey)"
               " where p.pubname = 'supabase_realtime' group by c.relname", ())
    partitioned = {"connection_metrics": ["id", "scheduled_at"]}
    assert all(sorted(cols) == partitioned.get(name, ["id"]) for name, cols in keys), keys

    async def scenario():
        bob, _, got, *_ = await official(standin, token_for(standin, BOB), {"m": {"table": "connection_metrics"}})
        metric = insert_metric(db_url, alpha, 3, message=None)
        sql(db_url, "delete from public.connection_metrics where id = %s", (metric,))
        data = (await next_change(got))[1]["data"]   # acme's insert never came: RLS; its delete did
        assert data["type"] == "DELETE" and set(data["old_record"]) == {"id", "scheduled_at"}
        assert data["old_record"]["id"] == metric
        await bob.close()

    run(scenario())


def test_a_role_that_may_not_select_the_key_gets_401_events(standin, fleet, db_url):
    """apply_rls "Error 401: Unauthorized" when the role may not select the primary key (anon has
    no grant on active_operations). Raw frames: the official 2.34 client cannot parse this payload
    (commit_timestamp is null) and drops it — as it would from Supabase."""
    async def scenario():
        async with Raw(standin) as raw:
            await raw.joined("anon", standin.anon_key,
                             [{"event": "INSERT", "schema": "public", "table": "active_operations"}])
            sql(db_url, "insert into public.active_operations (tenant_id, server_id, operation_type, target_type,"
                " target, conflict_key) select tenant_id, id, 'ssh_test', 'node', 'pve1', 'ssh'"
                " from public.proxmox_servers where id = %s", (fleet.servers["pve-alpha"],))
            data = (await raw.frame())["payload"]["data"]
            assert data == {"columns": [], "commit_timestamp": None, "errors": ["Error 401: Unauthorized"],
                            "schema": "public", "table": "active_operations", "type": "INSERT", "record": {}}

    run(scenario())


# --------------------------------------------------------------------- tokens and limits


def test_an_access_token_refresh_gets_no_reply_and_a_second_confirmation(standin, fleet, db_url, pw_secrets):
    """realtime_channel.ex handle_in("access_token"): {:noreply}; a new valid token resubscribes after
    1–3 s (postgres_subscribe/0: "Subscribed to PostgreSQL" again); an expired one shuts the channel
    (shutdown_response/2: system error, then phx_close)."""
    import jwt
    first, second = token_for(standin, ALICE), token_for(standin, ALICE)
    claims = jwt.decode(second, options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, pw_secrets["jwt_secret"], algorithm="HS256")

    async def scenario():
        async with Raw(standin) as raw:
            await raw.joined("tok", first, [{"event": "*", "schema": "public", "table": "proxmox_servers"}])
            await raw.send("realtime:tok", "access_token", {"access_token": first})    # the same token: nothing
            fresh = jwt.encode({**claims, "iat": claims["iat"] - 1}, pw_secrets["jwt_secret"], algorithm="HS256")
            await raw.send("realtime:tok", "access_token", {"access_token": fresh})
            beat = await raw.send("phoenix", "heartbeat", {})
            frame = await raw.frame()
            assert frame["ref"] == beat, frame     # no reply to either access_token
            again = await raw.system()
            assert again["status"] == "ok" and again["message"] == SUBSCRIBED
            await raw.send("realtime:tok", "access_token", {"access_token": expired})
            shut = await raw.frame()
            assert shut["event"] == "system" and shut["payload"]["status"] == "error"
            assert shut["payload"]["extension"] == "system" and "Token has expired" in shut["payload"]["message"]
            assert (await raw.frame())["event"] == "phx_close"

    run(scenario())


def test_a_client_may_hold_100_channels(standin, fleet):
    """realtime_channel.ex limit_channels/2 (TENANT_MAX_CHANNELS_PER_CLIENT, 100)."""
    token = token_for(standin, ALICE)

    async def scenario():
        async with Raw(standin) as raw:
            for n in range(100):
                reply, _ = await raw.join(f"c{n}", token, [])
                assert reply["payload"]["status"] == "ok", (n, reply)
            reply, _ = await raw.join("c100", token, [])
            assert reply["payload"] == {"status": "error", "response": {
                "reason": "ChannelRateLimitReached: Too many channels"}}

    run(scenario())


def test_joins_over_the_quota_are_refused_and_the_socket_disconnected(db_url, pw_secrets, fleet):
    """realtime_channel.ex limit_joins/2 and tenants.ex joins_per_second_rate/2 (a RateCounter:
    average of the last ticks, checked at each tick). Tick shortened for the test."""
    standin = StandIn(db_url, pw_secrets["jwt_secret"], realtime_limits={"joins_per_s": 5, "tick_s": 0.2}).start()
    try:
        token = token_for(standin, ALICE)

        async def scenario():
            async with Raw(standin) as raw:
                deadline = time.monotonic() + WAIT_S
                while True:
                    reply, _ = await raw.join("again", token, [])
                    if reply["payload"]["status"] == "error":
                        break
                    assert time.monotonic() < deadline, "joins were never limited"
                assert reply["payload"]["response"] == {"reason": "ClientJoinRateLimitReached: Too many joins per second"}
                with pytest.raises(websockets.ConnectionClosed):
                    await raw.frame()

        run(scenario())
    finally:
        standin.stop()


def test_the_rate_counter_averages_over_a_minute_and_acts_only_at_ticks():
    """rate_counter.ex handle_info(:tick) and maybe_trigger_limit/1."""
    now = [0.0]
    counter = RateCounter(100, clock=lambda: now[0])
    counter.add(1000)
    assert not counter.is_triggered()            # a burst passes until the next tick
    now[0] = 5.0
    assert counter.is_triggered() and counter.avg == 200.0
    now[0] = 10.0
    assert counter.is_triggered() and counter.avg == 100.0   # at the limit: still over
    now[0] = 15.0
    assert not counter.is_triggered() and round(counter.avg, 2) == 66.67


def test_over_the_events_quota_changes_are_skipped_silently_and_the_dashboard_reconciles(db_url, pw_secrets, fleet):
    """replication_poller.ex handle_list_changes_result/4: while db_events_per_second_rate is
    triggered, changes are skipped without a word; the channel stays joined. dashboard/live.py's
    live_mark() still moves, so a Live page re-reads within PROXWATCH_DASHBOARD_RECONCILE."""
    standin = StandIn(db_url, pw_secrets["jwt_secret"], realtime_limits={"events_per_s": 1, "tick_s": 0.3}).start()
    rt = standin.realtime
    alpha = fleet.servers["pve-alpha"]
    try:
        client = create_client(standin.url, standin.anon_key)
        client.auth.sign_in_with_password({"email": ALICE[0], "password": ALICE[1]})
        feed = live.watch(client, [("proxmox_servers", None)])
        until(lambda: feed.connected, "the feed is live")

        async def scenario():
            sub, _, got, states, errors, _ = await official(standin, client.auth.get_session().access_token,
                                                            {"m": {"event": "INSERT", "table": "connection_metrics"}})
            sql(db_url, "insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success)"
                " select id, tenant_id, now() - n * interval '1 second', true from public.proxmox_servers,"
                " generate_series(1, 20) n where id = %s", (alpha,))
            assert len({(await next_change(got))[1]["data"]["record"]["id"] for _ in range(20)}) == 20
            await asyncio.to_thread(until, rt.changes.quota.is_triggered, "the quota triggers")
            delivered, dropped, version = rt.changes.delivered, rt.changes.dropped, feed.version
            before = live.mark(client, feed)
            sql(db_url, "update public.proxmox_servers set connection_status = 'offline' where id = %s", (alpha,))
            await asyncio.to_thread(until, lambda: rt.changes.dropped > dropped, "the change is skipped")
            assert rt.changes.delivered == delivered and feed.version == version and got.empty()
            assert states[-1] == RealtimeSubscribeStates.SUBSCRIBED and feed.status == "Live"   # nobody is told
            assert live.mark(client, feed) != before        # what the dashboard's reconcile sees
            await asyncio.to_thread(until, lambda: not rt.changes.quota.is_triggered(), "the quota releases", 30)
            insert_metric(db_url, alpha, 4)
            assert (await next_change(got))[1]["data"]["record"]["response_time_ms"] == 4
            await sub.close()

        run(scenario())
        live.forget(client)
    finally:
        standin.stop()


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_rereads_on_the_confirmation_and_shows_a_refused_subscription_as_an_error(standin, fleet):
    """realtime_channel.ex: the join reply, then "Subscribed to PostgreSQL" (dashboard/live.py bumps the
    version there, once); a refused subscription (cdc_rls.ex :subscription_insert_failed) is an
    error on the page, and the channel is left instead of rejoining in a loop."""
    client = create_client(standin.url, standin.anon_key)
    client.auth.sign_in_with_password({"email": ALICE[0], "password": ALICE[1]})
    good = live.watch(client, [("proxmox_servers", None)])
    bad = live.watch(client, [("tenant_members", None)])
    until(lambda: good.connected, "the feed is confirmed")
    assert good.version == 1 and good.status == "Live"
    until(lambda: bad.status == live.UNAVAILABLE, "the refusal is shown")
    assert "Please check Realtime is enabled" in bad.error
    until(lambda: bad.channel is None, "the refused channel is left")
    assert bad.status == live.UNAVAILABLE and "role='alert'" in live.status_html(bad)
    live.forget(client)
