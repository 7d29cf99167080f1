"""Realtime subscribers: a WebSocket (Socket), the channels joined on it (Channel), and each
channel's postgres_changes bindings (Binding).

Every socket has its own send queue, so a vanished or slow subscriber only loses its own socket:
one more than SEND_QUEUE_LIMIT frames behind is closed, never waited for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from aiohttp import web

from worker.embedded.standin.filters import Condition

log = logging.getLogger("proxwatch.realtime")

SEND_QUEUE_LIMIT = 20_000


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

    def send(self, frame: str) -> None:
        """Queue a frame; a subscriber too far behind is dropped, never waited for."""
        if self.closed:
            return
        if self.outbox.qsize() >= SEND_QUEUE_LIMIT:
            log.warning("dropping a Realtime subscriber %d frames behind", self.outbox.qsize())
            self.closed = True
            self.outbox.put_nowait(None)
            return
        self.outbox.put_nowait(frame)

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
