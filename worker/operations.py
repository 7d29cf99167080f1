"""Operations: SSH test, service restart, certificate renewal and guest power actions — requested
once, run once, followed live, audited.

The life of an operation:
1. request: `enqueue_operation()` in SQL validates the input (a bad service name, an unknown guest,
   a viewer: refused with one sentence, nothing written) and inserts a pending row — or, when the
   same operation already runs on the same target, returns that one (`already_running`). A unique
   partial index over the running states makes that true under any race (tabs, users, cron).
2. dispatch: the CLI and the cron job hand the new operation to the broker themselves; rows
   requested through the API (the dashboard) are picked up by `dispatch()` every second.
3. run: a worker claims the row (a conditional UPDATE: only one worker ever gets it), keeps a
   lease alive with heartbeats in operation_leases (not published), and runs the operation:
   PVE calls through worker.pve, the task (UPID) followed through its status and log, progress
   and message written as they change (throttled: Realtime messages are a budget).
4. end: completed (progress 100, what it learned in metadata) or failed with the error in plain
   words; both audited in the same transaction.
5. sweep: an operation whose worker died (no heartbeat for PROXWATCH_OPERATION_STALE_S) is failed,
   and one no worker took within PROXWATCH_OPERATION_PENDING_TIMEOUT_S is failed, not started late.

The daily certificate job (`renew_expiring`) reads certificates/info on every node and requests a
renewal (created_by 'cron') for every ACME certificate expiring within 30 days — through the same
enqueue, so it cannot start a renewal that is already running.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import asyncio
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from proxmoxer.core import ResourceException

from worker import audit, db, inventory, ssh
from worker.crypto import Box
from worker.polling import Poller
from worker.pve import CONNECTION_LEVEL, PveClient, PveError
from worker.settings import env_int

log = logging.getLogger(__name__)

# PVE's restartable services (pve-manager PVE/API2/Services.pm); public.operation_services() in SQL
# holds the same list (a test keeps them equal).
SERVICES = ("chrony", "corosync", "cron", "ksmtuned", "lxcfs", "postfix", "proxmox-firewall", "pve-cluster",
            "pve-firewall", "pve-ha-crm", "pve-ha-lrm", "pve-lxc-syscalld", "pvedaemon", "pvefw-logger",
            "pveproxy", "pvescheduler", "pvestatd", "qmeventd", "spiceproxy", "sshd", "syslog",
            "systemd-journald", "systemd-timesyncd")
POWER_ACTIONS = ("start", "stop", "shutdown", "reset")
TYPES = ("ssh_test", "service_restart", "certificate_renewal") + POWER_ACTIONS
# Audit actions of the lifecycle.
AUDIT_COMPLETE, AUDIT_FAIL = "operation.complete", "operation.fail"
# The certificate ACME manages on a node (pveproxy-ssl.pem); pve-ssl.pem is the cluster CA's own.
ACME_CERT_FILE = "pveproxy-ssl.pem"
RENEW_WITHIN_DAYS = 30
CRON_REPEAT_HOURS = 12


@dataclass(frozen=True)
class Tuning:
    """Timeouts and intervals, from the environment (one place, loud on bad values)."""
    stale_s: int = 60               # no heartbeat for this long: the worker is gone, the operation fails
    pending_timeout_s: int = 600    # not taken by a worker within this: failed, never started late
    heartbeat_s: float = 5.0
    task_poll_ms: int = 1000        # how often a running PVE task's status and log are read
    redispatch_s: int = 30          # a pending operation handed to the broker this long ago is sent again
    progress_min_interval_s: float = 2.0   # timed progress is written at most this often
    ssh_timeout_s: int = 15
    task_deadline_s: int = 1800     # a PVE task running longer than this is given up on

    @classmethod
    def from_env(cls) -> "Tuning":
        stale = env_int("PROXWATCH_OPERATION_STALE_S", 60, 3, 86400)
        return cls(stale_s=stale,
                   pending_timeout_s=env_int("PROXWATCH_OPERATION_PENDING_TIMEOUT_S", 600, 10, 86400),
                   heartbeat_s=max(0.5, min(5.0, stale / 4)),
                   task_poll_ms=env_int("PROXWATCH_OPERATION_POLL_MS", 1000, 50, 30000),
                   ssh_timeout_s=env_int("PROXWATCH_SSH_TIMEOUT_S", 15, 1, 300),
                   task_deadline_s=env_int("PROXWATCH_OPERATION_DEADLINE_S", 1800, 10, 86400))


class RequestRefused(ProxwatchError):
    """The request was refused; nothing was written."""


class OperationFailed(ProxwatchError):
    """The operation failed; the message is the sentence a person reads."""

    def __init__(self, message: str, kind: str = "failed", metadata: dict | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.metadata = metadata or {}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ------------------------------------------------------------------------------------ requesting
REFUSAL_STATES = {"22023", "PT404", "42501", "22P02", "40001"}


def enqueue(conn: psycopg.Connection, server_id, op_type: str, params: dict | None = None,
            created_by: str = "user", user_id=None) -> dict:
    """Queue an operation in the caller's transaction (the caller commits): the seed's shape,
    {"operationId", "status": "started" | "already_running", "existingOperation": {…}}.
    RequestRefused with one sentence for bad input (the transaction is rolled back: nothing written)."""
    try:
        row = conn.execute(db.q("ops_enqueue"), {"server_id": str(server_id), "type": op_type,
                                                 "params": Jsonb(params or {}), "created_by": created_by,
                                                 "user_id": user_id}).fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate not in REFUSAL_STATES:
            raise
        conn.rollback()
        raise RequestRefused(exc.diag.message_primary or str(exc)) from None
    return row["result"]


def dispatched(conn: psycopg.Connection, operation_id) -> None:
    """Record that the caller hands the operation to the broker itself (so the dispatch job does not)."""
    conn.execute(db.q("ops_mark_dispatched"), {"id": operation_id})


def fail_unsent(conn: psycopg.Connection, operation_id, error: str) -> None:
    """End an operation that could not be handed to any worker (the broker is down): failed now,
    rather than started by surprise when a worker comes back. Audited; the caller commits."""
    row = conn.execute(db.q("ops_fail"), {"id": operation_id, "message": "Not started", "error": error,
                                          "kind": "not_started", "metadata": Jsonb({})}).fetchone()
    if row is not None:
        Operations._audit(conn, AUDIT_FAIL, row, {"error": error, "kind": "not_started"}, actor="system")


# ------------------------------------------------------------------------ reading PVE's answers
def pve_message(exc: PveError) -> str:
    """PveError's sentence, with PVE's per-parameter reasons when it gave some (a 400 "Parameter
    verification failed." alone does not say what to change)."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None) if isinstance(cause, ResourceException) else None
    if isinstance(errors, dict) and errors:
        details = "; ".join(f"{k}: {str(v).strip()}" for k, v in errors.items())
        return f"{exc.message.rstrip('.')}: {details}"
    return exc.message


