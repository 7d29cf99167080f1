"""The `proxwatch` command.

Bad input gets one clear sentence on stderr and exit code 2, and writes nothing.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker import admin, db, runtime, settings as settings_mod
from worker.crypto import Box

app = typer.Typer(help="proxwatch: one live place for a fleet of Proxmox VE servers.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (a team, a customer).", no_args_is_help=True)
users_app = typer.Typer(help="Users who sign in to the dashboard.", no_args_is_help=True)
servers_app = typer.Typer(help="Proxmox VE servers to watch.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenants_app, name="tenants")
app.add_typer(users_app, name="users")
app.add_typer(servers_app, name="servers")

out = Console()
err = Console(stderr=True)

STATUS_STYLE = {"online": "green", "degraded": "yellow", "offline": "red", "unknown": "dim"}


from worker.cli_common import STDIN, SecretError, database, fail, guarded, read_secret  # noqa: E402

SECRET_HELP = "'-' reads it from standard input (or use the -stdin / -file options, or the environment)"


def _token_options():
    return (typer.Option(None, "--token", help=f"USER@REALM!TOKENID=SECRET (preferred); {SECRET_HELP}"),
            typer.Option(None, "--token-file", help="Read the API token from this file (its first line)"),
            typer.Option(False, "--token-stdin", help="Read the API token from standard input"))


def _password_options(what: str, rule: str = ""):
    return (typer.Option(None, "--password", help=f"The {what}{rule}; {SECRET_HELP}"),
            typer.Option(None, "--password-file", help=f"Read the {what} from this file (its first line)"),
            typer.Option(False, "--password-stdin", help=f"Read the {what} from standard input"))


def server_secrets(token, token_file, token_stdin, user, password, password_file, password_stdin,
                   use_environment: bool = True) -> tuple[str | None, str | None]:
    """(token, password) from the options, standard input, files — or, when use_environment and no
    option gives them, $PROXWATCH_PVE_TOKEN (without --user) / $PROXWATCH_PVE_PASSWORD (with --user)."""
    if (token_stdin or token == STDIN) and (password_stdin or password == STDIN):
        raise SecretError("only one secret can come from standard input: give the other with a -file option")
    env = settings_mod.load().cli_secrets if use_environment else None
    token_given = token is not None or token_file is not None or token_stdin
    password_given = password is not None or password_file is not None or password_stdin
    token = read_secret("API token", token, from_stdin=token_stdin, file=token_file, env_name="PROXWATCH_PVE_TOKEN",
                        env_value=env.pve_token if env and not user and not password_given else None)
    password = read_secret("password", password, from_stdin=password_stdin, file=password_file,
                           env_name="PROXWATCH_PVE_PASSWORD",
                           env_value=env.pve_password if env and user and not token_given else None)
    return token, password


# ------------------------------------------------------------------------------------------ db
@db_app.command("migrate")
@guarded
def db_migrate() -> None:
    """Apply sql/compat.sql (where needed) and supabase/migrations with the supabase CLI."""
    from worker.embedded import system

    s = settings_mod.load()
    if s.embedded:
        with system.attached(s, always_migrate=True) as report:
            pass
    else:
        report = db.migrate(runtime.endpoints(s).database_url, s.home / "supabase-cli")
    out.print(report)


@db_app.command("prune")
@guarded
def db_prune(dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed")) -> None:
    """Prune the history tiers now (what the hourly purge job does): raw partitions past
    PROXWATCH_RAW_RETENTION_DAYS, hourly and daily rollup rows past theirs."""
    from worker import retention

    with database(default_tenant=False) as (_, conn):
        r = settings_mod.load().retention
        pruned = retention.prune(conn, r, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"raw polls (kept {r.raw_days} days): {verb} {len(pruned.partitions)} partition(s)"
              + (" — skipped: another pruner is at work" if pruned.raw_skipped else ""))
    for p in pruned.partitions:
        rows = "? rows (not analyzed yet)" if p.estimated_rows is None else f"~{p.estimated_rows:,} rows"
        out.print(f"  {p.name}  {p.day}  {rows}  {p.bytes / 1e6:.1f} MB" + ("" if p.state == "attached"
                                                                          else f"  ({p.state})"))
    out.print(f"hourly rollup (kept {r.hourly_days} days): {verb} {pruned.hourly_rows:,} rows")
    out.print(f"daily rollup (kept {f'{r.daily_days} days' if r.daily_days else 'forever'}): "
              f"{verb} {pruned.daily_rows:,} rows")


# ------------------------------------------------------------------------------------- tenants
@tenants_app.command("add")
@guarded
def tenants_add(name: str) -> None:
    """Create a tenant."""
    from worker.embedded import system

    with database(default_tenant=False) as (ep, conn):
        row = admin.add_tenant(conn, name)
        if settings_mod.load().embedded:
            system.ensure_local_admin(conn, ep)
    out.print(f"tenant [bold]{escape(row['name'])}[/bold] created ({row['id']})")


@tenants_app.command("list")
@guarded
def tenants_list() -> None:
    with database() as (_, conn):
        rows = conn.execute(db.q("tenants_list")).fetchall()
    table = Table("tenant", "servers", "id")
    for r in rows:
        table.add_row(escape(r["name"]), str(r["servers"]), str(r["id"]))
    out.print(table)


# --------------------------------------------------------------------------------------- users
@users_app.command("add")
@guarded
def users_add(email: str,
              password: Optional[str] = _password_options("password", " (8 characters to 72 bytes)")[0],
              password_file: Optional[Path] = _password_options("password", " (8 characters to 72 bytes)")[1],
              password_stdin: bool = _password_options("password", " (8 characters to 72 bytes)")[2],
              tenant: str = typer.Option(..., "--tenant"),
              role: str = typer.Option("viewer", "--role", help="admin, operator or viewer")) -> None:
    """Create (or update) a user who can sign in, and make them a member of a tenant.

    The password comes from standard input (`--password -`), a file or $PROXWATCH_USER_PASSWORD
    rather than the command line, where every local user sees it in the process list."""
    s = settings_mod.load()
    password = read_secret("password", password, from_stdin=password_stdin, file=password_file,
                           env_name="PROXWATCH_USER_PASSWORD", env_value=s.cli_secrets.user_password)
    if password is None:
        fail("give the password: --password - (standard input), --password-file FILE or $PROXWATCH_USER_PASSWORD")
    admin.check_email(email)
    admin.check_password(password)
    if not s.embedded and s.supabase_url and s.supabase_service_key:
        from worker.supabase_admin import add_user_via_auth_api

        with database() as (_, conn):
            row = add_user_via_auth_api(conn, s, email, password, tenant, role)
    else:
        with database() as (_, conn):
            row = admin.add_user(conn, email, password, tenant, role)
    out.print(f"user [bold]{escape(row['email'])}[/bold] is {row['role']} of tenant {escape(row['tenant'])}")


# ------------------------------------------------------------------------------------- servers
@servers_app.command("add")
@guarded
def servers_add(
    name: str, url: str,
    token: Optional[str] = _token_options()[0],
    token_file: Optional[Path] = _token_options()[1],
    token_stdin: bool = _token_options()[2],
    user: Optional[str] = typer.Option(None, "--user", help="USER@REALM for password login"),
    password: Optional[str] = _password_options("PVE password")[0],
    password_file: Optional[Path] = _password_options("PVE password")[1],
    password_stdin: bool = _password_options("PVE password")[2],
    fallback_url: Optional[str] = typer.Option(None, "--fallback-url", help="Tried when URL fails to connect"),
    fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="SHA-256 of the server's certificate"),
    insecure: bool = typer.Option(False, "--insecure", help="Do not verify TLS at all (shown as insecure)"),
    tenant: Optional[str] = typer.Option(None, "--tenant"),
    interval: int = typer.Option(10, "--interval", help="Seconds between polls"),
) -> None:
    """Add a Proxmox VE server to watch. Its secret is stored encrypted.

    Give the secret on standard input (`--token -`), in a file or in $PROXWATCH_PVE_TOKEN rather
    than on the command line, where every local user sees it in the process list."""
    token, password = server_secrets(token, token_file, token_stdin, user, password, password_file, password_stdin)
    with database() as (ep, conn):
        row = admin.add_server(conn, Box(ep.secret_key), admin.ServerInput(
            name=name, url=url, token=token, user=user, password=password, fallback_url=fallback_url,
            fingerprint=fingerprint, insecure=insecure, tenant=tenant, interval=interval))
    tls = {"pinned": "pinned fingerprint", "insecure": "[red]INSECURE: TLS not verified[/red]",
           "verify": "verified by system CAs"}[row["tls_mode"]]
    out.print(f"server [bold]{escape(row['name'])}[/bold] added to tenant {escape(row['tenant'])}: "
              f"{escape(row['base_url'])}, "
              f"{row['auth_kind']} auth, TLS {tls}")


@servers_app.command("list")
@guarded
def servers_list(tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """The servers and their status."""
    with database() as (_, conn):
        rows = admin.list_servers(conn, tenant)
    if not rows:
        out.print("no servers yet: add one with `proxwatch servers add NAME https://HOST:8006 --token …`")
        return
    table = Table("tenant", "name", "url", "status", "last check", "avg ms", "24 h ok", "version", "nodes", "TLS")
    for r in rows:
        st = r["connection_status"]
        table.add_row(escape(r["tenant"]), escape(r["name"]), escape(r["base_url"]),
                      f"[{STATUS_STYLE[st]}]{st}[/]",
                      ago(r["last_poll_at"] or r["last_health_check_at"]), fmt(r["avg_response_time_ms"]),
                      fmt(r["success_rate"], "%"), r["pve_version"] or "–",
                      f"{r['nodes_online']}/{r['nodes_total']}" if r["nodes_total"] else "–",
                      "[red]insecure[/red]" if r["tls_mode"] == "insecure" else r["tls_mode"])
    out.print(table)


@servers_app.command("update")
@guarded
def servers_update(
    name: str,
    tenant: Optional[str] = typer.Option(None, "--tenant"),
    rename: Optional[str] = typer.Option(None, "--rename", help="A new name"),
    url: Optional[str] = typer.Option(None, "--url", help="A new address https://HOST[:PORT]"),
    fallback_url: Optional[str] = typer.Option(None, "--fallback-url", help="A new fallback address ('' removes it)"),
    fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="Pin this SHA-256 certificate fingerprint"),
    tls: Optional[str] = typer.Option(None, "--tls", help="verify, pinned or insecure"),
    token: Optional[str] = _token_options()[0],
    token_file: Optional[Path] = _token_options()[1],
    token_stdin: bool = _token_options()[2],
    user: Optional[str] = typer.Option(None, "--user", help="New credentials: USER@REALM for password login"),
    password: Optional[str] = _password_options("PVE password")[0],
    password_file: Optional[Path] = _password_options("PVE password")[1],
    password_stdin: bool = _password_options("PVE password")[2],
    interval: Optional[int] = typer.Option(None, "--interval", help="Seconds between polls"),
    enabled: Optional[bool] = typer.Option(None, "--enable/--disable", help="Poll it or not"),
) -> None:
    """Change a server. A new address or TLS setting drops its stored credentials unless new ones are given.

    $PROXWATCH_PVE_TOKEN / $PROXWATCH_PVE_PASSWORD are used when the change needs new credentials (a
    new address or TLS setting) or when nothing else is changed (replacing the credentials)."""
    reach = any(v is not None for v in (url, fallback_url, fingerprint, tls))
    other = any(v is not None for v in (rename, interval, enabled))
    token, password = server_secrets(token, token_file, token_stdin, user, password, password_file, password_stdin,
                                     use_environment=reach or not other)
    with database() as (ep, conn):
        row = admin.update_server(conn, Box(ep.secret_key), name, tenant, rename=rename, url=url,
                                  fallback_url=fallback_url, fingerprint=fingerprint, tls_mode=tls, token=token,
                                  user=user, password=password, interval=interval, enabled=enabled)
    out.print(f"server [bold]{escape(row['name'])}[/bold] of tenant {escape(row['tenant'])}: "
              f"{escape(row['base_url'])}, "
              f"TLS {row['tls_mode']}")
    if row["trust_dropped"]:
        out.print("[yellow]the pinned fingerprint was for the old address: TLS is verified by system CAs now "
                  "(pin the new one with --fingerprint)[/yellow]")
    if row["credentials_dropped"]:
        out.print("[yellow]its credentials were for the old address or TLS setting and were removed: "
                  "give new ones with --token (or --user/--password) before it can be polled[/yellow]")


@servers_app.command("remove")
@guarded
def servers_remove(name: str, tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Remove a server, its credentials and its history."""
    with database() as (_, conn):
        row = admin.remove_server(conn, name, tenant)
    out.print(f"server [bold]{escape(row['name'])}[/bold] removed from tenant {escape(row['tenant'])}")


