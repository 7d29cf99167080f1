"""The embedded Realtime, driven by the official `realtime` / `supabase` async clients over real
sockets against the stand-in and a real, migrated database: what changes arrive, in Supabase's
shape, to whom (filters, publication, row-level security), and what happens when tokens expire,
the stand-in restarts, the database restarts or a subscriber vanishes.

Negative checks never sleep: changes arrive in commit order, so "nothing of X arrived" is checked
by committing X, then a change the subscriber must see, and finding that one first.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import jwt
import psycopg
import pytest
import websockets
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from supabase import acreate_client

from tests.support.seed import ALICE, BOB
from tests.support.standin import sign_in as token_for
from worker import admin, db
from worker.embedded.standin import StandIn

WAIT_S = 10


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


@dataclass
class Sub:
    """One channel of one client, with every event it received, per binding name."""
    client: AsyncRealtimeClient
    channel: object
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    states: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    system: list = field(default_factory=list)

    async def next(self, timeout: float = WAIT_S):
        return await asyncio.wait_for(self.events.get(), timeout)

    async def states_after(self, since: int, *wanted: RealtimeSubscribeStates, timeout: float = WAIT_S * 3):
        """Wait until the channel went through the wanted states, in order, after states[since]."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rest = iter(self.states[since:])
            if all(any(s == w for s in rest) for w in wanted):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"channel states {wanted} not reached: {self.states} {self.errors}")

    async def confirmed(self, times: int = 1, timeout: float = WAIT_S * 3):
        """Wait for the n-th "Subscribed to PostgreSQL": changes flow from there on (not from the join)."""
        deadline = time.monotonic() + timeout
        while sum(p.message == "Subscribed to PostgreSQL" for p in self.system) < times:
            assert time.monotonic() < deadline, (self.states, self.errors, self.system)
            await asyncio.sleep(0.02)

    async def close(self):
        await self.client.close()


async def subscribe(standin, token: str | None, bindings: dict[str, dict], topic: str = "test",
                    expect: RealtimeSubscribeStates | None = RealtimeSubscribeStates.SUBSCRIBED) -> Sub:
    """A new socket and one channel with the named bindings {name: {event, table, filter}}."""
    client = AsyncRealtimeClient(f"{standin.url}/realtime/v1", token=standin.anon_key, auto_reconnect=True,
                                 initial_backoff=0.3, max_retries=8)
    if token:
        await client.set_auth(token)
    channel = client.channel(topic)
    sub = Sub(client, channel)
    for name, spec in bindings.items():
        channel.on_postgres_changes(spec.get("event", "*"),
                                    lambda payload, name=name: sub.events.put_nowait((name, payload)),
                                    table=spec.get("table"), schema=spec.get("schema"), filter=spec.get("filter"))
    channel.on_system(lambda payload: sub.system.append(payload))

    def on_state(state, error):
        sub.states.append(state)
        if error:
            sub.errors.append(str(error))
    await channel.subscribe(on_state)
    if expect is not None:
        assert sub.states and sub.states[-1] == expect, (sub.states, sub.errors)
    if expect == RealtimeSubscribeStates.SUBSCRIBED and bindings:
        # As on Supabase, changes flow from the "Subscribed to PostgreSQL" system message on, not the join.
        deadline = time.monotonic() + WAIT_S
        while not any(p.message == "Subscribed to PostgreSQL" for p in sub.system):
            assert time.monotonic() < deadline and not sub.errors, (sub.states, sub.errors)
            await asyncio.sleep(0.02)
    return sub


async def execute(db_url: str, statement: str, params=None):
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(statement, params)
        rows = await cur.fetchall() if cur.description else None
        await conn.commit()
        return rows


async def set_status(db_url: str, server_id: str, status: str):
    await execute(db_url, "update public.proxmox_servers set connection_status = %s where id = %s",
                  (status, server_id))


async def insert_metric(db_url: str, server_id: str, ms: int | None, kind: str | None = None, at=None) -> int:
    rows = await execute(
        db_url,
        "insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success, response_time_ms,"
        " error_kind, error_message) select id, tenant_id, %s, %s, %s, %s, %s from public.proxmox_servers"
        " where id = %s returning id",
        (at or datetime.now(timezone.utc) + timedelta(microseconds=uuid.uuid4().int % 10**6), kind is None,
         ms, kind, None if kind is None else "it failed", server_id))
    return rows[0][0]


