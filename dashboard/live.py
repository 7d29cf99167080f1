"""Live updates for the dashboard: Supabase Realtime `postgres_changes`, through the official async
`realtime` client, the same against Supabase and the embedded stand-in.

The API (stable — pages call it):

    from dashboard import live

    feed = live.watch(st.session_state, [("proxmox_servers", None),
                                         ("connection_metrics", f"server_id=eq.{server_id}")])
    ... read the page's data through dashboard/data.py and draw it ...
    live.rerun_on_change(feed)

- `watch(client_state, bindings)`: bindings are `(table, filter)` or `(table, filter, event)`
  tuples (schema public; filter in Supabase's syntax `col=eq.value`, `col=in.(a,b)`, or None; event
  `*` unless given). `client_state` is `st.session_state` (holding the dashboard's supabase client,
  see session.session_client) or that client itself. Call it BEFORE reading the data: the version it
  sees is the one the page is drawn from, so no change falls between the read and the watch.
- `LiveFeed`: `.version` (int; +1 for every change delivered for those bindings, and each time the
  subscription is confirmed — the server's "Subscribed to PostgreSQL", the first time, after a
  drop and after a token refresh — since changes made before that moment were not streamed, so
  the page re-reads once), `.connected` (bool: confirmed), `.status` ("Live", "Connecting…"
  before the first confirmation, "Reconnecting…", or "Live updates unavailable" with `.error`
  when the server refused the subscription's parameters — a bad filter or an unpublished table,
  which no retry cures, so the channel is left instead of rejoining in a loop), `.last_change`
  (the `data` dict of the last change — schema, table, type, record, old_record, … — or None).
- `rerun_on_change(feed, *more_feeds, every=1.0, fallback_s=60, reconcile_s=None, show_status=True, settle_s=0)`:
  a small `st.fragment` ticking every `every` seconds that reruns the whole page when a feed's
  version moved since its `watch()`; while a feed is down or unavailable, every `fallback_s`
  seconds, so the page still refreshes; and while it is Live, every `reconcile_s` seconds
  (PROXWATCH_DASHBOARD_RECONCILE, 30 s by default) it asks `live_mark()` — one cheap RPC: row
  counts and row versions of the watched tables — and reruns when that moved. Supabase Realtime
  silently skips changes while the project is over its events quota, so "Live" alone does not
  mean up to date: a skipped change shows within `reconcile_s` + `every` seconds. With
  `show_status` it draws the "● Live" / "Reconnecting…" indicator and, while disconnected, a
  subtle one-line banner that the data may be stale (an error banner when unavailable). Call it
  once per page, after the page's last `watch()`, inside the container where the indicator belongs.
  `settle_s` (a large fleet's page) draws changes that arrive faster than that together.
- `forget(client_state)`: on sign-out, close the user's socket.

How it works: one background thread runs an asyncio loop for the whole Streamlit process. Each
signed-in user (by user id and project) gets ONE `AsyncRealtimeClient` (one socket) with that user's
JWT, whatever number of tabs they have open; each distinct binding list is one channel on it,
shared by the pages that watch the same list. The JWT comes from the dashboard's own supabase client
(it is never refreshed here, so the refresh token is used by one party only): `watch()` passes the
current access token, and a listener on the client's auth events passes every refreshed one, which
goes to Realtime as `access_token`. A supervisor per user resubscribes channels the server closed
(an expired token), rebuilds the socket when the client's own reconnects gave up, and drops channels
no page has looked at for FEED_IDLE_S (a closed tab).
"""

from __future__ import annotations

import html
import logging
import time

from dashboard import hub as _hub
from dashboard.hub import (CONFIG_ERRORS, CONNECTING, LIVE, RECONNECTING, SUBSCRIBED_MESSAGE, UNAVAILABLE,
                           LiveFeed, _Hub, _Loop)

log = logging.getLogger("proxwatch.live")
__all__ = ["CONFIG_ERRORS", "CONNECTING", "LIVE", "RECONNECTING", "SUBSCRIBED_MESSAGE", "UNAVAILABLE", "LiveFeed",
           "watch", "try_watch", "forget", "status_html", "mark", "rerun_on_change"]

_SEEN_KEY = "_proxwatch_live_seen"
_HOOKED_KEY = "_proxwatch_live_hooked"



