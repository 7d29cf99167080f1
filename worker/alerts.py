"""Alerts: the outbox drained into grouped messages, delivered through Apprise exactly once as far
as proxwatch can tell.

The outbox (`alert_events`) is written by the database in the transaction of the incident that
caused it (migration 20261130002000_alerts.sql). From there:

1. `drain()` (a scheduled job, every second): for each tenant whose oldest pending event is older
   than the group window, under a per-tenant advisory lock, decide each event —
   a problem start and its end both inside the window: dropped; a kind the server's rule turns
   off: dropped; a start under an active silence: held (`silenced`), sent when the silence ends
   while the problem lasts, dropped when the problem ends first; a recovery of a problem nobody
   was told about: dropped — and turn the rest into one message per channel (`alert_deliveries`,
   unique per channel and batch) in the same transaction.
2. `deliver_due()` / `deliver()` (the actor): claim a due delivery (conditional UPDATE, SKIP
   LOCKED, a lease), send it with Apprise, log the try in `alert_attempts` with the service's
   answer masked, and either mark it delivered or schedule the next try with exponential backoff.
   A delivery that has used its tries is `failed`; a channel that failed that many times in a row is
   `failing` and its messages get a single try each until one succeeds.

Secrets: a channel's URL is decrypted only to send; Apprise's own logger is kept to itself (it can
print URLs) and what it says is masked before it lands in a row or a log line.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg

from worker import db
from worker.crypto import Box
from worker.errors import ProxwatchError
from worker.settings import AlertSettings

log = logging.getLogger(__name__)

LEASE_S = 120          # a sender that holds a delivery longer than this is presumed dead
NAMES_LISTED = 8       # servers named in one line before "… and N more"
MASK = "****"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")   # channel names and tags (as the tables check them)
TAG = NAME

# Apprise logs at DEBUG what it sends, URLs included: its records stay with proxwatch's capture.
_apprise_log = logging.getLogger("apprise")
_apprise_log.propagate = False
_apprise_log.setLevel(logging.INFO)


class AlertError(ProxwatchError):
    """The alert could not be handled."""


class ChannelUrlError(AlertError):
    """Apprise does not understand this URL."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ------------------------------------------------------------------------------------- secrets
_SPLIT = re.compile(r"[/:@?&=#,+]")


def _secrets_of(url: str, masked: str) -> list[str]:
    """The parts of `url` Apprise hides in its privacy form (passwords, tokens, keys)."""
    from urllib.parse import unquote, urlsplit

    shown = set(_SPLIT.split(unquote(masked))) | set(_SPLIT.split(masked))
    parts = [p for p in _SPLIT.split(url) if len(p) >= 3 and p not in shown]
    try:
        password = urlsplit(url).password
        if password:
            parts += [password, unquote(password)]
    except ValueError:
        pass
    return sorted(set(parts), key=len, reverse=True)


def mask(text: str | None, secrets: list[str]) -> str | None:
    if text is None:
        return None
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text


def parse_channel_url(url: str) -> tuple[str, str]:
    """(kind, masked URL) of an Apprise URL; ChannelUrlError when Apprise cannot use it."""
    import apprise

    url = (url or "").strip()
    if not url or "://" not in url:
        raise ChannelUrlError("the channel URL must look like scheme://… (an Apprise URL such as json://host/path)")
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        scheme = url.split("://", 1)[0]
        raise ChannelUrlError(f"Apprise does not understand this {scheme}:// URL (see the Apprise wiki for its form)")
    masked = plugin.url(privacy=True)
    kind = url.split("://", 1)[0].lower()
    return kind, masked


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a broken record is not worth a failed alert
            pass


@dataclass
class Outcome:
    ok: bool
    answer: str
    duration_ms: int


def send(url: str, title: str, body: str, notify_type: str = "info") -> Outcome:
    """Send one message through Apprise; the answer is what Apprise reported, secrets masked."""
    import apprise

    kind, masked = parse_channel_url(url)
    secrets = _secrets_of(url, masked)
    capture = _Capture()
    _apprise_log.addHandler(capture)
    started = time.perf_counter()
    try:
        a = apprise.Apprise()
        a.add(url)
        ok = bool(a.notify(body=body, title=title, notify_type=notify_type))
    except Exception as exc:  # noqa: BLE001 - any plugin failure is a failed try, told as a sentence
        ok = False
        capture.lines.append(f"{type(exc).__name__}: {exc}")
    finally:
        _apprise_log.removeHandler(capture)
    duration_ms = int((time.perf_counter() - started) * 1000)
    lines = [line for line in capture.lines if line.strip()]
    answer = " | ".join(lines[-4:]) or ("sent" if ok else "the service refused the message")
    return Outcome(ok, mask(answer, secrets)[:1000], duration_ms)