UPID_RE = re.compile(r"^UPID:(?P<node>[^:]+):(?P<pid>[0-9A-Fa-f]{8}):(?P<pstart>[0-9A-Fa-f]{8,9}):"
                     r"(?P<starttime>[0-9A-Fa-f]{8}):(?P<type>[^:]*):(?P<id>[^:]*):(?P<user>[^:]+):$")


def parse_upid(upid: str) -> dict:
    """A UPID's fields (node, pid, pstart, starttime, type, id, user), or ValueError."""
    match = UPID_RE.match(upid or "")
    if not match:
        raise ValueError(f"{upid!r} is not a PVE task id (UPID)")
    out = match.groupdict()
    out["starttime"] = int(out["starttime"], 16)
    return out


# Steps of an ACME order or renewal as its task log prints them (pve-manager PVE/API2/ACME.pm),
# in order, with the progress each one means.
CERT_STEPS: tuple[tuple[str, int, str], ...] = (
    ("Loading ACME account details", 10, "Loading the ACME account"),
    ("Placing ACME order", 20, "Placing the ACME order"),
    ("Getting authorization details", 30, "Getting the authorization details"),
    ("already validated!", 55, "Domain already validated"),
    ("... pending!", 35, "Validating the domain"),
    ("Setting up webserver", 40, "Validating the domain"),
    ("Triggering validation", 45, "Validating the domain"),
    ("Sleeping for 5 seconds", 50, "Waiting for the validation"),
    ("Status is still 'pending'", 50, "Waiting for the validation"),
    ("Status is 'valid'", 55, "Domain validated"),
    ("All domains validated!", 60, "All domains validated"),
    ("Creating CSR", 65, "Creating the certificate request"),
    ("Finalizing order", 70, "Finalizing the order"),
    ("Checking order status", 75, "Checking the order status"),
    ("Order is ready, finalizing order", 75, "Finalizing the order"),
    ("still pending", 75, "Waiting for the CA"),
    ("still processing", 75, "Waiting for the CA"),
    ("valid!", 80, "Certificate issued"),
    ("Downloading certificate", 85, "Downloading the certificate"),
    ("Setting pveproxy certificate and key", 90, "Installing the certificate"),
    ("Restarting pveproxy", 95, "Restarting pveproxy"),
    ("Revoking old certificate", 97, "Revoking the old certificate"),
)


