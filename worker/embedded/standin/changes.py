"""Realtime change capture and delivery: from a committed row change to the `postgres_changes`
message of every channel that may see it.

Capture: a row trigger on every published table (installed by the stand-in at start, kept in step
with the publication, never part of supabase/migrations) sends the change as JSON with
`pg_notify`; the stand-in LISTENs on one connection. Chosen over logical decoding because NOTIFY
is delivered at commit, in commit order, only for committed transactions, with no WAL held back
when the stand-in is down (a replication slot would grow until it came back), and because
`to_jsonb(row)` gives Postgres's own JSON for every type where parsing `test_decoding` text would
be a second, partial type system. A change larger than a notification (8000 bytes) waits in
proxwatch_realtime.overflow and the notification carries its id. Its costs: the trigger runs in
the writer's transaction (microseconds per row), and changes committed while the stand-in is
not listening are not replayed — Supabase Realtime does not replay them either; subscribers get an
error, rejoin, and re-read (the dashboard refetches when its socket is back).
`commit_timestamp` is the time the row changed (clock_timestamp() in the trigger), not the commit.

Row-level security, per subscriber, as supabase/realtime's `realtime.apply_rls` applies it
(migration 20260709120000_fix_apply_rls_filter_role_leak.ex): an INSERT or UPDATE reaches a
channel only if its JWT could select the row — checked by primary key against the row as it is
now, in one round trip per batch and table: proxwatch_realtime.visible_to() runs the check once
per distinct subscriber AS that subscriber (`set_config('role', …, true)` and
`request.jwt.claims`, as PostgREST and apply_rls set them). A DELETE is NOT checked against RLS
(nobody can select a row that is gone): it reaches every subscriber of the table whose filters
pass on the old row's replica identity, and on a table with RLS its `old_record` holds the primary
key only — so across tenants only the key of a deleted row leaks. A role that may not select the
primary key gets `errors: ["Error 401: Unauthorized"]` events without the row; a table without a
primary key, "Error 400: Bad Request, no primary key".

Replica identity (what logical decoding keeps of an old row; wal2json's `identity`): a DELETE's
filters see only the identity columns and fail closed on any other, so a DELETE filtered on a
non-key column arrives only where the table is REPLICA IDENTITY FULL (or the column is in the
identity index); UPDATE and DELETE `old_record` hold the identity columns (the primary key by
default). An UPDATE leaves out large values it did not change (unchanged TOAST; the capture
trigger names them): missing from `record` unless the identity is FULL, and a filter on one fails
closed. A change over 1 MB (poll_max_record_bytes) arrives with only its values of at most 64
bytes and `errors: ["Error 413: Payload Too Large"]`.

The events quota (replication_poller.ex handle_list_changes_result/4): every change adds the number
of subscriptions it reached to a per-project RateCounter (limits.py); while its one-minute average
is at or over the quota, whole batches of changes are skipped — nobody is told, channels stay
joined. `delivered` and `dropped` count both sides.

When the database goes away, every joined channel gets a `system` error and is dropped; the
clients rejoin by themselves (the official client retries at 1, 2, 5, 10 s) and are answered with
an error until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from worker import db
from worker.embedded.standin.catalog import DB_TIMEOUT_S, Catalog, Table
from worker.embedded.standin.channels import Binding, Channel, Socket
from worker.embedded.standin.filters import Condition, evaluation_parts, evaluation_sql
from worker.embedded.standin.limits import RateCounter

log = logging.getLogger("proxwatch.realtime")

MAX_BATCH = 2_000
# db_settings.ex "poll_max_record_bytes"; past it apply_rls keeps only values of at most 64 bytes.
MAX_RECORD_BYTES = 1_048_576
SMALL_VALUE_BYTES = 64
RECONNECT_DELAYS_S = (0.2, 0.5, 1, 2, 5)


@dataclass
class Change:
    schema: str
    table: str
    op: str
    ts: str
    new: dict | None
    old: dict | None
    toast: tuple[str, ...] = ()    # UPDATE: large values it left unchanged (left out of its new row)


class Changes:
    """The listener and the dispatcher, two background tasks: `start()`, `stop()`. `sockets` is
    Realtime's own set of subscribers; `listening` is set while changes are being captured."""

    def __init__(self, database_url: str, catalog: Catalog, sockets: set[Socket], quota: RateCounter):
        self.database_url = database_url
        self.quota = quota
        self.delivered = 0
        self.dropped = 0
        self.catalog = catalog
        self.sockets = sockets
        self.listening = asyncio.Event()
        self.stopping = False
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._conn: psycopg.AsyncConnection | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="realtime-listen"),
                       asyncio.create_task(self._dispatch(), name="realtime-dispatch")]

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    # -- capture ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; on loss, error every channel and reconnect."""
        attempt = 0
        while not self.stopping:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True, keepalives=1, keepalives_idle=10,
                        keepalives_interval=5, keepalives_count=3) as conn:
                    await conn.execute(db.q("realtime_listen"))
                    if attempt:
                        await self.catalog.install(timeout=DB_TIMEOUT_S)
                        log.info("Realtime is listening to the database again")
                    attempt = 0
                    self.listening.set()
                    async for notify in conn.notifies():
                        self._queue.put_nowait(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database went away; keep trying
                if self.listening.is_set():
                    log.warning("Realtime lost the database (%s); erroring channels and reconnecting",
                                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    self.listening.clear()
                    self._error_all("Realtime lost its connection to the database: changes may have been missed;"
                                    " rejoin to continue")
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                await asyncio.sleep(delay)

    def _error_all(self, message: str) -> None:
        for sock in list(self.sockets):
            for channel in list(sock.channels.values()):
                if channel.bindings:
                    sock.leave(channel.topic)
                    sock.send_json(channel.topic, "system", {"extension": "postgres_changes", "status": "error",
                                                             "message": message, "channel": channel.sub_topic})

    # -- dispatch -----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("Realtime could not check %d changes (%s): the database is unreachable",
                            len(batch), type(exc).__name__)
            except Exception:  # noqa: BLE001 - one bad batch must not stop the stream
                log.exception("Realtime failed to deliver %d changes", len(batch))

    async def _deliver(self, payloads: list[str]) -> None:
        changes = await self._decode(payloads)
        channels = [c for s in list(self.sockets) if not s.closed for c in s.channels.values() if c.bindings]
        if not changes or not channels:
            return
        if self.quota.is_triggered():
            # Over the events quota: the batch is skipped whole, silently (replication_poller.ex).
            self.dropped += len(changes)
            log.debug("Realtime events quota reached: skipping %d changes", len(changes))
            return
        with contextlib.suppress(psycopg.Error):
            await self.catalog.refresh_publication()
        # Changes of each table, in order; the messages keep the order of the changes.
        by_table: dict[tuple[str, str], list[int]] = {}
        for i, ch in enumerate(changes):
            ops = self.catalog.published.get((ch.schema, ch.table))
            if ops and ops.get(ch.op):
                by_table.setdefault((ch.schema, ch.table), []).append(i)
        matched: dict[int, dict[int, list[Binding]]] = {}   # change index -> {channel index -> bindings}
        errors: dict[int, dict[int, list[Binding]]] = {}    # change index -> {channel index -> bindings} (401/400)
        for key, indices in by_table.items():
            interested = [(ci, c, [b for b in c.bindings if b.covers(*key)]) for ci, c in enumerate(channels)]
            interested = [(ci, c, bs) for ci, c, bs in interested if bs]
            if not interested:
                continue
            table = self.catalog.tables.get(key)
            fresh = set().union(*((changes[i].new or changes[i].old or {}).keys() for i in indices))
            if table is None or not fresh <= set(table.columns):  # new, or its columns changed
                if await self.catalog.table(key[0], key[1], interested[0][1].role) is None:
                    continue
                table = self.catalog.tables[key]
            for role in sorted({c.role for _, c, _ in interested} - set(table.selectable)):
                await self.catalog.table(key[0], key[1], role)
                table = self.catalog.tables[key]
            await self._match(table, [changes[i] for i in indices], indices, interested, matched, errors)
        for i in sorted(set(matched) | set(errors)):
            hits, refused = matched.get(i, {}), errors.get(i, {})
            self.quota.add(sum(map(len, hits.values())) + sum(map(len, refused.values())))
            self._send_change(changes[i], hits, refused, channels)

    async def _decode(self, payloads: list[str]) -> list[Change]:
        parsed = []
        overflow = []
        for text in payloads:
            try:
                item = json.loads(text)
            except ValueError:
                continue
            parsed.append(item)
            if "overflow" in item:
                overflow.append(item["overflow"])
        if overflow:
            async with self.catalog.pool.connection(timeout=DB_TIMEOUT_S) as conn:
                rows = await (await conn.execute(db.q("realtime_take_overflow"), {"ids": overflow})).fetchall()
                await conn.commit()
            taken = {r["id"]: r["change"] for r in rows}
            parsed = [taken.get(p["overflow"]) if "overflow" in p else p for p in parsed]
        return [Change(p["s"], p["t"], p["op"], p["ts"], p.get("new"), p.get("old"), tuple(p.get("toast") or ()))
                for p in parsed if p]

    async def _match(self, table: Table, changes: list[Change], indices: list[int], interested, matched,
                     errors) -> None:
        """Which channel bindings each change reaches (apply_rls): the event, the filters (Postgres
        evaluates them on the columns the change carries — the new row less its unchanged TOAST
        values, or for a DELETE the old row's replica identity; a filter on a column it does not
        carry fails), then row-level security per distinct subscriber, for INSERT and UPDATE.

        The cost is bounded per batch, whoever subscribes: one statement evaluates every distinct
        condition on every change (_filters), one checks RLS for every subscriber (_visible); then
        each binding meets only the changes its conditions let through."""
        conditions = sorted({c for _, _, bs in interested for b in bs for c in b.conditions},
                            key=lambda c: (c.column, c.op, str(c.value), c.negate))
        carried = [self._carried(table, ch) for ch in changes]
        images = [{k: v for k, v in ((ch.old if ch.op == "DELETE" else ch.new) or {}).items() if k in cols}
                  for ch, cols in zip(changes, carried)]
        key_ok = {role: bool(table.primary_key) and set(table.primary_key) <= table.selectable.get(role, set())
                  for role in {c.role for _, c, _ in interested}}
        conn = await self._checker()
        try:
            true_for, broken = await self._filters(conn, table, images, conditions) if conditions else ({}, {})
            identities = sorted({c.identity for _, c, _ in interested if key_ok[c.role]})
            visible = await self._visible(conn, table, changes, identities) if table.rls else None
        except psycopg.OperationalError:
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        finally:
            if not conn.closed:
                await conn.rollback()
        cond_index = {c: k for k, c in enumerate(conditions)}
        every = range(len(changes))
        for ci, channel, bindings in interested:
            failed = next((broken[cond_index[c]] for b in bindings for c in b.conditions
                           if cond_index[c] in broken), None)
            if failed is not None:
                self._drop_channel(channel, failed)
                continue
            seen = visible.get(channel.identity, set()) if visible is not None else None
            if not key_ok[channel.role]:
                # apply_rls: no primary key (400) or one the role may not select (401): every
                # subscription of the role gets the error, its filters unchecked.
                for n in every:
                    wanted = [b for b in bindings if b.wants(changes[n].op)]
                    if changes[n].op != "DELETE" and wanted:
                        errors.setdefault(indices[n], {})[ci] = wanted
            for b in bindings:
                if b.conditions:
                    sets = sorted((true_for.get(cond_index[c], ()) for c in b.conditions), key=len)
                    candidates = sorted(set(sets[0]).intersection(*sets[1:])) if sets[0] else ()
                else:
                    candidates = every
                for n in candidates:
                    ch = changes[n]
                    if not b.wants(ch.op) or (ch.op != "DELETE" and not key_ok[channel.role]):
                        continue
                    if ch.op != "DELETE" and seen is not None and n not in seen:
                        continue
                    if all(c.column in carried[n] for c in b.conditions):
                        matched.setdefault(indices[n], {}).setdefault(ci, []).append(b)

    def _drop_channel(self, channel: Channel, message: str) -> None:
        """A filter Postgres cannot evaluate on this table (any more) ends its channel's
        subscription with the server's sentence; everyone else's changes go on."""
        sock = channel.socket
        if sock.channels.get(channel.topic) is channel:
            sock.leave(channel.topic)
            sock.send_json(channel.topic, "system", {"extension": "postgres_changes", "status": "error",
                                                     "message": message, "channel": channel.sub_topic})

    @staticmethod
    def _carried(table: Table, change: Change) -> set[str]:
        """The columns logical decoding carries for the change: wal2json's `columns` (the new row
        less its unchanged TOAST values), or for a DELETE its `identity`."""
        if change.op == "DELETE":
            return set(table.identity) & set(change.old or {})
        return set(change.new or {}) - set(change.toast)

    async def _checker(self) -> psycopg.AsyncConnection:
        """The dispatcher's own connection (one batch at a time), opened again after a loss."""
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.database_url, row_factory=dict_row,
                                                               connect_timeout=DB_TIMEOUT_S)
        return self._conn

    async def _filters(self, conn, table: Table, images: list[dict],
                       conditions: list[Condition]) -> tuple[dict[int, set[int]], dict[int, str]]:
        """({condition index: positions of the images it is true for}, {condition index: the error
        of a condition Postgres refused}) — one statement for the batch: per group of conditions
        (filters.group_key) a join of the images with the group's values, however many there are.
        When that statement fails, each group is tried alone to find the one to blame."""
        parts = evaluation_parts(conditions, table.full_types)

        async def run(chosen) -> dict[int, set[int]]:
            statement, params = evaluation_sql(table.ident, chosen)
            rows = await (await conn.execute(statement, [json.dumps(images)] + params)).fetchall()
            return {r["k"]: set(r["ns"]) for r in rows}

        try:
            return await run(parts), {}
        except psycopg.OperationalError:
            raise
        except psycopg.Error:
            await conn.rollback()
        true_for, broken = {}, {}
        for part in parts:
            try:
                true_for.update(await run([part]))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                await conn.rollback()
                cond = conditions[part[2][0]]
                log.warning("Realtime cannot evaluate filter %s on %s.%s: %s", cond.as_elixir(), table.schema,
                            table.name, str(exc).strip())
                for k in part[2]:
                    broken[k] = (f"Unable to evaluate the filter {conditions[k].as_elixir()} on {table.schema}."
                                 f"{table.name}: {str(exc).strip().splitlines()[0]}")
        return true_for, broken

    async def _visible(self, conn, table: Table, changes: list[Change], identities) -> dict[tuple, set[int]]:
        """{identity: indices of the INSERT/UPDATE changes whose row that subscriber may select}."""
        live = [n for n, ch in enumerate(changes) if ch.op != "DELETE"]
        seen: dict[tuple, set[int]] = {ident: set() for ident in identities}
        if live and identities:
            keys = [{k: changes[n].new.get(k) for k in table.primary_key} for n in live]
            for ident, pos in await self._check(conn, table, keys, identities):
                seen[ident].add(live[pos])
        return seen

    async def _check(self, conn, table: Table, keys: list[dict], identities) -> list[tuple[tuple, int]]:
        """(identity, position) for every key whose row the identity may select, by its own RLS —
        all identities in one round trip (proxwatch_realtime.visible_to)."""
        if table.check_sql is None:
            match = sql.SQL(" and ").join(
                sql.SQL("t.{} = k.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in table.primary_key)
            table.check_sql = sql.SQL(
                "select coalesce(array_agg((e.n - 1)::int), '{{}}') from jsonb_array_elements($1)"
                " with ordinality as e (img, n) cross join lateral jsonb_populate_record(null::{}, e.img) as k"
                " where exists (select 1 from {} as t where {})").format(table.ident, table.ident, match
                                                                          ).as_string(conn)
        rows = await (await conn.execute(db.q("realtime_visible"), {
            "check": table.check_sql, "keys": json.dumps(keys),
            "identities": json.dumps([{"role": r, "claims": c} for r, c in identities])})).fetchall()
        return [(identities[r["who"]], r["pos"]) for r in rows]

    def _send_change(self, change: Change, hits: dict[int, list[Binding]], refused: dict[int, list[Binding]],
                     channels: list[Channel]) -> None:
        table = self.catalog.tables[(change.schema, change.table)]
        cache: dict[tuple, str] = {}
        for ci, bindings in [*hits.items(), *((ci, None) for ci in refused)]:
            channel = channels[ci]
            by_select: dict[tuple | None, list[int]] = {}
            for b in bindings if bindings is not None else refused[ci]:
                by_select.setdefault(b.select, []).append(b.id)
            for select, ids in by_select.items():
                key = (channel.role, select, bindings is None)
                if key not in cache:
                    cache[key] = self._refused_json(table, change) if bindings is None else \
                        self._data_json(table, change, table.selectable.get(channel.role, set()), select)
                channel.socket.send('{"topic":' + json.dumps(channel.topic) + ',"event":"postgres_changes",'
                                    '"payload":{"ids":' + json.dumps(sorted(set(ids))) + ',"data":' + cache[key] + '},'
                                    '"ref":null}')
                self.delivered += 1

    @staticmethod
    def _refused_json(table: Table, change: Change) -> str:
        """apply_rls's 400/401 row, as list_changes fills it in: no columns, no row."""
        error = "Error 401: Unauthorized" if table.primary_key else "Error 400: Bad Request, no primary key"
        data = {"columns": [], "commit_timestamp": None, "errors": [error], "schema": change.schema,
                "table": change.table, "type": change.op, "record": {}}
        if change.op == "UPDATE":
            data["old_record"] = {}
        return json.dumps(data, separators=(",", ":"))

    @staticmethod
    def _data_json(table: Table, change: Change, selectable: set[str], select: tuple | None) -> str:
        """apply_rls's output for one role and column selection."""
        pk = set(table.primary_key)
        columns = [c for c in table.columns if c in selectable and (select is None or c in select or c in pk)]
        new = change.new or {}
        old = {c: v for c, v in (change.old or {}).items() if c in set(table.identity)}
        present = {c: v for c, v in new.items() if c not in change.toast}
        too_big = len(json.dumps([present, old], default=str)) + 60 * len(table.columns) > MAX_RECORD_BYTES

        def keep(value) -> bool:
            return not too_big or len(json.dumps(value, default=str)) <= SMALL_VALUE_BYTES

        data = {"schema": change.schema, "table": change.table, "commit_timestamp": change.ts, "type": change.op,
                "errors": ["Error 413: Payload Too Large"] if too_big else None,
                "columns": [{"name": c, "type": table.types[c]} for c in columns]}
        if change.op in ("INSERT", "UPDATE"):
            # An unchanged TOAST value is taken from the old row when the identity has it (FULL).
            data["record"] = {c: present[c] if c in present else old[c] for c in columns
                              if (c in present or c in old) and keep(present.get(c, old.get(c)))}
        if change.op in ("UPDATE", "DELETE"):
            # A DELETE on a table with RLS: "we can't secure deletes so filter to pkey" (apply_rls).
            rls_delete = change.op == "DELETE" and table.rls
            data["old_record"] = {c: old[c] for c in columns
                                  if c in old and keep(old[c]) and (not rls_delete or c in pk)}
        return json.dumps(data, separators=(",", ":"), default=str)
