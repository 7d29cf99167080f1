"""Guests (qemu and lxc) of every server, synced from PVE into the `guests` table.

Steps of a sync (sync_guests):
1. GET /cluster/resources?type=vm with the server's stored credentials (one call covers a cluster);
2. turn each entry into the row a person sees: usage rounded to 5 % steps, the start time
   (now − uptime) kept while it moves by less than two minutes; an entry that cannot be stored
   (cpu 1e6, a NUL in a name, vmid 0, a word where a number belongs, a missing field) is skipped
   and counted, and the rest are stored;
3. compare with the stored rows and write only what changed (guests is published: every write is
   a Realtime message), and delete the guests PVE no longer lists;
4. record the outcome in guest_syncs (not published), errors as a kind and a sentence, skipped
   entries as a count and a sentence naming them.

A PVE failure is a result (guest_syncs.error_message; the known guests stay as they were), not an
exception. Database errors propagate, so the actor retries.

Guest power actions live in worker/operations/guest_power.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from psycopg_pool import ConnectionPool

from worker import db
from worker.crypto import SecretKeyError
from worker.errors import ProxwatchError
from worker.pve import CONFIG, PveError

log = logging.getLogger(__name__)

STEP_PCT = 5                                   # usage is stored in steps of this many percent
START_DRIFT = timedelta(minutes=2)             # a start time moving less than this is the same start
COLUMNS = ("vmid", "guest_type", "node", "name", "status", "template", "tags", "cpu_pct", "maxcpu", "mem_pct",
           "maxmem", "maxdisk", "started_at", "hastate", "lock", "pool")


VMID_RANGE = (1, 999_999_999)                  # the guests table's check (PVE itself hands out 100 and up)
MAX_BYTES = 2 ** 62                            # memory and disk sizes (bigint)
MAX_UPTIME_S = 100 * 365 * 86400               # beyond this an uptime is not a start time
MAX_CPU = 100.0                                # 10,000 %: more is not a measurement (smallint cpu_pct)
MAX_TEXT = 255
MAX_TAGS = 4096
SKIP_DETAIL_MAX = 500                          # characters of guest_syncs.skipped_detail


class BadGuest(ProxwatchError, ValueError):
    """One /cluster/resources entry that cannot be stored; the message says which field and why."""


def _step(value: float | None) -> int | None:
    if value is None:
        return None
    return int(round(value / STEP_PCT)) * STEP_PCT


def _number(item: dict, key: str, low: float, high: float, integer: bool = True, required: bool = False):
    """A numeric field: JSON numbers, or the numeric strings PVE's Perl encoder sometimes sends;
    None when absent; BadGuest for anything else (a word, a list, a bool, NaN, out of range)."""
    value = item.get(key)
    if value is None or value == "":
        if required:
            raise BadGuest(f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadGuest(f"{key} is {type(value).__name__}, not a number")
    if isinstance(value, str):
        try:
            number = float(value.strip()) if len(value) <= 40 else None
        except ValueError:
            number = None
        if number is None:
            raise BadGuest(f"{key} {value[:40]!r} is not a number")
    else:
        number = value
    if (isinstance(number, float) and not math.isfinite(number)) or not low <= number <= high:
        raise BadGuest(f"{key} {value!r:.40} is outside {_num(low)}-{_num(high)}")
    if integer:
        if number != int(number):
            raise BadGuest(f"{key} {value!r:.40} is not a whole number")
        return int(number)
    return float(number)


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _text(item: dict, key: str, limit: int = MAX_TEXT, required: bool = False) -> str | None:
    """A text field: a string (or a number, which PVE's encoder may send for a numeric name) of
    printable characters — no NUL, no control characters, no lone surrogates; None when absent."""
    value = item.get(key)
    if value is None or value == "":
        if required:
            raise BadGuest(f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadGuest(f"{key} is {type(value).__name__}, not text")
    text = str(value)
    if len(text) > limit:
        raise BadGuest(f"{key} has {len(text)} characters (at most {limit})")
    if not text.isprintable():
        raise BadGuest(f"{key} {text[:40]!r} contains control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadGuest(f"{key} is not valid text") from None
    return text


def _flag(item: dict, key: str) -> bool:
    value = item.get(key)
    if value in (None, "", 0, 1, "0", "1") or isinstance(value, bool):
        return bool(int(value)) if value not in (None, "") else False
    raise BadGuest(f"{key} {value!r:.40} is not 0 or 1")


def guest_row(item: dict, now: datetime) -> dict | None:
    """One /cluster/resources entry → the stored row; None for what is not a guest (a node, a
    storage); BadGuest with the field and the reason for a guest entry that cannot be stored."""
    if not isinstance(item, dict):
        raise BadGuest(f"the entry is {type(item).__name__}, not an object")
    kind = item.get("type")
    if isinstance(kind, str) and kind not in ("qemu", "lxc"):
        return None
    if kind is None:
        raise BadGuest("type is missing")
    if not isinstance(kind, str):
        raise BadGuest(f"type is {type(kind).__name__}, not qemu or lxc")
    vmid = _number(item, "vmid", *VMID_RANGE, required=True)
    status = _text(item, "status", 64) or "unknown"
    maxmem = _number(item, "maxmem", 0, MAX_BYTES)
    mem = _number(item, "mem", 0, MAX_BYTES)
    cpu = _number(item, "cpu", 0, MAX_CPU, integer=False)
    uptime = _number(item, "uptime", 0, MAX_UPTIME_S) or 0
    mem_pct = _step(100.0 * mem / maxmem) if mem is not None and maxmem and status == "running" else None
    if mem_pct is not None and mem_pct > 1000:
        raise BadGuest(f"mem {mem} is more than ten times maxmem {maxmem}")
    tags = _text(item, "tags", MAX_TAGS)
    return {
        "vmid": vmid,
        "guest_type": kind,
        "node": _text(item, "node") or "",      # shown empty; a console or action then says it lacks one
        "name": _text(item, "name"),
        "status": status,
        "template": _flag(item, "template"),
        # PVE separates tags with ';' (older versions also ',' or ' '); stored as a sorted list.
        "tags": ";".join(sorted({t for t in (tags or "").replace(",", ";").replace(" ", ";").split(";") if t})),
        "cpu_pct": _step(cpu * 100) if cpu is not None and status == "running" else None,
        "maxcpu": _number(item, "maxcpu", 0, 65536),
        "mem_pct": mem_pct,
        "maxmem": maxmem,
        "maxdisk": _number(item, "maxdisk", 0, MAX_BYTES),
        "started_at": (now - timedelta(seconds=uptime)).replace(microsecond=0) if uptime > 0 else None,
        "hastate": _text(item, "hastate", 64),
        "lock": _text(item, "lock", 64),
        "pool": _text(item, "pool"),
    }


def _label(item, index: int) -> str:
    """How a skipped entry is named in the sync's detail: its id when it has a readable one."""
    ident = item.get("id") if isinstance(item, dict) else None
    if isinstance(ident, str) and ident.isprintable() and len(ident) <= 40:
        return ident
    vmid = item.get("vmid") if isinstance(item, dict) else None
    if isinstance(vmid, int) and not isinstance(vmid, bool):
        return f"vmid {vmid}"
    return f"entry {index + 1}"


def _stored(row: dict) -> dict:
    """A guests row as guest_row() shapes it (tags as ';'-joined text)."""
    out = {k: row.get(k) for k in COLUMNS}
    out["tags"] = ";".join(sorted(row.get("tags") or []))
    return out


@dataclass
class Plan:
    """What one sync writes: the rows that changed (or are new), the vmids that vanished, and the
    entries skipped as malformed (each "id: reason")."""
    upserts: list[dict] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)   # vmids of skipped entries: their stored rows stay

    @property
    def skipped_detail(self) -> str | None:
        """One sentence for guest_syncs.skipped_detail, at most SKIP_DETAIL_MAX characters."""
        if not self.skipped:
            return None
        text = (f"{len(self.skipped)} guest entr{'y' if len(self.skipped) == 1 else 'ies'} of PVE's answer "
                f"skipped as malformed: " + "; ".join(self.skipped))
        return text if len(text) <= SKIP_DETAIL_MAX else text[:SKIP_DETAIL_MAX - 1] + "…"


