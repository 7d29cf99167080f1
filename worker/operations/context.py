"""What a handler needs while it runs one operation: the row, its PVE client, and the few writes an
operation makes while it runs (progress, the node it resolved, the PVE task it started); and the
server's nodes as /cluster/status names them (refresh_nodes), which the daily certificate job
reads too."""

from __future__ import annotations

import time

import psycopg
from psycopg_pool import ConnectionPool

from worker import db
from worker.crypto import Box
from worker.operations.common import OperationFailed, Tuning
from worker.polling import Poller
from worker.pve import PveClient, PveError


class Context:
    """One running operation, as its handler sees it. `metadata` collects what the operation
    learned (the UPID, the task log's tail …); the handler returns it with its message."""

    def __init__(self, op: dict, pool: ConnectionPool, poller: Poller, box: Box, tuning: Tuning):
        self.op = op
        self.pool, self.poller, self.box, self.tuning = pool, poller, box, tuning
        self.params: dict = dict(op["params"] or {})
        self._client: PveClient | None = None
        self._last_write = 0.0
        self._last = (op["progress"], op["message"])
        self.metadata: dict = {}

    @property
    def where(self) -> str:
        return self.op["server_name"]

    def client(self) -> PveClient:
        if self._client is None:
            pair = self.poller.client(self.op["server_id"])
            if pair is None:
                raise OperationFailed("the server was removed while the operation waited", "config")
            self._client = pair[1]
        return self._client

    def pve(self, method: str, path: str, **params):
        return self.client().request(method, path, **params)

    def progress(self, progress: int, message: str, force: bool = True) -> None:
        """Write progress and message when they change (timed updates at most every few seconds).
        Progress never goes back: a person watching it must not see it shrink."""
        progress = max(0, min(99, int(progress)), self._last[0] or 0)
        if (progress, message) == self._last:
            return
        now = time.monotonic()
        if not force and message == self._last[1] and now - self._last_write < self.tuning.progress_min_interval_s:
            return
        with self.pool.connection() as conn:
            conn.execute(db.q("ops_progress"), {"id": self.op["id"], "progress": progress, "message": message})
        self._last, self._last_write = (progress, message), now

    def resolve_node(self) -> str:
        """The node the operation acts on; when none was named, the node the server's address answers
        on (named now, under the same never-twice rule)."""
        if self.op["node"]:
            return self.op["node"]
        nodes = refresh_nodes(self.pool, self.op["server_id"], self.client())
        local = next((n["node"] for n in nodes if n["is_local"]), None)
        if local is None:
            raise OperationFailed(f"{self.where} did not say which node it is (no local node in /cluster/status): "
                                  "name the node", "config")
        op_type = self.op["operation_type"]
        target = local + ("/" + self.params["service"] if op_type == "service_restart" else "")
        key = f"{op_type}:{target}"
        try:
            with self.pool.connection() as conn:
                conn.execute(db.q("ops_resolve_node"), {"id": self.op["id"], "node": local, "target": target,
                                                        "conflict_key": key})
        except psycopg.errors.UniqueViolation:
            with self.pool.connection() as conn:
                other = conn.execute(db.q("ops_running_on"), {"server_id": self.op["server_id"],
                                                              "conflict_key": key}).fetchone()
            raise OperationFailed(f"the same operation is already running on {local}"
                                  + (f" (operation {other['id']})" if other else "") + "; this one was not started",
                                  "duplicate") from None
        self.op.update(node=local, target=target, conflict_key=key)
        return local

    def set_task(self, upid: str, node: str) -> None:
        """Record the PVE task the operation started (shown in the dashboard, kept in metadata)."""
        with self.pool.connection() as conn:
            conn.execute(db.q("ops_set_task"), {"id": self.op["id"], "upid": upid, "node": node})
        self.op["upid"] = upid
        self.metadata["upid"] = upid


def server_nodes(pool: ConnectionPool, poller: Poller, server_id: str, log,
                 what: str = "certificate check") -> tuple[dict, PveClient, list[dict]] | None:
    """(server row, client, its nodes) for a per-node check of one server; None when the server is
    gone, disabled or its node list cannot be read (logged as `what`: it tries again next time)."""
    pair = poller.client(server_id)
    if pair is None:
        return None
    row, client = pair
    try:
        return row, client, refresh_nodes(pool, server_id, client)
    except PveError as exc:
        log.warning("%s of %s: the node list could not be read: %s", what, row["name"], exc.message)
        return None


def refresh_nodes(pool: ConnectionPool, server_id, client: PveClient) -> list[dict]:
    """The server's nodes from /cluster/status (name, local, online), remembered in operation_nodes."""
    # For manual test: pvesh get /cluster/status
    status = client.request("GET", "cluster/status")
    nodes = [{"node": str(e["name"]), "is_local": bool(int(e.get("local", 0) or 0)),
              "online": bool(int(e.get("online", 1) or 0))}
             for e in status or [] if isinstance(e, dict) and e.get("type") == "node" and e.get("name")]
    if len(nodes) == 1:
        nodes[0]["is_local"] = True
    local = next((n["node"] for n in nodes if n["is_local"]), None)
    with pool.connection() as conn:
        for n in nodes:
            conn.execute(db.q("ops_upsert_node"), {"server_id": server_id, **n})
        conn.execute(db.q("ops_forget_nodes"), {"server_id": server_id, "nodes": [n["node"] for n in nodes]})
        if local:
            try:
                with conn.transaction():
                    conn.execute(db.q("ops_name_local_node"), {"server_id": server_id, "node": local})
            except psycopg.errors.UniqueViolation:
                pass  # the worker fails the duplicate when it runs it (Context.resolve_node)
    return nodes