def certificate_step(line: str) -> tuple[int, str] | None:
    """The (progress, message) a line of an ACME task log means, or None for other lines."""
    text = line.strip()
    for needle, progress, message in CERT_STEPS:
        if needle == "valid!" and text != "valid!":
            continue
        if needle in text:
            return progress, message
    return None


def timed_progress(elapsed_s: float, estimate_ms: int | None, cap: int = 95) -> int:
    """Progress of an operation known only by its expected duration: elapsed / estimate, capped
    below 100 until the task says it is done."""
    if not estimate_ms:
        return 0
    return max(0, min(cap, int(elapsed_s * 1000 * 100 / estimate_ms)))


PVEVERSION_RE = re.compile(r"pve-manager/(?P<version>[0-9][^/\s]*)")


def parse_pveversion(output: str) -> str:
    """'pve-manager/9.1.4/5f8ca1e0 (running kernel: …)' → '9.1.4', or ValueError."""
    match = PVEVERSION_RE.search(output or "")
    if not match:
        raise ValueError(f"unexpected pveversion output: {output.strip()[:120]!r}")
    return match["version"]


def guest_label(params: dict) -> str:
    kind = "container" if params.get("guest_type") == "lxc" else "VM"
    name = params.get("guest_name")
    return f"{kind} {params.get('vmid')}" + (f" ({name})" if name else "")


POWER_WORDS = {"start": ("Starting", "started"), "stop": ("Stopping", "stopped"),
               "shutdown": ("Shutting down", "shut down"), "reset": ("Resetting", "reset")}


# ------------------------------------------------------------------------------------------ SSH
@dataclass
class SshResult:
    version: str
    latency_ms: int      # TCP connect + key exchange + authentication
    command_ms: int
    output: str
    host_key_fingerprint: str


async def ssh_pveversion(host: str, port: int, username: str, host_key: str, password: str | None = None,
                         private_key: str | None = None, timeout: float = 15.0) -> SshResult:
    """SSH to the node trusting only the pinned host key (worker.ssh), run `pveversion`.
    OperationFailed in plain words.

    For manual test: ssh -o StrictHostKeyChecking=yes -p PORT USER@HOST pveversion
    """
    where = f"{host}:{port}"
    started = time.perf_counter()
    try:
        async with await ssh.connect(host, port, username, host_key, password=password, client_key=private_key,
                                     timeout=timeout) as conn:
            latency_ms = round((time.perf_counter() - started) * 1000)
            result = await conn.run("pveversion", timeout=timeout)
    except ssh.SshError as exc:
        raise OperationFailed(exc.message, exc.kind) from None
    if result.exit_status == 127:
        raise OperationFailed(f"SSH to {where} works, but pveversion is not installed there: is it a Proxmox VE node?",
                              "not_pve")
    if result.exit_status != 0:
        raise OperationFailed(f"pveversion on {where} exited with {result.exit_status}: {result.stderr.strip()[:200]}",
                              "command")
    try:
        version = parse_pveversion(result.stdout)
    except ValueError as exc:
        raise OperationFailed(f"SSH to {where} works, but {exc}", "not_pve") from None
    return SshResult(version=version, latency_ms=latency_ms, command_ms=result.ms, output=result.stdout.strip(),
                     host_key_fingerprint=ssh.fingerprint(host_key))


