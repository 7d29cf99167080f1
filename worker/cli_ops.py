"""`proxwatch ops`: request operations and follow them, list them, set a server's SSH access.

    proxwatch ops request pve1 service_restart --param service=pveproxy [--node pve1] [--no-wait]
    proxwatch ops request pve1 certificate_renewal [--param force=true]
    proxwatch ops request pve1 start --param vmid=100
    proxwatch ops request pve1 ssh_test
    proxwatch ops list [pve1] [--status running] [--type ssh_test]
    proxwatch ops show OPERATION_ID
    proxwatch ops ssh-set pve1 --host 10.0.0.5 --user root --host-key-file ssh_host_ed25519_key.pub --key-file id_ed25519
    proxwatch ops ssh-set pve1 --host 10.0.0.5 --host-key-file ssh_host_ed25519_key.pub --password - < pw.txt

Bad input gets one sentence on stderr, exit code 2, and writes nothing; a failed operation exits 1.
(Self-contained on purpose: worker/cli.py imports this module while it is itself being imported.)
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn
from rich.table import Table

from worker import admin, db, operations, ssh
from worker.crypto import Box
from worker.admin import InputError
from worker.cli_common import STDIN, read_secret
from worker.cli_common import database as _database, fail as _fail, guarded_by
from worker.operations.registry import TYPES

ops_app = typer.Typer(help="Operations: SSH test, service restart, certificate renewal, guest power actions.",
                      no_args_is_help=True)
out = Console()
err = Console(stderr=True)

TYPE_HELP = ", ".join(TYPES[:-1]) + " or " + TYPES[-1]
RUNNING = ("pending", "in_progress")
STATUS_STYLE = {"pending": "yellow", "in_progress": "cyan", "completed": "green", "failed": "red"}
# After this long still pending, the follower says what is probably wrong.
NO_WORKER_HINT_S = 20


def register(app: typer.Typer) -> None:
    app.add_typer(ops_app, name="ops")


_guarded = guarded_by(operations.RequestRefused)


def _send(operation_id: str) -> None:
    """Hand the operation to the workers through the broker (Redis)."""
    from worker import actors

    actors.run_operation.send(str(operation_id))


# ------------------------------------------------------------------------------------- request
@ops_app.command("request")
@_guarded
def request(server: str = typer.Argument(..., metavar="SERVER", help="The server's name"),
            op_type: str = typer.Argument(..., metavar="TYPE", help=TYPE_HELP),
            node: Optional[str] = typer.Option(None, "--node", help="The node (default: the one the address answers on)"),
            param: List[str] = typer.Option([], "--param", help="KEY=VALUE: service=pveproxy, vmid=100, force=true"),
            no_wait: bool = typer.Option(False, "--no-wait", help="Print the operation and return at once"),
            tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Request an operation and follow its progress (an identical one already running is followed instead)."""
    params: dict = {}
    for text in param:
        try:
            key, value = parse_param(text)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        params[key] = value
    if node:
        params["node"] = node
    with _database() as (_, conn):
        srv = admin.find_server(conn, server, tenant)
        result = operations.enqueue(conn, srv["id"], op_type, params, "user")
        op_id = result["operationId"]
        if result["status"] == "started":
            operations.dispatched(conn, op_id)
        conn.commit()
        if result["status"] == "started":
            try:
                _send(op_id)
            except Exception as exc:  # noqa: BLE001 - the broker's errors vary (redis, settings)
                operations.fail_unsent(conn, op_id, f"no worker could be reached (the broker is unavailable: "
                                                    f"{exc.__class__.__name__}); start `proxwatch up` (or the worker "
                                                    "and the scheduler) and request it again")
                conn.commit()
                _fail(f"the operation could not be handed to a worker ({exc.__class__.__name__}): is `proxwatch up` "
                      "(or the worker) running?", 1)
            out.print(f"{op_type} on {escape(srv['name'])} started: operation {op_id}", highlight=False)
        else:
            existing = result["existingOperation"]
            out.print(f"already running: {existing['operationType']} on {escape(srv['name'])}, operation {op_id} "
                      f"({existing['progress']} %, {escape(existing['message'] or 'waiting')}, requested by "
                      f"{existing.get('createdBy', 'user')})", highlight=False)
        if no_wait:
            return
        row = follow(conn, op_id)
    if row["status"] == "completed":
        out.print(f"[green]✓[/green] {escape(row['message'] or '')}", highlight=False)
    else:
        err.print(f"[red]✗ {escape(row['message'] or 'failed')}:[/red] {escape(row['error'] or '')}", highlight=False)
        raise typer.Exit(1)


