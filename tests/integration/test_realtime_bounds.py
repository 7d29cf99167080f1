"""The embedded Realtime under hostile clients: what one socket or one user may cost the stand-in
and the other subscribers, and that they are told (an error reply or a disconnect), not buffered.

The limits are in worker/embedded/standin/limits.py and the README's Realtime section. Negative
checks never sleep: "the socket stays usable" is a heartbeat answered after the refusal.
"""

from __future__ import annotations

import asyncio
import json
import os

import psycopg
import pytest
import websockets

from tests.support.phoenix import RawSocket
from tests.support.seed import ALICE, BOB
from tests.support.standin import sign_in as token_for
from tests.support.waiting import wait_until
from worker.embedded.standin import StandIn
from worker.embedded.standin.limits import (MAX_BINDINGS_PER_CHANNEL, MAX_BINDINGS_PER_USER, MAX_FRAME_BYTES,
                                            MAX_TOPIC_BYTES)

WAIT_S = 15
SUBSCRIBED = "Subscribed to PostgreSQL"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class Raw(RawSocket):
    """A raw Phoenix socket whose replies are matched by ref."""

    async def reply(self, ref: str) -> dict:
        while True:
            frame = await self.frame()
            if frame["event"] == "phx_reply" and frame["ref"] == ref:
                return frame["payload"]

    async def join(self, topic, token, bindings) -> dict:
        ref = await self.send(f"realtime:{topic}", "phx_join", {"config": {"postgres_changes": bindings},
                                                                "access_token": token})
        return await self.reply(ref)

    async def send_and_reply(self, topic, event, payload=None) -> dict:
        return await self.reply(await self.send(topic, event, payload or {}))

    async def heartbeat_answered(self) -> bool:
        ref = await self.send("phoenix", "heartbeat", {})
        return (await self.reply(ref))["status"] == "ok"


def binding(table="connection_metrics", filt=None, event="*") -> dict:
    return {"event": event, "schema": "public", "table": table, **({"filter": filt} if filt else {})}


def test_an_in_filter_on_an_array_column_is_a_system_error_and_the_socket_stays_usable(standin, fleet, db_url):
    """`tags=in.(a,b)` on guests.tags (text[]) cannot be evaluated (text[] = any(text[]) compares an
    array with its elements): refused when subscribing, with the server's sentence, not at delivery."""
    token = token_for(standin, ALICE)

    async def scenario():
        async with Raw(standin) as raw:
            assert (await raw.join("tags", token, [binding("guests", "tags=in.(web,db)")]))["status"] == "ok"
            system = await raw.system()
            assert system["status"] == "error" and system["extension"] == "postgres_changes", system
            assert "`in` filter requires a column that is not an array, got text[]" in system["message"], system
            assert await raw.heartbeat_answered()
            # And the others still get their changes: the refused binding never reached delivery.
            assert (await raw.join("fine", token, [binding()]))["status"] == "ok"
            assert (await raw.system())["message"] == SUBSCRIBED
            with psycopg.connect(db_url) as conn:
                conn.execute("insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success)"
                             " select id, tenant_id, now(), true from public.proxmox_servers where id = %s",
                             (fleet.servers["pve-alpha"],))
            change = await raw.frame()
            assert change["event"] == "postgres_changes" and change["topic"] == "realtime:fine", change

    run(scenario())


def test_a_frame_over_the_size_limit_disconnects_the_socket(standin, fleet):
    """Cowboy's max_frame_size (endpoint.ex): a bigger frame closes the socket (1009), read no further."""
    async def scenario():
        async with Raw(standin) as raw:
            await raw.ws.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {"x": "x" * MAX_FRAME_BYTES},
                                          "ref": "1"}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await raw.frame()
            assert closed.value.rcvd is None or closed.value.rcvd.code == 1009

    run(scenario())


def test_a_long_topic_is_refused_without_echoing_it(standin, fleet):
    """Replies echo their topic: a topic over MAX_TOPIC_BYTES would make every reply that large, so
    the socket is closed with a sentence instead."""
    async def scenario():
        async with Raw(standin) as raw:
            await raw.send("realtime:" + "t" * MAX_TOPIC_BYTES, "phx_join", {})
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await raw.frame()
            assert closed.value.rcvd.code == 1008 and "topic" in closed.value.rcvd.reason

    run(scenario())