# ---------------------------------------------------------------------------------- the manager
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
        self.tuning = tuning or Tuning.from_env()
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
            handler = HANDLERS[op["operation_type"]]
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
                self._audit(conn, AUDIT_COMPLETE, row, {"message": message})
        return row

    def fail(self, op: dict, error: str, kind: str = "failed", metadata: dict | None = None) -> dict | None:
        label = {"ssh_test": "SSH test failed", "service_restart": "Restart failed",
                 "certificate_renewal": "Renewal failed"}.get(op["operation_type"], f"{op['operation_type'].capitalize()} failed")
        with self.pool.connection() as conn:
            row = conn.execute(db.q("ops_fail"), {"id": op["id"], "message": label, "error": error, "kind": kind,
                                                  "metadata": Jsonb(metadata or {})}).fetchone()
            if row is not None:
                self._audit(conn, AUDIT_FAIL, row, {"error": error, "kind": kind})
        return row

    @staticmethod
    def _audit(conn, action: str, row: dict, details: dict, actor: str | None = None) -> None:
        audit.record(conn, action, tenant_id=row["tenant_id"], user_id=row["requested_by"],
                     actor=actor or row["created_by"], server_id=row["server_id"], target_type=row["target_type"],
                     target_id=row["target"], details={"operation_id": str(row["id"]),
                                                       "operation_type": row["operation_type"], **details})

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
                self._audit(conn, AUDIT_FAIL, row, {"error": row["error"], "kind": row["error_kind"]}, actor="system")
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
                       within_days: int = RENEW_WITHIN_DAYS) -> list[dict]:
        """Request a renewal (created_by 'cron') of every node's ACME certificate that expires
        within `within_days`. Returns what it found per node: {"node", "notafter", "result"}."""
        pair = self.poller.client(server_id)
        if pair is None:
            return []
        row, client = pair
        try:
            nodes = self.refresh_nodes(server_id, client)
        except PveError as exc:
            log.warning("certificate check of %s: the node list could not be read: %s", row["name"], exc.message)
            return []
        limit = utcnow() + timedelta(days=within_days)
        found = []
        for node in [n for n in nodes if n["online"]]:
            name = node["node"]
            try:
                # For manual test: pvesh get /nodes/<node>/certificates/info
                info = client.request("GET", f"nodes/{name}/certificates/info")
            except PveError as exc:
                log.warning("certificate check of %s/%s failed: %s", row["name"], name, exc.message)
                found.append({"node": name, "notafter": None, "result": f"not checked: {exc.message}"})
                continue
            cert = next((c for c in info or [] if isinstance(c, dict) and c.get("filename") == ACME_CERT_FILE), None)
            if cert is None or cert.get("notafter") is None:
                continue  # no ACME (custom) certificate: the self-signed pve-ssl.pem is not ACME's to renew
            notafter = datetime.fromtimestamp(int(cert["notafter"]), timezone.utc)
            entry = {"node": name, "notafter": notafter.isoformat()}
            if notafter > limit:
                found.append({**entry, "result": "valid"})
                continue
            with self.pool.connection() as conn:
                recent = conn.execute(db.q("ops_recent_cron_renewal"), {"server_id": server_id, "node": name,
                                                                        "hours": CRON_REPEAT_HOURS}).fetchone()
                if recent is not None:
                    found.append({**entry, "result": f"requested already today ({recent['status']})",
                                  "operationId": str(recent["id"])})
                    continue
                reason = f"expires {notafter:%Y-%m-%d %H:%M} UTC" + (
                    f" (daily check {scheduled_at:%Y-%m-%d})" if scheduled_at else "")
                try:
                    result = enqueue(conn, server_id, "certificate_renewal", {"node": name, "reason": reason}, "cron")
                except RequestRefused as exc:
                    found.append({**entry, "result": f"refused: {exc}"})
                    continue
                if result["status"] == "started":
                    conn.execute(db.q("ops_mark_dispatched"), {"id": result["operationId"]})
                conn.commit()
            if result["status"] == "started" and self.send:
                self.send(result["operationId"])
            found.append({**entry, "result": result["status"], "operationId": result["operationId"]})
        return found