# ---------------------------------------------------------------------------------------------


def test_insert_update_delete_arrive_in_supabases_shape(standin, fleet, db_url, secret_key):
    async def scenario():
        sub = await subscribe(standin, token_for(standin, ALICE), {"servers": {"table": "proxmox_servers"}})
        for _ in range(200):  # the system message follows the join reply
            if sub.system:
                break
            await asyncio.sleep(0.02)
        assert sub.system and sub.system[0].message == "Subscribed to PostgreSQL"
        assert sub.system[0].extension == "postgres_changes" and sub.system[0].channel == "test"
        binding_id = sub.channel.postgres_changes_callbacks[0].id
        assert isinstance(binding_id, int) and binding_id > 0

        # Given a new server in acme (as `proxwatch servers add` does)
        with db.connect(db_url) as conn:
            from worker.crypto import Box
            row = admin.add_server(conn, Box(secret_key), admin.ServerInput(
                name="pve-new", url="https://new.acme.test:8006", token="root@pam!m=1", tenant="acme"))
        new_id = str(row["id"])
        name, payload = await sub.next()
        data = payload["data"]
        assert name == "servers" and payload["ids"] == [binding_id]
        assert (data["type"], data["schema"], data["table"], data["errors"]) == ("INSERT", "public", "proxmox_servers", None)
        assert data["record"]["id"] == new_id and data["record"]["name"] == "pve-new"
        assert data["record"]["connection_status"] == "unknown" and data["record"]["poll_interval_s"] == 10
        assert "old_record" not in data
        columns = {c["name"]: c["type"] for c in data["columns"]}
        assert columns["id"] == "uuid" and columns["connection_status"] == "connection_status"
        assert columns["poll_interval_s"] == "int4" and columns["last_health_check_at"] == "timestamptz"
        stamp = datetime.strptime(data["commit_timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 30

        # When its status changes
        await set_status(db_url, new_id, "offline")
        _, payload = await sub.next()
        data = payload["data"]
        assert data["type"] == "UPDATE" and data["record"]["connection_status"] == "offline"
        # With row-level security on, the old record carries the primary key only, as on Supabase.
        assert data["old_record"] == {"id": new_id}
        assert data["record"]["created_at"].endswith("+00:00")

        # When it is removed
        await execute(db_url, "delete from public.proxmox_servers where id = %s", (new_id,))
        _, payload = await sub.next()
        data = payload["data"]
        assert data["type"] == "DELETE" and data["old_record"] == {"id": new_id} and "record" not in data
        await sub.close()

    run(scenario())


def test_event_bindings_receive_only_their_event(standin, fleet, db_url):
    async def scenario():
        token = token_for(standin, ALICE)
        sub = await subscribe(standin, token, {
            "inserts": {"event": "INSERT", "table": "connection_metrics"},
            "updates": {"event": "UPDATE", "table": "proxmox_servers"},
            "deletes": {"event": "DELETE", "table": "connection_metrics"},
        })
        alpha = fleet.servers["pve-alpha"]
        metric = await insert_metric(db_url, alpha, 33)
        await set_status(db_url, alpha, "degraded")
        await execute(db_url, "delete from public.connection_metrics where id = %s", (metric,))
        got = [(await sub.next()) for _ in range(3)]
        assert [(n, p["data"]["type"]) for n, p in got] == [("inserts", "INSERT"), ("updates", "UPDATE"),
                                                            ("deletes", "DELETE")]
        assert got[0][1]["data"]["record"]["id"] == metric and got[2][1]["data"]["old_record"].keys() == {"id", "scheduled_at"}  # the key: id + partition key
        await sub.close()

    run(scenario())


def test_each_filter_operator_selects_the_rows_postgres_would(standin, fleet, db_url):
    alpha, beta = fleet.servers["pve-alpha"], fleet.servers["pve-beta"]
    bindings = {
        "eq": {"table": "connection_metrics", "filter": "response_time_ms=eq.50"},
        "neq": {"table": "connection_metrics", "filter": "response_time_ms=neq.50"},
        "lt": {"table": "connection_metrics", "filter": "response_time_ms=lt.50"},
        "lte": {"table": "connection_metrics", "filter": "response_time_ms=lte.50"},
        "gt": {"table": "connection_metrics", "filter": "response_time_ms=gt.50"},
        "gte": {"table": "connection_metrics", "filter": "response_time_ms=gte.50"},
        "in": {"table": "connection_metrics", "filter": "error_kind=in.(timeout,refused)"},
        "server": {"table": "connection_metrics", "filter": f"server_id=eq.{beta.upper()}"},
        "and": {"table": "connection_metrics", "filter": f"server_id=eq.{alpha},response_time_ms=gte.60"},
        # Enum order, not alphabetical: online < degraded < offline < unknown.
        "enum": {"table": "proxmox_servers", "filter": "connection_status=gt.degraded"},
    }

    async def scenario():
        sub = await subscribe(standin, token_for(standin, ALICE), bindings)
        ids = {}
        ids[40] = await insert_metric(db_url, alpha, 40)
        ids[50] = await insert_metric(db_url, alpha, 50)
        ids[60] = await insert_metric(db_url, alpha, 60)
        ids["timeout"] = await insert_metric(db_url, beta, None, "timeout")
        ids["tls"] = await insert_metric(db_url, alpha, None, "tls")
        await set_status(db_url, alpha, "online")      # not > degraded
        await set_status(db_url, beta, "unknown")      # > degraded
        seen: dict[str, list] = {}
        expected = 13
        for _ in range(expected):
            name, payload = await sub.next()
            record = payload["data"]["record"]
            seen.setdefault(name, []).append(record.get("response_time_ms") or record.get("error_kind")
                                             if payload["data"]["table"] == "connection_metrics"
                                             else record["connection_status"])
        assert seen == {"eq": [50], "neq": [40, 60], "lt": [40], "lte": [40, 50], "gt": [60], "gte": [50, 60],
                        "in": ["timeout"], "server": ["timeout"], "and": [60], "enum": ["unknown"]}, seen
        with pytest.raises(asyncio.TimeoutError):  # nothing more is on its way
            await sub.next(timeout=0.5)
        await sub.close()

    run(scenario())


def test_a_table_outside_the_publication_never_streams(standin, fleet, db_url):
    async def scenario():
        token = token_for(standin, ALICE)
        # (Subscribing to it is a system error: tests/integration/test_realtime_conformance.py.)
        # A binding on every table of the schema gets the published ones only: the metric insert,
        # never the hourly rollup row the same insert updates (connection_metrics_hourly is not published).
        sub = await subscribe(standin, token, {"all": {"table": "*"}})
        metric = await insert_metric(db_url, fleet.servers["pve-alpha"], 21)
        await set_status(db_url, fleet.servers["pve-alpha"], "offline")
        got = [(await sub.next())[1]["data"] for _ in range(2)]
        assert [(d["table"], d["type"]) for d in got] == [("connection_metrics", "INSERT"), ("proxmox_servers", "UPDATE")]
        assert got[0]["record"]["id"] == metric
        await sub.close()

    run(scenario())


def test_a_subscriber_of_another_tenant_receives_nothing_of_acme(standin, fleet, db_url, secret_key):
    async def scenario():
        bindings = {"servers": {"table": "proxmox_servers"}, "metrics": {"table": "connection_metrics"}}
        alice = await subscribe(standin, token_for(standin, ALICE), bindings)
        bob = await subscribe(standin, token_for(standin, BOB), bindings)
        alpha, gamma = fleet.servers["pve-alpha"], fleet.servers["pve-gamma"]
        # acme changes: an update, a metric. (A delete reaches every subscriber with its key only, as on
        # Supabase: tests/integration/test_realtime_conformance.py.)
        await set_status(db_url, alpha, "offline")
        await insert_metric(db_url, alpha, 12)
        # Then one globex change, which bob must see first.
        await set_status(db_url, gamma, "online")
        name, payload = await bob.next()
        assert payload["data"]["record"]["id"] == gamma, payload
        got = [(await alice.next())[1]["data"] for _ in range(2)]
        assert [(d["table"], d["type"]) for d in got] == [("proxmox_servers", "UPDATE"), ("connection_metrics", "INSERT")]
        # And alice never sees gamma: her next change is her own.
        await set_status(db_url, alpha, "online")
        assert (await alice.next())[1]["data"]["record"]["id"] == alpha
        await alice.close()
        await bob.close()

    run(scenario())


def test_delivery_follows_row_level_security_as_membership_changes(standin, fleet, db_url):
    """The same answer as RLS: a user in both tenants sees both; once removed from globex, nothing
    more of it; re-added, it streams again — compared with what the user reads through the API."""
    with db.connect(db_url) as conn:
        admin.add_user(conn, "carol@both.test", "carol-password-1", "acme", "viewer")
        conn.execute("insert into public.tenant_members (tenant_id, user_id, role) select %s, id, 'viewer'"
                     " from auth.users where email = 'carol@both.test'", (fleet.tenants["globex"],))
        conn.commit()
    carol = ("carol@both.test", "carol-password-1")
    alpha, gamma = fleet.servers["pve-alpha"], fleet.servers["pve-gamma"]

    async def visible_through_api(token):
        client = await acreate_client(standin.url, standin.anon_key)
        client.postgrest.auth(token)
        return {r["id"] for r in (await client.rpc("fleet_overview", {}).execute()).data}

    async def scenario():
        token = token_for(standin, carol)
        sub = await subscribe(standin, token, {"servers": {"table": "proxmox_servers"}})
        assert await visible_through_api(token) >= {alpha, gamma}
        await set_status(db_url, gamma, "offline")
        assert (await sub.next())[1]["data"]["record"]["id"] == gamma
        # Removed from globex: gamma leaves the API's answer and the stream at once.
        await execute(db_url, "delete from public.tenant_members where tenant_id = %s and user_id ="
                      " (select id from auth.users where email = 'carol@both.test')", (fleet.tenants["globex"],))
        assert gamma not in await visible_through_api(token)
        await set_status(db_url, gamma, "online")
        await set_status(db_url, alpha, "offline")
        assert (await sub.next())[1]["data"]["record"]["id"] == alpha
        # Back in globex: streams again.
        await execute(db_url, "insert into public.tenant_members (tenant_id, user_id) select %s, id from auth.users"
                      " where email = 'carol@both.test'", (fleet.tenants["globex"],))
        await set_status(db_url, gamma, "degraded")
        assert (await sub.next())[1]["data"]["record"]["id"] == gamma
        await sub.close()

    run(scenario())


def test_the_service_role_sees_every_tenant(standin, fleet, db_url):
    async def scenario():
        service = await subscribe(standin, standin.service_key, {"servers": {"table": "proxmox_servers"}})
        await set_status(db_url, fleet.servers["pve-gamma"], "online")
        await set_status(db_url, fleet.servers["pve-alpha"], "offline")
        ids = [(await service.next())[1]["data"]["record"]["id"] for _ in range(2)]
        assert ids == [fleet.servers["pve-gamma"], fleet.servers["pve-alpha"]]
        await service.close()

    run(scenario())


def test_bad_tokens_get_an_error_reply(standin, fleet, pw_secrets):
    now = int(time.time())
    secret = pw_secrets["jwt_secret"]
    expired = jwt.encode({"sub": str(uuid.uuid4()), "role": "authenticated", "iat": now - 7200, "exp": now - 60},
                         secret, algorithm="HS256")
    forged = jwt.encode({"role": "service_role", "iat": now, "exp": now + 3600}, "x" * 48, algorithm="HS256")
    no_exp = jwt.encode({"role": "authenticated", "sub": str(uuid.uuid4())}, secret, algorithm="HS256")
    odd_role = jwt.encode({"role": "postgres", "exp": now + 60}, secret, algorithm="HS256")

    async def refused(token, bindings):
        sub = await subscribe(standin, token, bindings, expect=RealtimeSubscribeStates.CHANNEL_ERROR)
        await sub.close()
        return json.loads(sub.errors[0])["reason"]

    async def scenario():
        servers = {"s": {"table": "proxmox_servers"}}
        assert (await refused(expired, servers)).startswith("InvalidJWTToken: Token has expired")
        assert "signature" in await refused(forged, servers)
        assert "exp" in await refused(no_exp, servers)
        assert "'postgres' is not one of" in await refused(odd_role, servers)
        # (Unknown tables and bad filters: a system error after the join, as on Supabase —
        # tests/integration/test_realtime_conformance.py.)

    run(scenario())


def test_an_expiring_token_closes_the_channel_unless_refreshed(standin, fleet, db_url, pw_secrets):
    user_id = None
    with db.connect(db_url) as conn:
        user_id = str(conn.execute("select id from auth.users where email = %s", (ALICE[0],)).fetchone()["id"])

    def token(ttl):
        now = int(time.time())
        return jwt.encode({"sub": user_id, "role": "authenticated", "aud": "authenticated", "iat": now,
                           "exp": now + ttl}, pw_secrets["jwt_secret"], algorithm="HS256")

    async def scenario():
        servers = {"s": {"table": "proxmox_servers"}}
        lapsing = await subscribe(standin, token(2), servers, topic="lapsing")
        refreshed = await subscribe(standin, token(2), servers, topic="refreshed")
        await refreshed.client.set_auth(token(3600))   # sends access_token on the joined channel
        await lapsing.states_after(1, RealtimeSubscribeStates.CLOSED, timeout=10)
        assert any("Token has expired" in e for e in lapsing.errors), lapsing.errors
        await asyncio.sleep(1)  # past the first token's expiry, for the refreshed channel too
        await set_status(db_url, fleet.servers["pve-alpha"], "offline")
        assert (await refreshed.next())[1]["data"]["record"]["connection_status"] == "offline"
        await lapsing.close()
        await refreshed.close()

    run(scenario())


def test_the_protocol_frames_heartbeat_leave_and_unknown_topics(standin, fleet, db_url):
    """Raw frames, as the client library parses them: replies carry the ref, changes carry ref null."""
    token = token_for(standin, ALICE)

    async def scenario():
        url = f"ws://127.0.0.1:{standin.port}/realtime/v1/websocket?apikey={standin.anon_key}&vsn=1.0.0"
        async with websockets.connect(url) as ws:
            async def frame():
                return json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            await ws.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}))
            assert await frame() == {"topic": "phoenix", "event": "phx_reply", "ref": "1",
                                     "payload": {"status": "ok", "response": {}}}
            join = {"config": {"broadcast": {"ack": False, "self": False}, "presence": {"key": "", "enabled": False},
                               "private": False,
                               "postgres_changes": [{"event": "UPDATE", "schema": "public", "table": "proxmox_servers"}]},
                    "access_token": token}
            await ws.send(json.dumps({"topic": "realtime:raw", "event": "phx_join", "payload": join, "ref": "2",
                                      "join_ref": "2"}))
            reply = await frame()
            assert reply["event"] == "phx_reply" and reply["ref"] == "2" and reply["payload"]["status"] == "ok"
            [binding] = reply["payload"]["response"]["postgres_changes"]
            assert {k: binding[k] for k in ("event", "schema", "table")} == {
                "event": "UPDATE", "schema": "public", "table": "proxmox_servers"}
            system = await frame()
            assert system == {"topic": "realtime:raw", "event": "system", "ref": None, "payload": {
                "extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL",
                "channel": "raw"}}
            await set_status(db_url, fleet.servers["pve-alpha"], "offline")
            change = await frame()
            assert change["event"] == "postgres_changes" and change["ref"] is None
            assert change["payload"]["ids"] == [binding["id"]]
            await ws.send(json.dumps({"topic": "realtime:raw", "event": "phx_leave", "payload": {}, "ref": "3"}))
            assert (await frame())["payload"]["status"] == "ok"
            await ws.send(json.dumps({"topic": "realtime:raw", "event": "access_token",
                                      "payload": {"access_token": token}, "ref": "4"}))
            assert (await frame())["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}
            # Left: no more changes on that topic; the socket still answers.
            await set_status(db_url, fleet.servers["pve-alpha"], "online")
            await ws.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "5"}))
            assert (await frame())["ref"] == "5"

    run(scenario())