def test_a_client_that_does_not_read_is_disconnected_and_the_standin_stays_bounded(db_url, pw_secrets, fleet):
    """Frames of almost a megabyte (under the frame limit), each a join whose reply echoes its bindings,
    from a client that never reads: the stand-in disconnects it once what is queued for it passes
    MAX_QUEUED_BYTES, instead of holding every reply (today: 600 frames grew it by 578 MiB)."""
    standin = StandIn(db_url, pw_secrets["jwt_secret"], realtime_limits={"joins_per_s": 100_000}).start()
    try:
        before = rss_bytes()
        filt = "x" * ((MAX_FRAME_BYTES - 4096) // MAX_BINDINGS_PER_CHANNEL - 100)
        frame = json.dumps({"topic": "realtime:echo", "event": "phx_join", "ref": "1", "payload": {
            "config": {"postgres_changes": [binding(filt=filt)] * MAX_BINDINGS_PER_CHANNEL}}})
        assert MAX_FRAME_BYTES // 2 < len(frame) < MAX_FRAME_BYTES
        sent = 0

        async def scenario():
            nonlocal sent
            async with Raw(standin, max_size=None) as raw:
                raw.ws.transport.pause_reading()  # never read what the server answers
                with pytest.raises(websockets.ConnectionClosed):
                    for sent in range(1, 101):
                        await asyncio.wait_for(raw.ws.send(frame), WAIT_S)

        run(scenario())
        wait_until(lambda: not standin.realtime.sockets, 10, what="the stand-in to drop the socket")
        assert sent < 100
        assert rss_bytes() - before < 64 << 20
    finally:
        standin.stop()


def test_bindings_per_channel_and_per_user_are_capped_and_other_users_are_not(standin, fleet):
    """One channel may carry MAX_BINDINGS_PER_CHANNEL bindings, one user MAX_BINDINGS_PER_USER over all
    their sockets; past either, the join is refused with an error reply (the bindings are not echoed)
    and the socket stays usable; another user still subscribes."""
    alice, bob = token_for(standin, ALICE), token_for(standin, BOB)

    def many(n, start=0):
        return [binding(filt=f"response_time_ms=eq.{start + i}") for i in range(n)]

    async def scenario():
        async with Raw(standin) as one, Raw(standin) as two, Raw(standin) as other:
            assert await one.join("too-many", alice, many(MAX_BINDINGS_PER_CHANNEL + 1)) == {
                "status": "error", "response": {"reason": f"TooManyBindings: at most {MAX_BINDINGS_PER_CHANNEL}"
                                                          " postgres_changes bindings per channel"}}
            # Up to the user's cap, spread over channels and sockets.
            used, n = 0, 0
            while used + MAX_BINDINGS_PER_CHANNEL <= MAX_BINDINGS_PER_USER:
                raw = one if n % 2 else two
                assert (await raw.join(f"c{n}", alice, many(MAX_BINDINGS_PER_CHANNEL, used)))["status"] == "ok"
                assert (await raw.system())["message"] == SUBSCRIBED
                used, n = used + MAX_BINDINGS_PER_CHANNEL, n + 1
            refused = await two.join("over", alice, many(MAX_BINDINGS_PER_USER - used + 1, used))
            assert refused["status"] == "error", refused
            assert refused["response"]["reason"].startswith(
                f"TooManyBindings: at most {MAX_BINDINGS_PER_USER} postgres_changes bindings per user"), refused
            assert await two.heartbeat_answered()
            # Leaving a channel gives its bindings back.
            assert (await one.send_and_reply("realtime:c1", "phx_leave"))["status"] == "ok"
            assert (await two.join("again", alice, many(1, 10_000)))["status"] == "ok"
            # Another user is not limited by alice's bindings.
            assert (await other.join("bob", bob, many(MAX_BINDINGS_PER_CHANNEL)))["status"] == "ok"
            assert (await other.system())["message"] == SUBSCRIBED

    run(scenario())
