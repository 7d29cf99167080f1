"""A raw Phoenix socket to the stand-in's Realtime: frames exactly as the server sends them, for the
tests that check what the official client hides (replies, system messages, closes)."""

from __future__ import annotations

import asyncio
import json

import websockets

WAIT_S = 15


class RawSocket:
    def __init__(self, standin, max_size: int | None = 8 << 20):
        self.url = f"ws://127.0.0.1:{standin.port}/realtime/v1/websocket?apikey={standin.anon_key}&vsn=1.0.0"
        self.max_size = max_size
        self.ref = 0

    async def __aenter__(self):
        self.ws = await websockets.connect(self.url, max_size=self.max_size)
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    async def send(self, topic, event, payload) -> str:
        """Send one frame; its ref (also its join_ref)."""
        self.ref += 1
        await self.ws.send(json.dumps({"topic": topic, "event": event, "payload": payload, "ref": str(self.ref),
                                       "join_ref": str(self.ref)}))
        return str(self.ref)

    async def frame(self, timeout: float = WAIT_S) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def system(self) -> dict:
        """The next system message (frames before it are skipped)."""
        while True:
            frame = await self.frame()
            if frame["event"] == "system":
                return frame["payload"]