# Where dashboard/session.py keeps the signed-in client in st.session_state.
CLIENT_KEY = "proxwatch_client"


def _client_of(client_state):
    if hasattr(client_state, "auth") and hasattr(client_state, "supabase_url"):
        return client_state
    client = client_state.get(CLIENT_KEY)
    if client is None:
        raise RuntimeError("live.watch() needs a signed-in supabase client: call session.session_client() first")
    return client


def _feed_for(client, bindings: tuple) -> tuple[_Hub, LiveFeed] | None:
    """The user's hub (created and supervised on first use) and its feed for these bindings."""
    session = client.auth.get_session()
    if session is None:
        return None
    url = str(client.supabase_url).rstrip("/")
    key = (url, session.user.id)
    with _hub._registry_lock:
        hub = _hub._hubs.get(key)
        if hub is None or hub.closed:
            hub = _hub._hubs[key] = _Hub(key, url, client.supabase_key, session.access_token)
        hub.set_token(session.access_token)
        feed = hub.feed(bindings)
        if _hub._loop is None:
            _hub._loop = _Loop()
        if not hub.running:
            hub.running = True
            _hub._loop.submit(hub.supervise())
    return hub, feed


def _normalise(bindings) -> tuple:
    out = []
    for binding in bindings:
        if not isinstance(binding, (tuple, list)) or len(binding) not in (2, 3) or not isinstance(binding[0], str):
            raise ValueError(f"a live binding is (table, filter) or (table, filter, event), not {binding!r}")
        out.append(tuple(binding))
    return tuple(out)


def watch(client_state, bindings) -> LiveFeed:
    """The live feed of changes to these bindings for the signed-in user (see the module doc)."""
    bindings = _normalise(bindings)
    client = _client_of(client_state)
    found = _feed_for(client, bindings)
    if found is None:
        return LiveFeed("signed-out", bindings, status=RECONNECTING)
    hub, feed = found
    if isinstance(client_state, dict) or hasattr(client_state, "__setitem__"):
        seen = client_state.get(_SEEN_KEY) or {}
        seen[feed.key] = (feed.version, time.monotonic())
        client_state[_SEEN_KEY] = seen
        hooked = client_state.get(_HOOKED_KEY)
        if hooked is not client:
            # Every token the dashboard's client refreshes reaches the socket too.
            client.auth.on_auth_state_change(
                lambda event, session, hub_key=hub.key: _token_refreshed(hub_key, session))
            client_state[_HOOKED_KEY] = client
    return feed


def try_watch(client_state, bindings) -> LiveFeed | None:
    """watch(), or None (logged) where live updates are not available: for widgets that work without."""
    try:
        return watch(client_state, bindings)
    except Exception as exc:  # noqa: BLE001 - live updates are a nicety there
        log.warning("live updates unavailable: %s", exc)
        return None


def _token_refreshed(hub_key: tuple, session) -> None:
    hub = _hub._hubs.get(hub_key)
    if hub is not None and session is not None and str(session.user.id) == str(hub_key[1]):
        hub.set_token(session.access_token)


def forget(client_state) -> None:
    """Sign-out: close the user's socket (another tab of the same user opens it again)."""
    try:
        client = _client_of(client_state)
        session = client.auth.get_session()
    except Exception:  # noqa: BLE001 - signed out already
        return
    if session is None:
        return
    key = (str(client.supabase_url).rstrip("/"), session.user.id)
    with _hub._registry_lock:
        hub = _hub._hubs.pop(key, None)
    if hub is not None:
        hub.closed = True