def plan(stored: list[dict], items: list, now: datetime) -> Plan:
    """Compare PVE's answer with the stored rows; only visible differences count. A malformed
    entry is skipped and counted, never the whole sync; a stored guest whose entry was skipped
    stays as it was (it did not vanish)."""
    current = {int(r["vmid"]): _stored(r) for r in stored}
    out = Plan()
    for index, item in enumerate(items):
        try:
            row = guest_row(item, now)
        except BadGuest as exc:
            out.skipped.append(f"{_label(item, index)}: {exc}")
            vmid = item.get("vmid") if isinstance(item, dict) else None
            if isinstance(vmid, int) and not isinstance(vmid, bool) and VMID_RANGE[0] <= vmid <= VMID_RANGE[1]:
                out.kept.append(vmid)
            continue
        if row is None:
            continue
        if row["vmid"] in out.seen:
            out.skipped.append(f"{_label(item, index)}: vmid {row['vmid']} is listed twice")
            continue
        out.seen.append(row["vmid"])
        old = current.get(row["vmid"])
        if old is not None and old["started_at"] and row["started_at"] \
                and abs(row["started_at"] - old["started_at"]) < START_DRIFT:
            row["started_at"] = old["started_at"]
        if old != row:
            out.upserts.append(row)
    out.deletes = sorted(set(current) - set(out.seen) - set(out.kept))
    return out


@dataclass
class SyncResult:
    server_id: str
    server_name: str | None = None
    guests: int = 0
    changed: int = 0
    removed: int = 0
    skipped: int = 0
    skipped_detail: str | None = None
    error_kind: str | None = None
    error_message: str | None = None


def fetch_guests(client) -> list[dict]:
    """The guests of the whole cluster in one call, or PveError.

    For manual test: pvesh get /cluster/resources --type vm
    """
    data = client.request("GET", "cluster/resources", timeout_ms=10000, type="vm")
    if not isinstance(data, list):
        raise PveError("bad_response", "GET /cluster/resources answered something that is not a list")
    return data   # entries that are not objects are skipped (and counted) by plan()


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
                                       {"server_id": server_id, "vmids": p.seen + p.kept}).fetchall()
                result.guests, result.changed, result.removed = len(p.seen), len(p.upserts), len(removed)
                result.skipped, result.skipped_detail = len(p.skipped), p.skipped_detail
            if error is not None:
                result.error_kind, result.error_message = error.kind, error.message
            conn.execute(db.q("record_guest_sync"), {
                "server_id": server_id, "guest_count": result.guests if items is not None else None,
                "error_kind": result.error_kind, "error_message": result.error_message,
                "skipped": result.skipped if items is not None else None,
                "skipped_detail": result.skipped_detail})
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
    if result.skipped:
        log.warning("guest sync of %s: %s", row["name"], result.skipped_detail)
    return result