# ---------------------------------------------------------------------------------------- poll
@app.command("poll")
@guarded
def poll(name: Optional[str] = typer.Argument(None, help="One server (default: all)"),
         once: bool = typer.Option(False, "--once", help="Poll now in this process, record and print"),
         tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Poll servers now; exit 0 when every poll ran, whatever the servers answered."""
    from worker.polling import Poller, Recorder, poll_all_once

    if not once:
        fail("only `poll --once` exists: continuous polling is `proxwatch up` (or the worker and scheduler)")
    s = settings_mod.load()
    with database() as (ep, conn):
        if name is not None:
            ids = [str(admin.find_server(conn, name, tenant)["id"])]
        else:
            ids = [str(r["id"]) for r in admin.list_servers(conn, tenant)]
        if not ids:
            out.print("no servers to poll")
            return
        pool = db.make_pool(ep.database_url, min_size=1, max_size=2)
        try:
            results = poll_all_once(Poller(pool, Box(ep.secret_key), s), Recorder(pool, s), ids)
        finally:
            pool.close()
    table = Table("server", "result", "ms", "fallback", "detail")
    for r in sorted(results, key=lambda r: r.server_name or ""):
        table.add_row(escape(r.server_name or ""), "[green]ok[/green]" if r.success else f"[red]{r.error_kind}[/red]",
                      fmt(r.response_time_ms), "yes" if r.used_fallback else "",
                      escape(f"PVE {r.pve_version}, {r.nodes_online}/{r.nodes_total} nodes online" if r.success
                             else r.error_message or ""))
    out.print(table)


# ------------------------------------------------------------------------------------- history
@app.command("history")
@guarded
def history(name: str,
            hours: Optional[int] = typer.Option(None, "--hours", min=1, max=8784,
                                                help="The last N hours (≤ 2: per minute; ≤ 336: per hour; else per day)"),
            days: Optional[int] = typer.Option(None, "--days", min=1, max=366, help="The last N days (= 24·N hours)"),
            as_json: bool = typer.Option(False, "--json", help="connection_history()'s JSON"),
            as_csv: bool = typer.Option(False, "--csv", help="One line per bucket: time,attempts,success_rate,avg_ms"),
            tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Success rate and latency of one server over a window of up to a year (connection_history),
    per minute, hour or day — the coarsest tier that answers the window."""
    if hours is not None and days is not None:
        fail("give --hours or --days, not both")
    if as_json and as_csv:
        fail("give --json or --csv, not both")
    window = days * 24 if days is not None else hours if hours is not None else 24
    with database() as (_, conn):
        sid = admin.find_server(conn, name, tenant)["id"]
        data = conn.execute("select public.connection_history(%s, %s) as h", (sid, window)).fetchone()["h"]
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["time", "bucket", "attempts", "success_rate", "avg_response_ms"])
        for h in data["hourly"]:
            writer.writerow([h["time"], data["bucket"], h["attempts"], "" if h["successRate"] is None
                             else h["successRate"], "" if h["avgResponseTime"] is None else h["avgResponseTime"]])
        return
    span = f"{days} days" if days is not None else f"{window} h"
    table = Table(f"{data['bucket']} (UTC)", "attempts", "success", "avg ms",
                  title=f"{name}: last {span}, per {data['bucket']}")
    cut = {"minute": 16, "hour": 16, "day": 10}[data["bucket"]]
    for h in data["hourly"]:
        rate = h["successRate"]
        style = "dim" if rate is None else "green" if rate >= 99 else "yellow" if rate >= 80 else "red"
        table.add_row(h["time"][:cut].replace("T", " "), str(h["attempts"]), f"[{style}]{fmt(rate, '%')}[/]",
                      fmt(h["avgResponseTime"]))
    out.print(table)
    sm = data["summary"]
    rate = 100.0 * sm["successCount"] / sm["totalAttempts"] if sm["totalAttempts"] else None
    out.print(f"{sm['totalAttempts']} polls, {fmt(rate and round(rate, 1), '%')} answered, "
              f"average {fmt(sm['avgResponseTime'], ' ms')} (per {data['bucket']})")


