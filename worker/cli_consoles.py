"""`proxwatch guests …` and `proxwatch sessions …`: the same SQL functions as the dashboard, run
with the service role (every team). Bad input gets one sentence on stderr, exit code 2, nothing written.

    proxwatch guests sync --once [SERVER]           sync now in this process and print what changed
    proxwatch guests list [SERVER] [--json]
    proxwatch sessions list [--all] [--protocol vnc|term|ssh] [--json]
    proxwatch sessions kill ID                      the full id or its first characters
    proxwatch sessions cleanup [--max-age 5m]       expire sessions without a heartbeat for that long
    proxwatch sessions stats [--json]
    proxwatch sessions limits [--max-total N] [--max-per-host N] [--grace 5m] [--retention 7d]
                              [--server NAME --max N | --server NAME --clear]
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker import admin, db, sessions
from worker.cli_common import database, fail, guarded_by

guests_app = typer.Typer(help="Guests (VMs and containers) of the servers.", no_args_is_help=True)
sessions_app = typer.Typer(help="Console and SSH sessions: list, kill, clean up, limits.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(guests_app, name="guests")
    app.add_typer(sessions_app, name="sessions")


out = Console()
err = Console(stderr=True)


guarded = guarded_by(ValueError)


def _ago(value) -> str:
    from worker.cli import ago
    return ago(value)


def _duration(text: str | None) -> timedelta | None:
    return None if text is None else sessions.parse_duration(text)


def _server_ids(conn, name: str | None, tenant: str | None) -> list[str]:
    if name is not None:     # "" is a name nobody has, not "all servers"
        return [str(admin.find_server(conn, name, tenant)["id"])]
    return [str(r["id"]) for r in admin.list_servers(conn, tenant)]


# --------------------------------------------------------------------------------------- guests
@guests_app.command("sync")
@guarded
def guests_sync(name: Optional[str] = typer.Argument(None, help="One server (default: all)"),
                once: bool = typer.Option(False, "--once", help="Sync now in this process and print the result"),
                tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Sync guests from PVE now (the worker does it every 30 s on its own)."""
    from worker import settings as settings_mod
    from worker.crypto import Box
    from worker.inventory import sync_guests
    from worker.polling import Poller

    if not once:
        fail("only `guests sync --once` exists: continuous syncing is `proxwatch up` (or the worker and scheduler)")
    with database() as (ep, conn):
        ids = _server_ids(conn, name, tenant)
        if not ids:
            out.print("no servers to sync")
            return
        pool = db.make_pool(ep.database_url, min_size=1, max_size=2)
        try:
            poller = Poller(pool, Box(ep.secret_key), settings_mod.load())
            results = [r for r in (sync_guests(poller, sid) for sid in ids) if r is not None]
        finally:
            pool.close()
    table = Table("server", "result", "guests", "changed", "removed", "skipped", "detail")
    for r in sorted(results, key=lambda r: r.server_name or ""):
        table.add_row(escape(r.server_name or ""),
                      f"[red]{r.error_kind}[/red]" if r.error_kind else "[green]ok[/green]",
                      str(r.guests) if not r.error_kind else "–", str(r.changed), str(r.removed),
                      f"[yellow]{r.skipped}[/yellow]" if r.skipped else "0",
                      escape(" ".join(filter(None, (r.error_message, r.skipped_detail)))))
    out.print(table)


