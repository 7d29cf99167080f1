"""What Realtime knows of the database: which tables publication `supabase_realtime` streams (and
which operations), and each streamed table's columns, types, primary key and row-level security.

Read from pg_catalog, never from a subscriber: the column types cast filter values, the primary
key finds a changed row again for the row-level security check. `install` puts the change capture
in place (the proxwatch_realtime schema and a trigger on every published table); refreshing the
publication keeps the triggers in step with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from worker import db

PUBLICATION_REFRESH_S = 5
# How long Realtime waits for a database connection before answering with an error.
DB_TIMEOUT_S = 5


@dataclass
class Table:
    schema: str
    name: str
    rls: bool
    columns: list[str]
    types: dict[str, str]          # column -> short type name (int8, uuid, timestamptz, …)
    full_types: dict[str, str]     # column -> format_type (to cast filter values to)
    generated: set[str]
    primary_key: list[str]
    replica_identity: str = "d"    # pg_class.relreplident: d(efault), f(ull), i(ndex), n(othing)
    identity_index: list[str] = field(default_factory=list)
    selectable: dict[str, set[str]] = field(default_factory=dict)   # role -> columns it may select
    check_sql: str | None = None   # the RLS check statement for proxwatch_realtime.visible_to

    @property
    def identity(self) -> list[str]:
        """The columns logical decoding keeps of an old row (wal2json's `identity`)."""
        return {"f": self.columns, "i": self.identity_index, "n": []}.get(self.replica_identity, self.primary_key)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


class Catalog:
    """The published tables (`published`: operations per table) and the tables looked up so far
    (`tables`); `pool` is set when Realtime starts."""

    def __init__(self):
        self.pool: AsyncConnectionPool | None = None
        self.tables: dict[tuple[str, str], Table] = {}
        self.published: dict[tuple[str, str], dict] = {}
        self._published_at = 0.0

    async def install(self, timeout: float | None = None) -> None:
        """Install the change capture and its triggers (again after the database came back)."""
        async with self.pool.connection(timeout=timeout) as conn:
            await conn.execute(db.q("realtime_install"))
            await conn.execute(db.q("realtime_sync_triggers"))
            await conn.commit()

    async def table(self, schema: str, name: str, role: str) -> dict | None:
        """{table, can_select (by the role)} of a table, read again each time; None if it does not exist."""
        async with self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
            row = await (await conn.execute(db.q("realtime_table"),
                                            {"schema": schema, "table": name, "role": role})).fetchone()
            await conn.rollback()
        if row is None:
            return None
        old = self.tables.get((schema, name))
        table = Table(schema, name, row["rls"], list(row["columns"]), dict(zip(row["columns"], row["types"])),
                      dict(zip(row["columns"], row["full_types"])),
                      {c for c, g in zip(row["columns"], row["generated"]) if g}, list(row["primary_key"]),
                      row["replica_identity"], list(row["identity_index"]))
        if old is not None and (old.columns, old.replica_identity) == (table.columns, table.replica_identity):
            table.selectable = old.selectable
        table.selectable[role] = {c for c, ok in zip(row["columns"], row["selectable"]) if ok}
        self.tables[(schema, name)] = table
        return {"table": table, "can_select": row["can_select"]}

    async def refresh_publication(self, force: bool = False) -> None:
        """Read the publication again (at most every PUBLICATION_REFRESH_S unless forced) and sync
        the capture triggers with it."""
        if not force and time.monotonic() - self._published_at < PUBLICATION_REFRESH_S:
            return
        async with self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
            rows = await (await conn.execute(db.q("realtime_publication"))).fetchall()
            await conn.execute(db.q("realtime_sync_triggers"))
            await conn.commit()
        self.published = {(r["schema"], r["table"]): {"INSERT": r["pubinsert"], "UPDATE": r["pubupdate"],
                                                       "DELETE": r["pubdelete"]} for r in rows}
        self._published_at = time.monotonic()
