"""The operation manager: claims an operation, keeps a lease on it while its handler runs, ends it
(completed or failed, audited), hands requested ones to the broker, and sweeps the ones nobody
finished."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from worker import db
from worker.crypto import Box
from worker.operations import certificate_renewal
from worker.operations.common import AUDIT_COMPLETE, AUDIT_FAIL, OperationFailed, audit_end
from worker.operations.context import Context
from worker.operations.registry import REGISTRY
from worker.operations.tasks import pve_message
from worker.polling import Poller
from worker.pve import PveClient, PveError
from worker.settings import OperationSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tuning:
    """Timeouts and intervals (PROXWATCH_OPERATION_* in worker/settings.py)."""
    stale_s: int = 60               # no heartbeat for this long: the worker is gone, the operation fails
    pending_timeout_s: int = 600    # not taken by a worker within this: failed, never started late
    heartbeat_s: float = 5.0
    task_poll_ms: int = 1000        # how often a running PVE task's status and log are read
    redispatch_s: int = 30          # a pending operation handed to the broker this long ago is sent again
    progress_min_interval_s: float = 2.0   # timed progress is written at most this often
    ssh_timeout_s: int = 15
    task_deadline_s: int = 1800     # a PVE task running longer than this is given up on

    @classmethod
    def from_settings(cls, s: OperationSettings) -> "Tuning":
        return cls(stale_s=s.stale_s, pending_timeout_s=s.pending_timeout_s,
                   heartbeat_s=max(0.5, min(5.0, s.stale_s / 4)), task_poll_ms=s.task_poll_ms,
                   ssh_timeout_s=s.ssh_timeout_s, task_deadline_s=s.deadline_s)


class Heartbeat:
    """Keeps the worker's lease on a running operation alive until stopped (a thread: a process
    that dies takes its heartbeats with it, which is what the sweeper notices)."""

    def __init__(self, pool: ConnectionPool, operation_id: str, worker: str, interval_s: float):
        self.pool, self.operation_id, self.worker, self.interval_s = pool, operation_id, worker, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"op-heartbeat-{operation_id[:8]}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.pool.connection() as conn:
                    conn.execute(db.q("ops_heartbeat"), {"id": self.operation_id, "worker": self.worker})
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the sweeper has slack
                log.warning("heartbeat of operation %s failed: %s", self.operation_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Operations:
    """Claims, runs, completes and fails operations; dispatches and sweeps them."""

    def __init__(self, pool: ConnectionPool, poller: Poller, box: Box, tuning: Tuning | None = None,
                 worker: str | None = None, send: Callable[[str], None] | None = None):
        self.pool = pool
        self.poller = poller
        self.box = box
        self.tuning = tuning or Tuning.from_settings(poller.settings.operations)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        # Hands an operation id to the broker (run_operation.send).
        self.send = send

    # -- lifecycle ------------------------------------------------------------------------------
    def claim(self, operation_id: str) -> dict | None:
        with self.pool.connection() as conn:
            row = conn.execute(db.q("ops_claim"), {"id": operation_id, "message": "Starting",
                                                   "pending_timeout_s": self.tuning.pending_timeout_s}).fetchone()
            if row is None:
                return None
            conn.execute(db.q("ops_lease_take"), {"id": operation_id, "worker": self.worker})
            server = conn.execute(db.q("ops_get"), {"id": operation_id}).fetchone()
        row["server_name"] = server["server_name"]
        return row

    def run(self, operation_id: str) -> dict | None:
        """Run one operation to its end; None when it is not ours to run (taken, finished, expired)."""
        op = self.claim(str(operation_id))
        if op is None:
            log.info("operation %s is not pending any more; nothing to do", operation_id)
            return None
        beat = Heartbeat(self.pool, str(op["id"]), self.worker, self.tuning.heartbeat_s).start()
        ctx = Context(self, op)
        try:
            handler = REGISTRY[op["operation_type"]].run
            message, metadata = handler(ctx)
            return self.complete(op, message, metadata)
        except OperationFailed as exc:
            return self.fail(op, exc.message, exc.kind, exc.metadata)
        except PveError as exc:
            return self.fail(op, pve_message(exc), exc.kind)
        except Exception as exc:  # noqa: BLE001 - the row must end; the traceback goes to the log
            if isinstance(exc, psycopg.OperationalError):
                raise  # the database is down: the sweeper ends the row when nobody can
            log.exception("operation %s (%s) hit an unexpected error", op["id"], op["operation_type"])
            return self.fail(op, f"proxwatch hit an unexpected error: {exc.__class__.__name__}: {exc}", "internal")
        finally:
            beat.stop()

    def complete(self, op: dict, message: str, metadata: dict | None = None) -> dict | None:
        with self.pool.connection() as conn:
            row = conn.execute(db.q("ops_complete"), {"id": op["id"], "message": message,
                                                      "metadata": Jsonb(metadata or {})}).fetchone()
            if row is not None:
                audit_end(conn, AUDIT_COMPLETE, row, {"message": message})
        return row

    def fail(self, op: dict, error: str, kind: str = "failed", metadata: dict | None = None) -> dict | None:
        known = REGISTRY.get(op["operation_type"])
        label = known.failed if known else f"{op['operation_type'].capitalize()} failed"
        with self.pool.connection() as conn:
            row = conn.execute(db.q("ops_fail"), {"id": op["id"], "message": label, "error": error, "kind": kind,
                                                  "metadata": Jsonb(metadata or {})}).fetchone()
            if row is not None:
                audit_end(conn, AUDIT_FAIL, row, {"error": error, "kind": kind})
        return row

    # -- dispatch and sweep ---------------------------------------------------------------------
    def dispatch(self, send: Callable[[str], None] | None = None) -> list[str]:
        """Hand pending operations nobody has sent yet (requested through the API) to the broker."""
        send = send or self.send
        with self.pool.connection() as conn:
            ids = [str(r["operation_id"]) for r in
                   conn.execute(db.q("ops_dispatch_due"), {"redispatch_s": self.tuning.redispatch_s})]
        for operation_id in ids:
            send(operation_id)
        return ids

    def sweep(self) -> list[dict]:
        """Fail operations whose worker died, and those no worker took in time; audit each."""
        with self.pool.connection() as conn:
            stale = conn.execute(db.q("ops_fail_stale"), {"stale_s": self.tuning.stale_s}).fetchall()
            unclaimed = conn.execute(db.q("ops_fail_unclaimed"),
                                     {"pending_timeout_s": self.tuning.pending_timeout_s}).fetchall()
            for row in stale + unclaimed:
                audit_end(conn, AUDIT_FAIL, row, {"error": row["error"], "kind": row["error_kind"]}, actor="system")
        for row in stale + unclaimed:
            log.warning("operation %s (%s) failed: %s", row["id"], row["operation_type"], row["error"])
        return stale + unclaimed

    # -- nodes ----------------------------------------------------------------------------------
    def refresh_nodes(self, server_id, client: PveClient) -> list[dict]:
        """The server's nodes from /cluster/status (name, local, online), remembered in operation_nodes."""
        # For manual test: pvesh get /cluster/status
        status = client.request("GET", "cluster/status")
        nodes = [{"node": str(e["name"]), "is_local": bool(int(e.get("local", 0) or 0)),
                  "online": bool(int(e.get("online", 1) or 0))}
                 for e in status or [] if isinstance(e, dict) and e.get("type") == "node" and e.get("name")]
        if len(nodes) == 1:
            nodes[0]["is_local"] = True
        local = next((n["node"] for n in nodes if n["is_local"]), None)
        with self.pool.connection() as conn:
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

    # -- the daily certificate job --------------------------------------------------------------
    def renew_expiring(self, server_id: str, scheduled_at: datetime | None = None,
                       within_days: int = certificate_renewal.RENEW_WITHIN_DAYS) -> list[dict]:
        """Request a renewal of every node's ACME certificate that expires soon (the daily job;
        see certificate_renewal.renew_expiring)."""
        return certificate_renewal.renew_expiring(self, server_id, scheduled_at, within_days)