# ------------------------------------------------------------------------------ one operation
class Context:
    """What a handler needs while it runs one operation."""

    def __init__(self, ops: Operations, op: dict):
        self.ops = ops
        self.op = op
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
            pair = self.ops.poller.client(self.op["server_id"])
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
        if not force and message == self._last[1] and now - self._last_write < self.ops.tuning.progress_min_interval_s:
            return
        with self.ops.pool.connection() as conn:
            conn.execute(db.q("ops_progress"), {"id": self.op["id"], "progress": progress, "message": message})
        self._last, self._last_write = (progress, message), now

    def resolve_node(self) -> str:
        """The node the operation acts on; when none was named, the node the server's address answers
        on (named now, under the same never-twice rule)."""
        if self.op["node"]:
            return self.op["node"]
        nodes = self.ops.refresh_nodes(self.op["server_id"], self.client())
        local = next((n["node"] for n in nodes if n["is_local"]), None)
        if local is None:
            raise OperationFailed(f"{self.where} did not say which node it is (no local node in /cluster/status): "
                                  "name the node", "config")
        op_type = self.op["operation_type"]
        target = local + ("/" + self.params["service"] if op_type == "service_restart" else "")
        key = f"{op_type}:{target}"
        try:
            with self.ops.pool.connection() as conn:
                conn.execute(db.q("ops_resolve_node"), {"id": self.op["id"], "node": local, "target": target,
                                                        "conflict_key": key})
        except psycopg.errors.UniqueViolation:
            with self.ops.pool.connection() as conn:
                other = conn.execute(db.q("ops_running_on"), {"server_id": self.op["server_id"],
                                                              "conflict_key": key}).fetchone()
            raise OperationFailed(f"the same operation is already running on {local}"
                                  + (f" (operation {other['id']})" if other else "") + "; this one was not started",
                                  "duplicate") from None
        self.op.update(node=local, target=target, conflict_key=key)
        return local

    def set_task(self, upid: str, node: str) -> None:
        with self.ops.pool.connection() as conn:
            conn.execute(db.q("ops_set_task"), {"id": self.op["id"], "upid": upid, "node": node})
        self.op["upid"] = upid
        self.metadata["upid"] = upid

    def follow_task(self, node: str, upid: str, message: str,
                    on_line: Callable[[str], tuple[int, str] | None] | None = None) -> tuple[str, list[str]]:
        """Follow a PVE task to its end: (exitstatus, log lines). Progress comes from on_line (the
        log) when given, else from the time elapsed against the estimate.

        For manual test: pvesh get /nodes/<node>/tasks/<upid>/status; … /log --start 0
        """
        t = self.ops.tuning
        started = time.monotonic()
        lines: list[str] = []
        failures = 0
        path = f"nodes/{node}/tasks/{upid}"
        while True:
            try:
                status = self.pve("GET", f"{path}/status")
                new = self.pve("GET", f"{path}/log", start=len(lines), limit=500) or []
                failures = 0
            except PveError as exc:
                failures += 1
                if (exc.kind not in CONNECTION_LEVEL and exc.kind != "http") or failures >= 5:
                    raise OperationFailed(f"lost track of the PVE task {upid}: {pve_message(exc)}; it may still be "
                                          "running on the server", exc.kind, {"upid": upid}) from None
                time.sleep(t.task_poll_ms / 1000)
                continue
            for entry in sorted((e for e in new if isinstance(e, dict)), key=lambda e: int(e.get("n", 0))):
                text = str(entry.get("t", ""))
                lines.append(text)
                step = on_line(text) if on_line else None
                if step:
                    self.progress(step[0], step[1])
            if isinstance(status, dict) and status.get("status") == "stopped":
                self.metadata["task_log"] = lines[-20:]
                return str(status.get("exitstatus") or "unknown"), lines
            elapsed = time.monotonic() - started
            if on_line is None:
                # Against the estimate from the request on, as the dashboard counts the time remaining.
                since_request = (utcnow() - self.op["started_at"]).total_seconds()
                self.progress(timed_progress(since_request, self.op["estimated_duration_ms"]), message, force=False)
            if elapsed > t.task_deadline_s:
                raise OperationFailed(f"the PVE task {upid} did not finish within {t.task_deadline_s // 60} min; it may "
                                      "still be running on the server", "timeout", {"upid": upid})
            time.sleep(t.task_poll_ms / 1000)

    def task_outcome(self, exitstatus: str, what: str) -> str | None:
        """None when the task ended well; OperationFailed with PVE's reason otherwise."""
        if exitstatus == "OK":
            return None
        if exitstatus.startswith("WARNINGS"):
            return exitstatus
        raise OperationFailed(f"{what} failed: {exitstatus}", "task", dict(self.metadata))


