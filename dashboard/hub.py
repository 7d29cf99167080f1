"""The machinery behind dashboard/live.py: one asyncio loop per Streamlit process, one Realtime
socket per signed-in user (`_Hub`), one channel per distinct binding list (`LiveFeed`), and the
supervisor that resubscribes, rebuilds and forgets them. Pages never import this module; they call
live.watch() and live.rerun_on_change().
"""


from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field

import jwt
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

log = logging.getLogger("proxwatch.live")

LIVE, CONNECTING, RECONNECTING, UNAVAILABLE = "Live", "Connecting…", "Reconnecting…", "Live updates unavailable"
SUBSCRIBED_MESSAGE = "Subscribed to PostgreSQL"
# The server's sentences for subscription parameters it refuses and does not retry (supabase/realtime
# lib/extensions/postgres_cdc_rls/subscriptions.ex and realtime_channel.ex handle_info(:postgres_subscribe)).
CONFIG_ERRORS = ("Error parsing `filter` params", "Error parsing `select` params", "No subscription params provided",
                 "Unable to subscribe to changes with given parameters", "Column selection is not supported")
CONFIG_RETRY_S = 300      # a refused subscription is tried again this rarely (a publication may change)
FEED_IDLE_S = 90          # a channel no page has looked at for this long is left
REBUILD_AFTER_S = 8       # a socket down this long (the client's own retries failed) is rebuilt
STUCK_AFTER_S = 15        # a channel not joined this long on a live socket is joined afresh
SUPERVISE_EVERY_S = 0.5

@dataclass(eq=False)
class LiveFeed:
    """What a page needs from one subscription. Written by the live thread, read by pages."""
    key: str
    bindings: tuple
    version: int = 0
    connected: bool = False
    status: str = CONNECTING
    last_change: dict | None = None
    error: str | None = None
    touched: float = field(default_factory=time.monotonic)
    # The live thread's side.
    channel: object = None
    ever_joined: bool = False
    down_since: float | None = None
    joining: bool = False

    def touch(self) -> None:
        self.touched = time.monotonic()

    def _on_change(self, payload: dict) -> None:
        self.last_change = payload.get("data")
        self.version += 1

    def _on_system(self, payload, channel=None) -> None:
        """The server's `system` ok messages; "Subscribed to PostgreSQL" is when changes flow."""
        if channel is not None and channel is not self.channel:
            return
        if payload.extension == "postgres_changes" and payload.message == SUBSCRIBED_MESSAGE:
            # Confirmed — the first time, after a drop or after a token refresh: whatever changed
            # before this moment (while the page was being read, the socket was down, or the
            # subscription was being created) was not streamed, so the page reads again.
            self.version += 1
            self.ever_joined = True
            self.connected, self.status, self.down_since, self.error = True, LIVE, None, None

    def _on_state(self, state, error, channel=None) -> None:
        if channel is not None and channel is not self.channel:
            return  # a channel this feed has left since
        if state == RealtimeSubscribeStates.SUBSCRIBED:
            return  # joined; changes flow only once the subscription is confirmed (_on_system)
        refused = _config_error(error)
        if refused:
            log.warning("live channel %s: the server refused the subscription: %s", self.key, refused)
            self.error, self.status, self.connected = refused, UNAVAILABLE, False
            self.down_since = self.down_since or time.monotonic()
            return
        if error:
            log.info("live channel %s: %s (%s)", self.key, state.value, error)
        self.connected = False
        if self.error is None:
            self.status = RECONNECTING if self.ever_joined else CONNECTING
        self.down_since = self.down_since or time.monotonic()
        if state == RealtimeSubscribeStates.CLOSED:
            self.channel = None


def _config_error(error) -> str | None:
    """The server's sentence when a channel error is its refusal of the subscription parameters."""
    if error is None:
        return None
    try:
        payload = json.loads(str(error))
    except ValueError:
        return None
    message = payload.get("message") if isinstance(payload, dict) else None
    if payload.get("extension") == "postgres_changes" and isinstance(message, str) and message.startswith(CONFIG_ERRORS):
        return message
    return None


