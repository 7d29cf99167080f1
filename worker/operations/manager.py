"""The operation manager: claims an operation, keeps a lease on it while its handler runs, ends it
(completed or failed, audited), hands requested ones to the broker, and sweeps the ones nobody
finished. Handlers see a Context (context.py), never the manager."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from worker import db
from worker.crypto import Box
from worker.operations.certificate_renewal import RENEW_WITHIN_DAYS, renew_expiring
from worker.operations.common import AUDIT_COMPLETE, AUDIT_FAIL, OperationFailed, Tuning, audit_end
from worker.operations.context import Context
from worker.operations.registry import REGISTRY
from worker.operations.tasks import pve_message
from worker.polling import Poller
from worker.pve import PveError

log = logging.getLogger(__name__)


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
        ctx = Context(op, self.pool, self.poller, self.box, self.tuning)
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

    # -- the daily certificate job --------------------------------------------------------------
    def renew_expiring(self, server_id: str, scheduled_at: datetime | None = None,
                       within_days: int = RENEW_WITHIN_DAYS) -> list[dict]:
        """Request a renewal of every node's ACME certificate that expires soon (the daily job;
        see certificate_renewal.renew_expiring)."""
        return renew_expiring(self.pool, self.poller, self.send, server_id, scheduled_at, within_days)