# ----------------------------------------------------------------------------------- handlers
def run_ssh_test(ctx: Context) -> tuple[str, dict]:
    """SSH to the node with the pinned host key, run pveversion, record latency and version."""
    with ctx.ops.pool.connection() as conn:
        cred = conn.execute(db.q("ops_ssh_credentials"), {"server_id": ctx.op["server_id"],
                                                          "node": ctx.op["node"]}).fetchone()
    if cred is None:
        raise OperationFailed(f"no SSH credentials for {ctx.where}: set them with `proxwatch ops ssh-set`", "config")
    secret = ctx.ops.box.open(cred["secret_ciphertext"])
    ctx.progress(10, f"Connecting to {cred['username']}@{cred['host']}:{cred['port']}")
    result = asyncio.run(ssh_pveversion(
        cred["host"], cred["port"], cred["username"], cred["host_key"],
        password=secret if cred["auth_kind"] == "password" else None,
        private_key=secret if cred["auth_kind"] == "key" else None, timeout=ctx.ops.tuning.ssh_timeout_s))
    return (f"SSH OK: pve-manager {result.version}, login in {result.latency_ms} ms",
            {"latency_ms": result.latency_ms, "command_ms": result.command_ms, "version": result.version,
             "pveversion": result.output[:300], "host": cred["host"], "port": cred["port"],
             "host_key_fingerprint": result.host_key_fingerprint})


def run_service_restart(ctx: Context) -> tuple[str, dict]:
    service = ctx.params.get("service")
    if service not in SERVICES:  # enqueue refuses these; a hand-made row must not reach PVE either
        raise OperationFailed(f"{service!r} is not a service PVE can restart", "config")
    node = ctx.resolve_node()
    what = f"Restarting {service} on {node}"
    ctx.progress(2, what)
    # For manual test: pvesh create /nodes/<node>/services/<service>/restart
    upid = ctx.pve("POST", f"nodes/{node}/services/{service}/restart")
    ctx.set_task(str(upid), node)
    started = time.monotonic()
    exitstatus, _ = ctx.follow_task(node, str(upid), what)
    warnings = ctx.task_outcome(exitstatus, what)
    took = time.monotonic() - started
    return (f"{service} on {node} restarted in {took:.0f} s" + (f" ({warnings})" if warnings else ""),
            {**ctx.metadata, "duration_s": round(took, 1)})