# ------------------------------------------------------------------------------------- channels
def add_channel(conn, box: Box, tenant_id, name: str, url: str) -> dict:
    kind, masked = parse_channel_url(url)
    if not NAME.fullmatch(name or ""):
        raise AlertError("a channel name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    try:
        row = conn.execute(db.q("alert_channel_add"), {"tenant_id": tenant_id, "name": name, "kind": kind,
                                                       "url_ciphertext": box.seal(url), "url_masked": masked}).fetchone()
    except psycopg.errors.UniqueViolation:
        conn.rollback()
        raise AlertError(f"the team already has a channel named {name!r}") from None
    conn.commit()
    return row


def test_channel(conn, box: Box, channel: dict) -> Outcome:
    """Send a real test message to a channel and log the try (outcome test-delivered/test-failed)."""
    url = box.open(channel["url_ciphertext"])
    outcome = send(url, "proxwatch: test message", f"A test of the channel {channel['name']} from proxwatch.",
                   "info")
    conn.execute(db.q("alert_log_attempt"), {
        "tenant_id": channel["tenant_id"], "delivery_id": None, "channel_id": channel["id"],
        "channel_name": channel["name"], "attempt": 1,
        "outcome": "test-delivered" if outcome.ok else "test-failed", "answer": outcome.answer,
        "duration_ms": outcome.duration_ms, "now": utcnow()})
    conn.commit()
    return outcome


# ---------------------------------------------------------------------------------------- rules
KIND_FIELD = {"offline": "offline", "degraded": "degraded", "recovered": "recovered",
              "cert_expiry": "cert_expiry", "cert_renewed": "cert_expiry", "operation_failed": "operation_failed",
              # threshold alerts are on while the rule sets the threshold
              "latency": "latency_ms", "latency_ok": "latency_ms",
              "success_rate": "success_rate_pct", "success_rate_ok": "success_rate_pct"}
DEFAULTS = {"offline": True, "recovered": True, "degraded": False, "cert_expiry": True, "operation_failed": True,
            "flaps": False}


def rule_for(rules: list[dict], server_id, tags) -> dict:
    """The most specific rule of a server: its own, then its tags' (first tag in order), then the
    tenant's; the defaults when none."""
    for r in rules:
        if server_id is not None and r["server_id"] is not None and str(r["server_id"]) == str(server_id):
            return r
    for tag in tags or ():
        for r in rules:
            if r["tag"] == tag:
                return r
    for r in rules:
        if r["server_id"] is None and r["tag"] is None:
            return r
    return DEFAULTS


def silenced(silences: list[dict], server_id, tags) -> bool:
    for s in silences:
        if s["server_id"] is None and s["tag"] is None:
            return True
        if s["server_id"] is not None and server_id is not None and str(s["server_id"]) == str(server_id):
            return True
        if s["tag"] is not None and s["tag"] in (tags or ()):
            return True
    return False


# ------------------------------------------------------------------------------------- messages
PHRASES = {  # kind: (one, many)
    "offline": ("{n} server went offline", "{n} servers went offline"),
    "degraded": ("{n} server is degraded", "{n} servers are degraded"),
    "recovered": ("{n} server is back online", "{n} servers are back online"),
    "cert_expiry": ("{n} certificate expires within 14 days", "{n} certificates expire within 14 days"),
    "cert_renewed": ("{n} certificate was renewed", "{n} certificates were renewed"),
    "operation_failed": ("{n} operation failed", "{n} operations failed"),
    "latency": ("{n} server answers slowly", "{n} servers answer slowly"),
    "latency_ok": ("{n} server answers fast again", "{n} servers answer fast again"),
    "success_rate": ("{n} server is below its success rate", "{n} servers are below their success rate"),
    "success_rate_ok": ("{n} server is back above its success rate", "{n} servers are back above their success rate"),
}
ORDER = list(PHRASES)


def names(items: list[str]) -> str:
    shown = ", ".join(items[:NAMES_LISTED])
    more = len(items) - NAMES_LISTED
    return shown + (f", … and {more} more" if more > 0 else "")


def compose(events: list[dict]) -> tuple[str, str, str]:
    """(title, body, notify type) of one message for a tenant's events of one window."""
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        by_kind.setdefault(e["kind"], []).append(e)
    lines = []
    for kind in ORDER:
        group = by_kind.get(kind)
        if not group:
            continue
        subjects = sorted(set(e["subject"] for e in group))
        one, many = PHRASES[kind]
        lines.append((one if len(subjects) == 1 else many).format(n=len(subjects)) + ": " + names(subjects))
        if len(subjects) == 1 and group[0].get("detail"):
            lines.append(f"  {group[0]['detail']}")
    title = "proxwatch: " + lines[0].split(":")[0] + (f" (+{len(by_kind) - 1} more kinds)" if len(by_kind) > 1 else "")
    problem = any(e["problem"] for e in events)
    return title, "\n".join(lines), ("failure" if problem else "success")


# ---------------------------------------------------------------------------------------- drain
def drain(pool, settings: AlertSettings, now: datetime | None = None) -> list[str]:
    """Decide the due events of every tenant and queue their messages; returns the new delivery ids."""
    now = now or utcnow()
    with pool.connection() as conn:
        tenants = [r["tenant_id"] for r in conn.execute(db.q("alert_tenants_due"),
                                                        {"now": now, "window_s": settings.group_window_s}).fetchall()]
        conn.commit()
    queued: list[str] = []
    for tenant_id in tenants:
        with pool.connection() as conn, conn.transaction():
            if not conn.execute(db.q("alert_lock_tenant"), {"tenant_id": tenant_id}).fetchone()["locked"]:
                continue   # another drain has it this round
            queued += _drain_tenant(conn, tenant_id, settings, now)
    return queued


def _drain_tenant(conn, tenant_id, settings: AlertSettings, now: datetime) -> list[str]:
    events = conn.execute(db.q("alert_open_events"), {"tenant_id": tenant_id, "now": now}).fetchall()
    pending = [e for e in events if e["state"] == "pending"]
    window = timedelta(seconds=settings.group_window_s)
    if pending and min(e["created_at"] for e in pending) > now - window:
        pending = []   # the window of this group has not passed yet: only silenced ones are looked at
    held = [e for e in events if e["state"] == "silenced"]
    if not pending and not held:
        return []
    rules = conn.execute(db.q("alert_tenant_rules"), {"tenant_id": tenant_id}).fetchall()
    silences = conn.execute(db.q("alert_active_silences"), {"tenant_id": tenant_id, "now": now}).fetchall()
    keys = [e["problem_key"] for e in pending + held if e["problem_key"] is not None]
    notified = {r["problem_key"] for r in conn.execute(db.q("alert_notified_problems"), {"keys": keys}).fetchall()}
    decisions: dict[tuple, list] = {}   # (state, reason) -> ids

    def decide(e, state, reason=None):
        decisions.setdefault((state, reason), []).append(e["id"])

    ends = {e["problem_key"] for e in pending if not e["problem"] and e["problem_key"] is not None}
    send: list[dict] = []
    for e in held:
        if not e["problem_open"]:
            decide(e, "dropped", "silenced until the problem ended")
        elif not silenced(silences, e["server_id"], e["tags"]):
            send.append(e)
    for e in pending:
        rule = rule_for(rules, e["server_id"], e["tags"])
        if e["problem"]:
            if e["problem_key"] is not None and e["problem_key"] in ends and not rule.get("flaps"):
                decide(e, "dropped", "started and ended inside the group window")
            elif not rule.get(KIND_FIELD[e["kind"]], True):
                decide(e, "dropped", f"the rule turns {e['kind']} alerts off")
            elif silenced(silences, e["server_id"], e["tags"]):
                decide(e, "silenced", "a silence covers it")
            else:
                send.append(e)
        else:
            sent_start = any(s["problem_key"] == e["problem_key"] and s["problem"] for s in send)
            if e["problem_key"] not in notified and not sent_start:
                decide(e, "dropped", "nobody was told about the problem")
            elif not rule.get(KIND_FIELD[e["kind"]], True):
                decide(e, "dropped", f"the rule turns {e['kind']} alerts off")
            else:
                send.append(e)
    # A start sent and its end in this same message (a held start whose problem ended): say both.
    queued: list[str] = []
    batch_id = None
    if send:
        batch_id = uuid.uuid4()
        title, body, notify_type = compose(send)
        queued = [str(r["id"]) for r in conn.execute(db.q("alert_queue_deliveries"), {
            "tenant_id": tenant_id, "batch_id": batch_id, "title": title, "body": body,
            "notify_type": notify_type, "now": now}).fetchall()]
        conn.execute(db.q("alert_decide"), {"state": "sent", "reason": None, "batch_id": batch_id, "now": now,
                                            "ids": [e["id"] for e in send]})
    for (state, reason), ids in decisions.items():
        conn.execute(db.q("alert_decide"), {"state": state, "reason": reason, "batch_id": None, "now": now,
                                            "ids": ids})
    return queued


def check_conditions(pool, now: datetime | None = None) -> dict:
    """Open and close the threshold conditions (latency, 24 h success rate) and queue reminders of
    problems that last longer than their rule's repeat interval (public.alert_check)."""
    with pool.connection() as conn:
        row = conn.execute(db.q("alert_check"), {"now": now or utcnow()}).fetchone()
        conn.commit()
    return row


def purge(pool, settings: AlertSettings) -> dict:
    """Delete alert history older than PROXWATCH_ALERT_RETENTION_DAYS."""
    with pool.connection() as conn:
        row = conn.execute(db.q("alert_purge"), {"days": settings.retention_days}).fetchone()
        conn.commit()
    return row


# ------------------------------------------------------------------------------------- delivery
def backoff_s(attempt: int, settings: AlertSettings) -> int:
    """The wait after the `attempt`-th failed try: min, 2·min, 4·min, … up to max."""
    return int(min(settings.retry_max_s, settings.retry_min_s * 2 ** max(0, attempt - 1)))


def deliver_due(pool, box: Box, settings: AlertSettings, now: datetime | None = None, limit: int = 50) -> int:
    """Claim and send every due delivery now (in this process); returns how many were tried."""
    now = now or utcnow()
    with pool.connection() as conn:
        claimed = conn.execute(db.q("alert_claim_deliveries"),
                               {"now": now, "lease_s": LEASE_S, "limit": limit}).fetchall()
        conn.commit()
    for d in claimed:
        _send_claimed(pool, box, settings, d, now)
    return len(claimed)


def due_ids(pool, now: datetime | None = None, limit: int = 200) -> list[str]:
    with pool.connection() as conn:
        return [str(r["id"]) for r in conn.execute(db.q("alert_due_deliveries"),
                                                   {"now": now or utcnow(), "limit": limit}).fetchall()]


def deliver(pool, box: Box, settings: AlertSettings, delivery_id: str, now: datetime | None = None) -> bool:
    """Claim one delivery and send it; False when it is not due or another sender holds it."""
    now = now or utcnow()
    with pool.connection() as conn:
        d = conn.execute(db.q("alert_claim_delivery"), {"id": delivery_id, "now": now, "lease_s": LEASE_S}).fetchone()
        conn.commit()
    if d is None:
        return False
    _send_claimed(pool, box, settings, d, now)
    return True


def _send_claimed(pool, box: Box, settings: AlertSettings, d: dict, now: datetime) -> None:
    with pool.connection() as conn:
        channel = conn.execute(db.q("alert_channel_secret"), {"id": d["channel_id"]}).fetchone()
        conn.commit()
    if channel is None:
        return   # the channel was removed (its deliveries went with it)
    try:
        outcome = send(box.open(channel["url_ciphertext"]), d["title"], d["body"], d["notify_type"])
    except ProxwatchError as exc:
        outcome = Outcome(False, str(exc), 0)
    done_at = max(now, utcnow())
    attempt = d["attempts"]
    if outcome.ok:
        state, next_at = "delivered", d["next_attempt_at"]
    elif attempt >= settings.max_attempts or (channel["failing"] and attempt >= 1):
        state, next_at = "failed", d["next_attempt_at"]
    else:
        state, next_at = "pending", done_at + timedelta(seconds=backoff_s(attempt, settings))
    with pool.connection() as conn, conn.transaction():
        if conn.execute(db.q("alert_delivery_done"), {"id": d["id"], "state": state, "next_attempt_at": next_at,
                                                      "answer": outcome.answer, "now": done_at,
                                                      "attempt": attempt}).fetchone() is None:
            return   # our lease ran out and another sender took it: its outcome is the one recorded
        conn.execute(db.q("alert_log_attempt"), {
            "tenant_id": d["tenant_id"], "delivery_id": d["id"], "channel_id": d["channel_id"],
            "channel_name": d["channel_name"], "attempt": attempt,
            "outcome": "delivered" if outcome.ok else "failed", "answer": outcome.answer,
            "duration_ms": outcome.duration_ms, "now": done_at})
        conn.execute(db.q("alert_channel_outcome"), {"id": d["channel_id"], "ok": outcome.ok, "answer": outcome.answer,
                                                     "now": done_at, "max_attempts": settings.max_attempts})
    if not outcome.ok:
        log.warning("alert to channel %s failed (try %d, %s): %s", d["channel_name"], attempt, state, outcome.answer)