class _Loop:
    """The process-wide asyncio loop in a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="proxwatch-live", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop)


class _Hub:
    """One user's socket and channels."""

    def __init__(self, key: tuple, url: str, anon_key: str, token: str):
        self.key = key
        self.url = url
        self.anon_key = anon_key
        self.token = token
        self.feeds: dict[str, LiveFeed] = {}
        self.lock = threading.Lock()
        self.client: AsyncRealtimeClient | None = None
        self.sent_token: str | None = None
        self.down_since: float | None = None
        self.rebuilds = 0
        self.running = False
        self.closed = False
        self._topics = itertools.count(1)

    def feed(self, bindings: tuple) -> LiveFeed:
        key = hashlib.sha1(json.dumps(bindings).encode()).hexdigest()[:12]
        with self.lock:
            found = self.feeds.get(key)
            if found is None:
                found = self.feeds[key] = LiveFeed(key, bindings)
        found.touch()
        return found

    def set_token(self, token: str | None) -> None:
        if token and token != self.token:
            self.token = token

    def token_valid(self) -> bool:
        try:
            exp = jwt.decode(self.token, options={"verify_signature": False}).get("exp")
        except jwt.InvalidTokenError:
            return False
        return not isinstance(exp, (int, float)) or exp > time.time() + 1

    # -- the live thread ------------------------------------------------------------------------

    async def supervise(self) -> None:
        try:
            while not self.closed:
                try:
                    await self._step()
                except Exception:  # noqa: BLE001 - keep supervising whatever one step hit
                    log.exception("live supervisor step failed")
                await asyncio.sleep(SUPERVISE_EVERY_S)
        finally:
            await self._close_client()
            for feed in self.feeds.values():
                feed.connected, feed.status = False, RECONNECTING

    async def _step(self) -> None:
        now = time.monotonic()
        with _registry_lock, self.lock:  # watch() adds feeds under the same locks
            idle = [self.feeds.pop(k) for k, f in list(self.feeds.items()) if now - f.touched > FEED_IDLE_S]
            feeds = list(self.feeds.values())
            if not feeds:
                self.closed = True
                if _hubs.get(self.key) is self:
                    del _hubs[self.key]
        for feed in idle:
            await self._leave(feed)
        if not feeds:
            return
        if self.client is None:
            await self._build()
            return
        if self.client.is_connected:
            self.down_since = None
            self.rebuilds = 0
        else:
            self.down_since = self.down_since or now
            for feed in feeds:
                if feed.connected:
                    feed._on_state(RealtimeSubscribeStates.CHANNEL_ERROR, None)
            if now - self.down_since > REBUILD_AFTER_S * min(4, 1 + self.rebuilds):
                self.rebuilds += 1
                await self._build()
            return
        if self.token != self.sent_token and self.token_valid():
            self.sent_token = self.token
            await self.client.set_auth(self.token)
        for feed in feeds:
            if feed.error is not None:
                # Refused parameters: leave (the client would rejoin in a loop); try again rarely.
                if feed.channel is not None:
                    await self._leave(feed)
                if now - (feed.down_since or now) < CONFIG_RETRY_S:
                    continue
                feed.down_since, feed.error = now, None
            stuck = (feed.channel is not None and not feed.connected and not feed.joining
                     and feed.down_since and now - feed.down_since > STUCK_AFTER_S)
            if stuck:
                await self._leave(feed)
                feed.down_since = now
            if feed.channel is None and not feed.joining and self.token_valid():
                asyncio.get_running_loop().create_task(self._subscribe(feed))

    async def _build(self) -> None:
        await self._close_client()
        for feed in self.feeds.values():
            feed.channel = None
        if not self.token_valid():
            return
        client = AsyncRealtimeClient(f"{self.url}/realtime/v1", token=self.anon_key, auto_reconnect=True,
                                     max_retries=4, initial_backoff=0.5)
        await client.set_auth(self.token)
        self.sent_token = self.token
        self.client = client
        try:
            await client.connect()
        except Exception as exc:  # noqa: BLE001 - retried by the supervisor
            log.info("live socket to %s could not connect: %s", self.url, exc)
            self.down_since = self.down_since or time.monotonic()

    async def _leave(self, feed: LiveFeed) -> None:
        channel, feed.channel = feed.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.unsubscribe()  # phx_leave; the client forgets it on the reply

    async def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _subscribe(self, feed: LiveFeed) -> None:
        client = self.client
        if client is None:
            return
        feed.joining = True
        try:
            # A fresh topic per join, so a channel still leaving never stands in for the new one.
            channel = client.channel(f"proxwatch-{feed.key}-{next(self._topics)}")
            for binding in feed.bindings:
                table, filt = binding[0], binding[1]
                event = binding[2] if len(binding) > 2 else "*"
                channel.on_postgres_changes(event, feed._on_change, table=table, schema="public", filter=filt)
            channel.on_system(lambda payload, channel=channel: feed._on_system(payload, channel))
            feed.channel = channel
            await channel.subscribe(lambda state, error, channel=channel: feed._on_state(state, error, channel))
        except Exception as exc:  # noqa: BLE001 - the supervisor tries again
            log.info("live channel %s could not join: %s", feed.key, exc)
            feed._on_state(RealtimeSubscribeStates.CHANNEL_ERROR, None)
        finally:
            feed.joining = False


# Every user's hub in this Streamlit process, and the loop they run on (made on the first watch()).
_loop: _Loop | None = None
_hubs: dict[tuple, _Hub] = {}
_registry_lock = threading.Lock()