def status_html(feed: LiveFeed, fallback_s: float = 60) -> str:
    """The indicator (a coloured dot and the status word) and, while the connection is down, a
    subtle one-line banner that the data may be stale; when the server refused the subscription,
    an error banner with its sentence (a configuration error, not a connection problem)."""
    color = {LIVE: "#15803d", CONNECTING: "#6b7280", UNAVAILABLE: "#b91c1c"}.get(feed.status, "#b45309")
    dot = (f"<span class='pw-live' data-live-status='{feed.status}' style='color:{color};font-weight:600'>"
           f"● {feed.status}</span>")
    if feed.status == UNAVAILABLE:
        reason = html.escape(feed.error or "the server refused the subscription")
        return ("<div class='pw-live-error' role='alert' style='font-size:0.85rem;padding:0.3rem 0.7rem;"
                "background:#fef2f2;border:1px solid #fecaca;border-radius:0.4rem;color:#7f1d1d'>"
                f"{dot} &nbsp;Realtime refused this page's subscription (a configuration error): {reason}"
                f" Refreshing every {fallback_s:.0f} s instead.</div>")
    if feed.status != RECONNECTING:
        return f"<div style='font-size:0.85rem;padding:0.15rem 0'>{dot}</div>"
    return ("<div class='pw-stale' role='status' style='font-size:0.85rem;padding:0.3rem 0.7rem;"
            "background:#fffbeb;border:1px solid #fde68a;border-radius:0.4rem;color:#78350f'>"
            f"{dot} &nbsp;Live updates are interrupted, so the data shown may be stale. Refreshing every"
            f" {fallback_s:.0f} s until the connection is back.</div>")


def _reconcile_default() -> int:
    from worker.settings import load
    return load().dashboard.reconcile_s


def mark(client_state, *feeds: LiveFeed) -> str | None:
    """live_mark() of what the feeds watch, as the signed-in user: a fingerprint that moves with
    every insert, update or delete of those rows (None when it cannot be read)."""
    from dashboard import data

    tables = sorted({b[0] for f in feeds for b in f.bindings})
    filters = {b[1] for f in feeds for b in f.bindings}
    server = None
    if len(filters) == 1:
        only = next(iter(filters)) or ""
        if only.startswith("server_id=eq.") and "," not in only:
            server = only.removeprefix("server_id=eq.")
    try:
        return data.call(_client_of(client_state), "live_mark", {"p_tables": tables, "p_server_id": server})
    except Exception as exc:  # noqa: BLE001 - reconciling is a safety net; the feed still works
        log.info("live_mark unavailable: %s", exc)
        return None


def rerun_on_change(feed: LiveFeed, *more: LiveFeed, every: float = 1.0, fallback_s: float = 60,
                    reconcile_s: float | None = None, show_status: bool = True, settle_s: float = 0) -> None:
    """Rerun the page when a feed moves, every fallback_s seconds while one is down or unavailable,
    and when live_mark() moved (checked every reconcile_s seconds while Live: changes Realtime
    skipped over its quota). More feeds of the same page may be given; the status shown is the
    worst of them. With settle_s, a change reruns the page no sooner than settle_s seconds after
    this run drew it: changes arriving faster than that are drawn together."""
    import streamlit as st

    feeds = (feed, *more)
    state = st.session_state
    reconcile_s = reconcile_s or _reconcile_default()
    seen = dict(state.get(_SEEN_KEY) or {})
    for f in feeds:
        seen.setdefault(f.key, (f.version, time.monotonic()))
    state[_SEEN_KEY] = seen
    drawn = {f.key: seen[f.key] for f in feeds}
    # The mark of what this run of the page drew (read now, after the page's data: a change
    # between the two reads is one Realtime delivers, or the next mark shows).
    checked = {"mark": mark(state, *feeds), "at": time.monotonic()}
    drawn_at = time.monotonic()

    @st.fragment(run_every=every)
    def _live_tick() -> None:
        now = time.monotonic()
        for f in feeds:
            f.touch()
            version, at = drawn[f.key]
            if f.version != version and now - drawn_at >= settle_s:
                st.rerun()
            if f.status in (RECONNECTING, UNAVAILABLE) and now - at >= fallback_s:
                st.rerun()
        if checked["mark"] is not None and all(f.status == LIVE for f in feeds) \
                and now - checked["at"] >= reconcile_s:
            checked["at"] = now
            if mark(state, *feeds) not in (None, checked["mark"]):
                log.info("live: the data moved without a Realtime change (skipped over the quota?): re-reading")
                st.rerun()
        if show_status:
            worst = next((f for f in feeds if f.status == UNAVAILABLE), None) or \
                next((f for f in feeds if f.status == RECONNECTING), None) or \
                next((f for f in feeds if f.status != LIVE), feed)
            st.markdown(status_html(worst, fallback_s), unsafe_allow_html=True)

    _live_tick()
