"""Guests (qemu and lxc) of every server, synced from PVE into the `guests` table.

Steps of a sync (sync_guests):
1. GET /cluster/resources?type=vm with the server's stored credentials (one call covers a cluster);
2. turn each entry into the row a person sees: usage rounded to 5 % steps, the start time
   (now − uptime) kept while it moves by less than two minutes;
3. compare with the stored rows and write only what changed (guests is published: every write is
   a Realtime message), and delete the guests PVE no longer lists;
4. record the outcome in guest_syncs (not published), errors as a kind and a sentence.

A PVE failure is a result (guest_syncs.error_message; the known guests stay as they were), not an
exception. Database errors propagate, so the actor retries.

Guest power actions live in worker/operations/guest_power.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from psycopg_pool import ConnectionPool

from worker import db
from worker.crypto import SecretKeyError
from worker.pve import CONFIG, PveError

log = logging.getLogger(__name__)

STEP_PCT = 5                                   # usage is stored in steps of this many percent
START_DRIFT = timedelta(minutes=2)             # a start time moving less than this is the same start
COLUMNS = ("vmid", "guest_type", "node", "name", "status", "template", "tags", "cpu_pct", "maxcpu", "mem_pct",
           "maxmem", "maxdisk", "started_at", "hastate", "lock", "pool")


def _step(value: float | None) -> int | None:
    if value is None:
        return None
    return int(round(value / STEP_PCT)) * STEP_PCT


def _int(value) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def guest_row(item: dict, now: datetime) -> dict | None:
    """One /cluster/resources entry → the stored row; None for what is not a guest."""
    if item.get("type") not in ("qemu", "lxc") or _int(item.get("vmid")) is None:
        return None
    cpu = item.get("cpu")
    maxmem = _int(item.get("maxmem"))
    mem = _int(item.get("mem"))
    uptime = _int(item.get("uptime")) or 0
    status = str(item.get("status") or "unknown")
    tags = item.get("tags")
    return {
        "vmid": int(item["vmid"]),
        "guest_type": item["type"],
        "node": str(item.get("node") or ""),
        "name": item.get("name") or None,
        "status": status,
        "template": bool(_int(item.get("template")) or 0),
        # PVE separates tags with ';' (older versions also ',' or ' '); stored as a sorted list.
        "tags": ";".join(sorted({t for t in str(tags or "").replace(",", ";").replace(" ", ";").split(";") if t})),
        "cpu_pct": _step(float(cpu) * 100) if cpu is not None and status == "running" else None,
        "maxcpu": _int(item.get("maxcpu")),
        "mem_pct": _step(100.0 * mem / maxmem) if mem is not None and maxmem and status == "running" else None,
        "maxmem": maxmem,
        "maxdisk": _int(item.get("maxdisk")),
        "started_at": (now - timedelta(seconds=uptime)).replace(microsecond=0) if uptime > 0 else None,
        "hastate": item.get("hastate") or None,
        "lock": item.get("lock") or None,
        "pool": item.get("pool") or None,
    }


def _stored(row: dict) -> dict:
    """A guests row as guest_row() shapes it (tags as ';'-joined text)."""
    out = {k: row.get(k) for k in COLUMNS}
    out["tags"] = ";".join(sorted(row.get("tags") or []))
    return out


@dataclass
class Plan:
    """What one sync writes: the rows that changed (or are new) and the vmids that vanished."""
    upserts: list[dict] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)


def plan(stored: list[dict], items: list[dict], now: datetime) -> Plan:
    """Compare PVE's answer with the stored rows; only visible differences count."""
    current = {int(r["vmid"]): _stored(r) for r in stored}
    out = Plan()
    for item in items:
        row = guest_row(item, now)
        if row is None or row["vmid"] in out.seen:
            continue
        out.seen.append(row["vmid"])
        old = current.get(row["vmid"])
        if old is not None and old["started_at"] and row["started_at"] \
                and abs(row["started_at"] - old["started_at"]) < START_DRIFT:
            row["started_at"] = old["started_at"]
        if old != row:
            out.upserts.append(row)
    out.deletes = sorted(set(current) - set(out.seen))
    return out


@dataclass
class SyncResult:
    server_id: str
    server_name: str | None = None
    guests: int = 0
    changed: int = 0
    removed: int = 0
    error_kind: str | None = None
    error_message: str | None = None


def fetch_guests(client) -> list[dict]:
    """The guests of the whole cluster in one call, or PveError.

    For manual test: pvesh get /cluster/resources --type vm
    """
    data = client.request("GET", "cluster/resources", timeout_ms=10000, type="vm")
    if not isinstance(data, list):
        raise PveError("bad_response", "GET /cluster/resources answered something that is not a list")
    return [d for d in data if isinstance(d, dict)]


def apply(pool: ConnectionPool, server_id: str, items: list[dict] | None, error: PveError | None = None,
          now: datetime | None = None) -> SyncResult:
    """Write one sync's outcome: the changed rows, the vanished ones and the guest_syncs row, in one
    transaction. items None (with error): PVE could not be asked; the stored guests stay."""
    now = now or datetime.now(timezone.utc)
    result = SyncResult(server_id=str(server_id))
    with pool.connection() as conn:
        with conn.transaction():
            conn.execute(db.q("guest_sync_lock"), {"server_id": str(server_id)})
            if items is not None:
                stored = conn.execute(db.q("guests_of_server"), {"server_id": server_id}).fetchall()
                p = plan(stored, items, now)
                if p.upserts:
                    conn.execute(db.q("upsert_guests"), {"server_id": server_id, **{
                        col: [r[col] for r in p.upserts] for col in COLUMNS}})
                removed = conn.execute(db.q("delete_vanished_guests"),
                                       {"server_id": server_id, "vmids": p.seen}).fetchall()
                result.guests, result.changed, result.removed = len(p.seen), len(p.upserts), len(removed)
            if error is not None:
                result.error_kind, result.error_message = error.kind, error.message
            conn.execute(db.q("record_guest_sync"), {
                "server_id": server_id, "guest_count": result.guests if items is not None else None,
                "error_kind": result.error_kind, "error_message": result.error_message})
    return result


def sync_guests(poller, server_id: str) -> SyncResult | None:
    """Sync one server's guests now (poller: worker.polling.Poller); None when the server is gone."""
    try:
        found = poller.client(server_id)
    except SecretKeyError as exc:  # the stored credential no longer decrypts: a result, not a retry
        return apply(poller.pool, server_id, None, PveError(CONFIG, str(exc)))
    except PveError as exc:  # no credentials (update_server dropped them): a result, not a retry
        return apply(poller.pool, server_id, None, exc)
    if found is None:
        return None
    row, client = found
    try:
        items = fetch_guests(client)
    except PveError as exc:
        result = apply(poller.pool, server_id, None, exc)
    else:
        result = apply(poller.pool, server_id, items)
    result.server_name = row["name"]
    if result.error_kind:
        log.info("guest sync of %s failed: %s", row["name"], result.error_message)
    return result