def test_a_subscriber_vanishing_mid_stream_harms_no_one_else(standin, fleet, db_url):
    token = token_for(standin, ALICE)

    async def scenario():
        steady = await subscribe(standin, token, {"m": {"table": "connection_metrics"}})
        url = f"ws://127.0.0.1:{standin.port}/realtime/v1/websocket?apikey={standin.anon_key}&vsn=1.0.0"
        ws = await websockets.connect(url)
        await ws.send(json.dumps({"topic": "realtime:gone", "event": "phx_join", "ref": "1", "payload": {
            "config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "connection_metrics"}]},
            "access_token": token}}))
        await ws.recv()
        # Changes stream while the second subscriber's connection is cut without a goodbye.
        alpha = fleet.servers["pve-alpha"]
        writer = asyncio.gather(*(insert_metric(db_url, alpha, i) for i in range(100, 140)))
        await asyncio.sleep(0.05)
        ws.transport.abort()
        await writer
        got = {(await steady.next())[1]["data"]["record"]["response_time_ms"] for _ in range(40)}
        assert got == set(range(100, 140))
        # The stand-in goes on serving new subscribers.
        late = await subscribe(standin, token, {"m": {"table": "connection_metrics"}}, topic="late")
        await insert_metric(db_url, alpha, 7)
        assert (await late.next())[1]["data"]["record"]["response_time_ms"] == 7
        await steady.close()
        await late.close()

    run(scenario())