def run_certificate_renewal(ctx: Context) -> tuple[str, dict]:
    node = ctx.resolve_node()
    order = bool(ctx.params.get("order"))
    ctx.progress(2, "Ordering a new certificate" if order else "Requesting the renewal")
    extra = {"force": 1} if ctx.params.get("force") else {}
    # For manual test: pvesh set /nodes/<node>/certificates/acme/certificate   (create: a new order)
    upid = ctx.pve("POST" if order else "PUT", f"nodes/{node}/certificates/acme/certificate", **extra)
    ctx.set_task(str(upid), node)
    exitstatus, _ = ctx.follow_task(node, str(upid), "Renewing the certificate", on_line=certificate_step)
    what = f"The certificate {'order' if order else 'renewal'} of {node}"
    warnings = ctx.task_outcome(exitstatus, what)
    meta = dict(ctx.metadata)
    notafter = None
    try:
        info = ctx.pve("GET", f"nodes/{node}/certificates/info")
        cert = next((c for c in info or [] if isinstance(c, dict) and c.get("filename") == ACME_CERT_FILE), None)
        if cert and cert.get("notafter"):
            notafter = datetime.fromtimestamp(int(cert["notafter"]), timezone.utc)
            meta.update(notafter=notafter.isoformat(), fingerprint=cert.get("fingerprint"))
    except PveError as exc:  # the renewal worked; reading the new expiry is a nicety
        log.info("certificate info of %s after renewal: %s", node, exc.message)
    until = f"; valid until {notafter:%Y-%m-%d}" if notafter else ""
    return (f"Certificate of {node} renewed{until}" + (f" ({warnings})" if warnings else ""), meta)


def run_power(ctx: Context) -> tuple[str, dict]:
    action = ctx.op["operation_type"]
    vmid, kind, node = ctx.params.get("vmid"), ctx.params.get("guest_type"), ctx.params.get("node")
    if action not in POWER_ACTIONS or kind not in ("qemu", "lxc") or not node or not vmid:
        raise OperationFailed(f"the {action} request names no known guest", "config")
    doing, done = POWER_WORDS[action]
    label = guest_label(ctx.params)
    what = f"{doing} {label} on {node}"
    ctx.progress(2, what)
    # For manual test: pvesh create /nodes/<node>/qemu/<vmid>/status/start
    upid = ctx.pve("POST", f"nodes/{node}/{kind}/{vmid}/status/{action}")
    ctx.set_task(str(upid), node)
    exitstatus, _ = ctx.follow_task(node, str(upid), what)
    warnings = ctx.task_outcome(exitstatus, f"{doing} {label}")
    meta = dict(ctx.metadata)
    try:
        current = ctx.pve("GET", f"nodes/{node}/{kind}/{vmid}/status/current")
        if isinstance(current, dict):
            meta["guest_status"] = current.get("status")
    except PveError as exc:
        log.info("status of %s after %s: %s", label, action, exc.message)
    if meta.get("guest_status"):
        ctx.progress(98, "Updating the guest list")
        meta["guest_row"] = follow_guest_row(ctx, int(vmid), meta["guest_status"])
    state = f" (now {meta['guest_status']})" if meta.get("guest_status") else ""
    return (f"{label[0].upper()}{label[1:]} {done}{state}" + (f" ({warnings})" if warnings else ""), meta)


def follow_guest_row(ctx: Context, vmid: int, status: str, within_s: float = 10.0) -> str:
    """Make the guest's row (public.guests, kept by worker.inventory) show the new state: sync the
    server's guests now, and again while /cluster/resources still lags behind (it trails reality by
    a few seconds). Returns the row's status, or a note when it could not be brought along."""
    sync = getattr(inventory, "sync_guests", None)
    if sync is None:
        return "not synced: worker.inventory has no guest sync"
    deadline = time.monotonic() + within_s
    row_status = None
    while True:
        try:
            sync(ctx.ops.poller, str(ctx.op["server_id"]))
            with ctx.ops.pool.connection() as conn:
                row = conn.execute(db.q("ops_guest_status"), {"server_id": ctx.op["server_id"], "vmid": vmid}).fetchone()
            row_status = row["status"] if row else None
        except Exception as exc:  # noqa: BLE001 - the power action itself succeeded
            log.warning("guest sync after a power action on %s failed: %s", ctx.where, exc)
            return f"not synced: {exc}"
        if row_status == status or time.monotonic() > deadline:
            return row_status or "gone"
        time.sleep(1.0)


HANDLERS: dict[str, Callable[[Context], tuple[str, dict]]] = {
    "ssh_test": run_ssh_test, "service_restart": run_service_restart,
    "certificate_renewal": run_certificate_renewal,
    **{action: run_power for action in POWER_ACTIONS},
}