@guests_app.command("list")
@guarded
def guests_list(name: Optional[str] = typer.Argument(None, help="One server (default: all)"),
                tenant: Optional[str] = typer.Option(None, "--tenant"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """The guests as last synced."""
    with database() as (_, conn):
        server_id = _server_ids(conn, name, tenant)[0] if name is not None else None
        if tenant is not None:
            admin.tenant(conn, tenant)      # an unknown (or empty) tenant is a sentence, not an empty list
        rows = conn.execute(db.q("guests_list"), {"server_id": server_id, "tenant": tenant}).fetchall()
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        out.print("no guests yet: they appear after the next sync (`proxwatch guests sync --once`)")
        return
    table = Table("tenant", "server", "vmid", "type", "node", "name", "status", "cpu", "mem", "tags", "up since")
    for r in rows:
        style = {"running": "green", "stopped": "dim"}.get(r["status"], "yellow")
        table.add_row(escape(r["tenant"]), escape(r["server"]), str(r["vmid"]), r["guest_type"], escape(r["node"]),
                      escape(r["name"] or ""), f"[{style}]{escape(r['status'])}[/]",
                      "–" if r["cpu_pct"] is None else f"{r['cpu_pct']} %",
                      "–" if r["mem_pct"] is None else f"{r['mem_pct']} %", escape(", ".join(r["tags"] or [])),
                      _ago(r["started_at"]) if r["started_at"] else "–")
    out.print(table)


# ------------------------------------------------------------------------------------- sessions
@sessions_app.command("list")
@guarded
def sessions_list(show_all: bool = typer.Option(False, "--all", help="Closed, expired and killed ones too"),
                  protocol: Optional[str] = typer.Option(None, "--protocol", help="vnc, term or ssh"),
                  limit: int = typer.Option(100, "--limit", min=1, max=500),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Open sessions (active_connections), or every kept one with --all."""
    with database() as (_, conn):
        if show_all:
            if protocol:
                fail("--protocol filters open sessions only; leave out --all")
            rows = conn.execute(db.q("recent_sessions"), {"limit": limit}).fetchall()
        else:
            rows = sessions.list_active(conn, protocol=protocol, limit=limit)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        out.print("no open sessions" if not show_all else "no sessions kept")
        return
    table = Table("id", "status", "protocol", "target", "server", "team", "user", "client", "since", "last seen")
    for r in rows:
        status = r.get("status") or "open"
        table.add_row(str(r["id"])[:8], status, r["protocol"], escape(r["target"] or ""), escape(r["server_name"]),
                      escape(r["team_name"]), escape(r.get("user_email") or "–"), str(r.get("client_ip") or "–"),
                      _ago(r["started_at"]),
                      _ago(r["last_seen_at"]) if status == "open" else escape(r.get("close_reason") or ""))
    out.print(table)


@sessions_app.command("kill")
@guarded
def sessions_kill(session_id: str = typer.Argument(..., help="The session id (or its first characters)")) -> None:
    """Kill an open session: its gateway drops it within 2 s."""
    prefix = session_id.strip().lower()
    if len(prefix) < 4:
        fail("give at least the first 4 characters of the session id (see `proxwatch sessions list`)")
    with database() as (_, conn):
        found = conn.execute(db.q("session_by_id_prefix"), {"prefix": prefix}).fetchall()
        conn.rollback()
        if not found:
            fail(f"there is no session {session_id!r}")
        if len(found) > 1:
            fail(f"several sessions start with {session_id!r}: give more characters")
        result = sessions.kill(conn, str(found[0]["id"]))
    out.print(f"session {result['id']} killed ({escape(result['close_reason'] or '')})")


@sessions_app.command("cleanup")
@guarded
def sessions_cleanup(max_age: Optional[str] = typer.Option(None, "--max-age",
                                                           help="e.g. 5m (default: the configured grace)")) -> None:
    """Expire open sessions without a heartbeat for --max-age (cleanup_stale_connections)."""
    age = _duration(max_age)
    with database() as (_, conn):
        count = sessions.cleanup(conn, age)
    out.print(f"{count} stale session{'s' if count != 1 else ''} expired")


@sessions_app.command("stats")
@guarded
def sessions_stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Attempts (successful, failed), open sessions per host, and the limits (session_stats)."""
    with database() as (_, conn):
        data = sessions.stats(conn)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    lim = data["limits"]
    out.print(f"{data['active']} open (max {lim['max_total']}) · {data['total']} attempts: {data['successful']} "
              f"opened, {data['failed']} failed · by protocol: "
              + ", ".join(f"{k} {v}" for k, v in data["by_protocol"].items()))
    table = Table("team", "server", "open", "max")
    for h in data["per_host"]:
        table.add_row(escape(h["team_name"]), escape(h["server_name"]), str(h["active"]), str(h["max"]))
    out.print(table)
    out.print(f"stale after {timedelta(seconds=lim['stale_after_s'])} without heartbeat; closed sessions kept "
              f"{timedelta(seconds=lim['retention_s'])}")


@sessions_app.command("limits")
@guarded
def sessions_limits(max_total: Optional[int] = typer.Option(None, "--max-total", help="Open sessions in all"),
                    max_per_host: Optional[int] = typer.Option(None, "--max-per-host",
                                                               help="Open sessions per server (default for all)"),
                    grace: Optional[str] = typer.Option(None, "--grace", help="Expire after this without heartbeat"),
                    retention: Optional[str] = typer.Option(None, "--retention", help="Keep closed sessions"),
                    server: Optional[str] = typer.Option(None, "--server", help="Set one server's own limit"),
                    server_max: Optional[int] = typer.Option(None, "--max", help="With --server: its limit"),
                    clear: bool = typer.Option(False, "--clear", help="With --server: back to --max-per-host"),
                    tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Show or change the limits (without options: show them)."""
    for label, value in (("--max-total", max_total), ("--max-per-host", max_per_host), ("--max", server_max)):
        if value is not None and not 1 <= value <= 100000:
            fail(f"{label} must be between 1 and 100000, not {value}")
    if (server_max is not None or clear) and not server:
        fail("--max and --clear need --server NAME")
    if server and (server_max is None) == (not clear):
        fail("with --server give either --max N or --clear")
    grace_td, retention_td = _duration(grace), _duration(retention)
    if retention_td is not None and retention_td < timedelta(minutes=1):
        fail("--retention must be at least 1 minute")
    with database() as (_, conn):
        if server:
            sid = admin.find_server(conn, server, tenant)["id"]
            if clear:
                conn.execute(db.q("clear_host_limit"), {"server_id": sid})
            else:
                conn.execute(db.q("set_host_limit"), {"server_id": sid, "max_sessions": server_max})
        if any(v is not None for v in (max_total, max_per_host, grace_td, retention_td)):
            conn.execute(db.q("update_session_settings"), {"max_total": max_total, "max_per_host": max_per_host,
                                                           "stale_after": grace_td, "retention": retention_td})
        conn.commit()
        cfg = conn.execute(db.q("session_settings")).fetchone()
        hosts = conn.execute(db.q("host_limits")).fetchall()
    out.print(f"at most {cfg['max_total']} open sessions in all, {cfg['max_per_host']} per server; expired after "
              f"{cfg['stale_after']} without heartbeat; closed sessions kept {cfg['retention']}")
    for h in hosts:
        out.print(f"  {escape(h['server_name'])}: at most {h['max_sessions']}")