def follow(conn: psycopg.Connection, operation_id: str, interval_s: float = 0.5) -> dict:
    """Show the operation's progress until it ends (a rich progress bar); the final row."""
    hinted = False
    started = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[remaining]}"), console=out, transient=False) as bar:
        task = bar.add_task("waiting for a worker", total=100, remaining="")
        while True:
            row = conn.execute(db.q("ops_get"), {"id": operation_id}).fetchone()
            conn.rollback()  # a fresh snapshot next time; no transaction left open
            left = remaining_s(row)
            bar.update(task, completed=row["progress"], description=row["message"] or row["status"],
                       remaining=f"{clock(left)} remaining" if left is not None and
                       row["operation_type"] == "service_restart" else "")
            if row["status"] in ("completed", "failed"):
                return row
            if row["status"] == "pending" and not hinted and time.monotonic() - started > NO_WORKER_HINT_S:
                hinted = True
                err.print("still waiting for a worker: is `proxwatch up` (or the worker and the scheduler) running?")
            time.sleep(interval_s)


# ---------------------------------------------------------------------------------- list, show
@ops_app.command("list")
@_guarded
def list_(server: Optional[str] = typer.Argument(None, help="Only this server's operations"),
          status: Optional[str] = typer.Option(None, "--status", help="running, pending, in_progress, completed, failed"),
          op_type: Optional[str] = typer.Option(None, "--type", help=TYPE_HELP),
          limit: int = typer.Option(50, "--limit", min=1, max=1000),
          as_json: bool = typer.Option(False, "--json"),
          tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Running and past operations, newest first."""
    if status and status not in ("running", "pending", "in_progress", "completed", "failed"):
        raise InputError(f"unknown status {status!r}: use running, pending, in_progress, completed or failed")
    if op_type and op_type not in TYPES:
        raise InputError(f"unknown operation type {op_type!r}: use {TYPE_HELP}")
    with _database() as (_, conn):
        sid = admin.find_server(conn, server, tenant)["id"] if server is not None else None
        if tenant is not None:
            admin.tenant(conn, tenant)      # an unknown (or empty) tenant is a sentence, not an empty list
        rows = conn.execute(db.q("ops_list"), {"server_id": sid, "tenant": tenant, "status": status,
                                               "type": op_type, "limit": limit}).fetchall()
    if as_json:
        print(json.dumps([{k: (str(v) if v is not None and not isinstance(v, (int, float, str, bool)) else v)
                           for k, v in r.items()} for r in rows], indent=2))
        return
    if not rows:
        out.print("no operations yet: request one with `proxwatch ops request SERVER TYPE`")
        return
    table = Table("started", "server", "operation", "target", "status", "progress", "by", "result", "id")
    for r in rows:
        st = r["status"]
        table.add_row(r["started_at"].strftime("%Y-%m-%d %H:%M:%S"), escape(r["server_name"]), r["operation_type"],
                      escape(r["target"] or "(default node)"), f"[{STATUS_STYLE[st]}]{st}[/]", f"{r['progress']} %",
                      r["created_by"], escape((r["error"] if st == "failed" else r["message"]) or ""), str(r["id"]))
    out.print(table)


@ops_app.command("show")
@_guarded
def show(operation_id: str) -> None:
    """Everything about one operation: state, PVE task, what it learned, the error."""
    import uuid

    try:
        uuid.UUID(operation_id)
    except ValueError:
        raise InputError(f"{operation_id!r} is not an operation id (a UUID, from `proxwatch ops list`)") from None
    with _database() as (_, conn):
        row = conn.execute(db.q("ops_get"), {"id": operation_id}).fetchone()
    if row is None:
        raise InputError(f"there is no operation {operation_id}")
    for key in ("id", "server_name", "operation_type", "status", "node", "target", "progress", "message", "error",
                "created_by", "upid", "estimated_duration_ms", "started_at", "claimed_at", "completed_at"):
        if row[key] is not None:
            out.print(f"[bold]{key}[/bold]: {escape(str(row[key]))}", highlight=False)
    if row["params"]:
        out.print(f"[bold]params[/bold]: {escape(json.dumps(row['params']))}", highlight=False)
    if row["metadata"]:
        out.print(f"[bold]metadata[/bold]: {escape(json.dumps(row['metadata'], indent=2))}", highlight=False)


# ------------------------------------------------------------------------------------- ssh-set
@ops_app.command("ssh-set")
@_guarded
def ssh_set(server: str,
            host: str = typer.Option(..., "--host", help="The node's SSH address"),
            user: str = typer.Option("root", "--user"),
            port: int = typer.Option(22, "--port"),
            host_key: Optional[str] = typer.Option(None, "--host-key", help="'ssh-ed25519 AAAA…' of the node"),
            host_key_file: Optional[Path] = typer.Option(None, "--host-key-file", help="e.g. ssh_host_ed25519_key.pub"),
            scan: bool = typer.Option(False, "--scan", help="Read the host key from the node now (check its fingerprint!)"),
            yes: bool = typer.Option(False, "--yes", help="With --scan: trust the key without asking"),
            password: Optional[str] = typer.Option(None, "--password", help="The SSH password; '-' reads it from "
                                                   "standard input (or --password-file, or $PROXWATCH_SSH_PASSWORD)"),
            password_file: Optional[Path] = typer.Option(None, "--password-file",
                                                         help="Read the SSH password from this file (its first line)"),
            password_stdin: bool = typer.Option(False, "--password-stdin",
                                                help="Read the SSH password from standard input"),
            key_file: Optional[Path] = typer.Option(None, "--key-file", help="A private key without passphrase"),
            node: str = typer.Option("", "--node", help="Only for this node (default: every node of the server)"),
            tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Set how ssh_test reaches a server's nodes: address, user, pinned host key, password or key (stored encrypted)."""
    from worker import settings as settings_mod

    if password_stdin or password == STDIN:
        if scan and not yes:
            raise InputError("--scan asks on standard input: with the password on standard input, add --yes "
                             "(after checking the fingerprint) or use --password-file")
    password = read_secret("SSH password", password, from_stdin=password_stdin, file=password_file,
                           env_name="PROXWATCH_SSH_PASSWORD",
                           env_value=None if key_file else settings_mod.load().cli_secrets.ssh_password)
    if sum(bool(x) for x in (host_key, host_key_file, scan)) != 1:
        raise InputError("give the node's host key with exactly one of --host-key, --host-key-file or --scan")
    if host_key_file:
        host_key = _read(host_key_file, "host key file")
    private_key = _read(key_file, "key file") if key_file else None
    if scan:
        try:
            host_key = asyncio.run(ssh.fetch_host_key(host, port))
        except ssh.SshError as exc:
            raise InputError(f"the host key could not be read: {exc.message}") from None
        out.print(f"{host}:{port} presents {host_key.split()[0]} {ssh.fingerprint(host_key)}", highlight=False)
        if not yes and not typer.confirm("Is this the node's key (compare with `ssh-keygen -lf "
                                         "/etc/ssh/ssh_host_ed25519_key.pub` on the node)?"):
            raise InputError("the host key was not trusted; nothing was stored")
    with _database() as (ep, conn):
        srv = admin.find_server(conn, server, tenant)
        try:
            stored = ssh.set_credentials(conn, Box(ep.secret_key), srv["id"], host=host, username=user,
                                         host_key=host_key, port=port, password=password,
                                         private_key=private_key, node=node)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        conn.commit()
    scope = f"node {node}" if node else "its nodes"
    out.print(f"SSH access of {escape(srv['name'])} ({scope}) set: "
              f"{stored['username']}@{stored['host']}:{stored['port']}, "
              f"{stored['auth_kind']} login, host key pinned ({stored['fingerprint']})", highlight=False)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"the {what} {str(path)[:200]!r} cannot be read: {reason}") from None


# ---------------------------------------------------------------------------------- formatting
def remaining_s(row: dict, now: datetime | None = None) -> float | None:
    """Seconds left by the estimate (never below 0), for a running operation; None otherwise."""
    if row.get("status") not in RUNNING or not row.get("estimated_duration_ms") or not row.get("started_at"):
        return None
    now = now or row.get("db_now") or row.get("now") or datetime.now(timezone.utc)
    elapsed = (now - row["started_at"]).total_seconds()
    return max(0.0, row["estimated_duration_ms"] / 1000 - elapsed)


def clock(seconds: float) -> str:
    """4:32 — minutes and seconds, as the dashboard's buttons count down: "Restarting… (4:32 remaining)"."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def parse_param(text: str) -> tuple[str, object]:
    """'KEY=VALUE' of the CLI → (key, value): true/false become booleans, digits integers."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE (for example --param service=pveproxy)")
    value = value.strip()
    if value.lower() in ("true", "yes", "1") and key in ("force", "order"):
        return key, True
    if value.lower() in ("false", "no", "0") and key in ("force", "order"):
        return key, False
    if re.fullmatch(r"[0-9]+", value) and key == "vmid":
        return key, int(value)
    return key, value