def test_the_client_rejoins_after_the_standin_restarts(db_url, pw_secrets, fleet):
    first = StandIn(db_url, pw_secrets["jwt_secret"]).start()
    port = first.port
    second = None
    try:
        token = token_for(first, ALICE)

        async def scenario():
            nonlocal second
            sub = await subscribe(first, token, {"s": {"table": "proxmox_servers"}})
            first.stop()
            await sub.states_after(1, RealtimeSubscribeStates.CHANNEL_ERROR, timeout=15)
            second = StandIn(db_url, pw_secrets["jwt_secret"], port=port).start()
            await sub.states_after(1, RealtimeSubscribeStates.CHANNEL_ERROR, RealtimeSubscribeStates.SUBSCRIBED,
                                   timeout=30)
            await sub.confirmed(2)
            await set_status(db_url, fleet.servers["pve-alpha"], "offline")
            assert (await sub.next())[1]["data"]["record"]["connection_status"] == "offline"
            await sub.close()

        run(scenario())
    finally:
        first.stop()
        if second:
            second.stop()


def test_channels_error_and_rejoin_across_a_database_restart(standin, fleet, db_url, pg_server):
    token = token_for(standin, ALICE)

    async def scenario():
        sub = await subscribe(standin, token, {"s": {"table": "proxmox_servers"}})
        await asyncio.to_thread(pg_server.restart)
        # The channel was told (system error), rejoined by itself once the database was back.
        await sub.states_after(1, RealtimeSubscribeStates.CHANNEL_ERROR, RealtimeSubscribeStates.SUBSCRIBED,
                               timeout=60)
        assert any("lost its connection to the database" in e for e in sub.errors), sub.errors
        await sub.confirmed(2)
        await set_status(db_url, fleet.servers["pve-alpha"], "offline")
        assert (await sub.next(timeout=20))[1]["data"]["record"]["connection_status"] == "offline"
        await sub.close()

    run(scenario())


def test_select_narrows_the_row_to_the_columns_asked_for(standin, fleet, db_url):
    async def scenario():
        client = AsyncRealtimeClient(f"{standin.url}/realtime/v1", token=standin.anon_key)
        await client.set_auth(token_for(standin, ALICE))
        got = asyncio.Queue()
        channel = client.channel("narrow").on_postgres_changes(
            "UPDATE", got.put_nowait, table="proxmox_servers", select=["id", "connection_status"])
        confirmed = asyncio.Event()
        channel.on_system(lambda payload: confirmed.set())  # changes flow once the subscription is confirmed
        await channel.subscribe()
        await asyncio.wait_for(confirmed.wait(), WAIT_S)
        await set_status(db_url, fleet.servers["pve-alpha"], "offline")
        data = (await asyncio.wait_for(got.get(), WAIT_S))["data"]
        assert data["record"] == {"id": fleet.servers["pve-alpha"], "connection_status": "offline"}
        assert [c["name"] for c in data["columns"]] == ["id", "connection_status"]
        await client.close()

    run(scenario())