# ----------------------------------------------------------------------------------- incidents
@app.command("incidents")
@guarded
def incidents(open_only: bool = typer.Option(False, "--open", help="Only the incidents still open"),
              server: Optional[str] = typer.Option(None, "--server", help="Only this server's"),
              tenant: Optional[str] = typer.Option(None, "--tenant", help="The tenant of --server"),
              limit: int = typer.Option(50, "--limit", min=1, max=1000, help="At most this many, newest first"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Outage periods, newest first: when a server went offline or degraded, when it recovered, why."""
    with database() as (_, conn):
        sid = admin.find_server(conn, server, tenant)["id"] if server is not None else None
        rows = conn.execute(db.q("incidents_list"), {"server_id": sid, "open_only": open_only,
                                                     "limit": limit}).fetchall()
    if as_json:
        print(json.dumps([{**r, "id": str(r["id"]), "server_id": str(r["server_id"]),
                           "tenant_id": str(r["tenant_id"]),
                           "started_at": r["started_at"].isoformat(),
                           "ended_at": r["ended_at"].isoformat() if r["ended_at"] else None} for r in rows],
                         indent=2))
        return
    if not rows:
        out.print("no open incidents" if open_only else "no incidents")
        return
    table = Table("server", "kind", "started (UTC)", "ended (UTC)", "duration", "first error")
    for r in rows:
        table.add_row(escape(r["server_name"]), f"[{STATUS_STYLE[r['status']]}]{r['status']}[/]",
                      f"{r['started_at']:%Y-%m-%d %H:%M:%S}",
                      f"{r['ended_at']:%Y-%m-%d %H:%M:%S}" if r["ended_at"] else "[red]open[/red]",
                      span(r["duration_s"]), escape(r["error_message"] or "–"))
    out.print(table)


# ------------------------------------------------------------------------------ up, demo, env
@app.command("up")
@guarded
def up() -> None:
    """Run everything in the foreground: database, broker, worker, scheduler, dashboard. Ctrl-C stops it."""
    from worker.embedded import system

    system.run(settings_mod.load(), demo=False)


@app.command("demo")
@guarded
def demo(servers: int = typer.Option(
        0, "--servers", min=0, max=5000,
        help="N more simulated servers beyond the six (a light simulator on 127.0.80.x addresses, over three"
             " tenants, polled every 30 s): a large fleet for the dashboard")) -> None:
    """`up` plus a simulated fleet of PVE servers (fakepve): healthy, slow, flapping and down."""
    from worker.embedded import system

    system.run(settings_mod.load(), demo=True, demo_servers=servers)


@app.command("env")
@guarded
def env() -> None:
    """Print the addresses and keys of the embedded system (for `eval $(proxwatch env)`)."""
    from worker.embedded.services import port_in_use

    s = settings_mod.load()
    ep = runtime.endpoints(s)
    print(f"DATABASE_URL={ep.database_url}")
    print(f"REDIS_URL={ep.redis or ''}")
    print(f"SUPABASE_URL={ep.supabase_url or ''}")
    print(f"SUPABASE_ANON_KEY={ep.anon_key or ''}")
    print(f"METRICS_URL={s.metrics.url}")
    if s.embedded and not port_in_use(s.pg_port):
        err.print("note: the embedded system is not running (start it with `proxwatch up`)")


# ------------------------------------------------------------------- commands of other modules
def _register_subcommands() -> None:
    """Command groups that live beside their modules (guests, sessions, ops …) join here."""
    import importlib

    for module in ("worker.cli_consoles", "worker.cli_ops", "worker.cli_alerts"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_register_subcommands()


# ------------------------------------------------------------------------------------- helpers
def fmt(value, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) or hasattr(value, "as_integer_ratio") and not isinstance(value, int):
        value = f"{float(value):.1f}".rstrip("0").rstrip(".")
    return f"{value}{unit}"


def ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    secs = (datetime.now(timezone.utc) - when).total_seconds()
    if secs < 60:
        return f"{max(0, int(secs))} s ago"
    if secs < 3600:
        return f"{int(secs // 60)} min ago"
    return f"{int(secs // 3600)} h ago"


def span(seconds: int | None) -> str:
    """A duration in its two largest units: 45 s, 12 min 5 s, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "–"
    s = max(0, int(seconds))
    units = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))
    i = next(i for i, (size, _) in enumerate(units) if s >= size or size == 1)
    size, name = units[i]
    text = f"{s // size} {name}"
    if size > 1:
        smaller, smaller_name = units[i + 1]
        text += f" {s % size // smaller} {smaller_name}"
    return text


def main() -> None:
    settings_mod.export("PYTHONUNBUFFERED", "1", default_only=True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
