"""Realtime subscribers: a WebSocket (Socket), the channels joined on it (Channel), and each
channel's postgres_changes bindings (Binding).

Every socket has its own send queue, counted in bytes, so a vanished or slow subscriber only loses
its own socket: one more than `max_queued` bytes behind (limits.MAX_QUEUED_BYTES) is dropped at
once, its queue freed, never waited for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from worker.embedded.standin.filters import Condition
from worker.embedded.standin.limits import MAX_QUEUED_BYTES

log = logging.getLogger("proxwatch.realtime")


def owner(claims: dict) -> str:
    """Whose bindings a channel holds, for the per-user cap: the JWT's subject, else its role."""
    sub = claims.get("sub")
    return f"user:{sub}" if isinstance(sub, str) and sub else f"role:{claims.get('role')}"


@dataclass
class Binding:
    id: int
    event: str
    schema: str
    table: str
    conditions: tuple[Condition, ...]
    select: tuple[str, ...] | None
    echo: dict

    def wants(self, op: str) -> bool:
        return self.event == "*" or self.event == op

    def covers(self, schema: str, table: str) -> bool:
        return self.schema in (schema, "*") and self.table in (table, "*")


@dataclass(eq=False)
class Channel:
    socket: "Socket"
    topic: str
    join_ref: str | None
    role: str
    claims: dict
    claims_json: str
    bindings: list[Binding]        # empty until the subscription is confirmed
    token: str = ""
    specs: list = field(default_factory=list)   # config.postgres_changes as the client sent it
    expiry: asyncio.TimerHandle | None = None
    subscribing: asyncio.Task | None = None

    @property
    def user(self) -> str:
        return owner(self.claims)

    @property
    def identity(self) -> tuple[str, str]:
        return (self.role, self.claims_json)

    @property
    def sub_topic(self) -> str:
        return self.topic.split(":", 1)[1] if ":" in self.topic else self.topic


@dataclass(eq=False)
class Socket:
    ws: web.WebSocketResponse
    apikey: str
    channels: dict[str, Channel] = field(default_factory=dict)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False
    queued: int = 0                            # bytes in the outbox and being written
    max_queued: int = MAX_QUEUED_BYTES
    abort: Callable[[], None] | None = None    # drops the connection without a close handshake

    def send(self, frame: str) -> None:
        """Queue a frame (ASCII JSON: its length is its size); a subscriber too far behind is
        dropped, never waited for."""
        if self.closed:
            return
        if self.queued + len(frame) > self.max_queued:
            log.warning("dropping a Realtime subscriber that does not read: %d bytes queued for it", self.queued)
            self.kill()
            return
        self.queued += len(frame)
        self.outbox.put_nowait(frame)

    def kill_queue(self) -> None:
        """Forget what is queued (the socket is closing without sending it)."""
        self.closed = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.queued = 0

    def sent(self, frame: str) -> None:
        self.queued -= len(frame)

    def kill(self) -> None:
        """Drop the connection now: free what was queued, leave every channel, abort the transport
        (a close handshake would wait behind the data the client does not read)."""
        self.kill_queue()
        self.outbox.put_nowait(None)
        for topic in list(self.channels):
            self.leave(topic)
        if self.abort is not None:
            self.abort()

    def send_json(self, topic: str, event: str, payload, ref: str | None = None) -> None:
        self.send(json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref},
                             separators=(",", ":")))

    def reply(self, topic: str, ref, status: str, response: dict) -> None:
        self.send_json(topic, "phx_reply", {"status": status, "response": response}, ref)

    def leave(self, topic: str) -> None:
        """Forget the channel of the topic (its token expiry timer and pending subscription too)."""
        channel = self.channels.pop(topic, None)
        if channel and channel.expiry:
            channel.expiry.cancel()
        if channel and channel.subscribing and not channel.subscribing.done():
            channel.subscribing.cancel()

    def disconnect(self) -> None:
        """Close the socket once what is queued has been sent (the server's "disconnect")."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)
