"""`proxwatch alerts …`: channels, rules, silences and the delivery log, with the service role (every
team). Bad input gets one sentence on stderr, exit code 2, nothing written. A channel's URL is a
secret (it carries passwords and tokens): it is read from standard input or a file as well as the
command line, stored encrypted, and only ever shown masked.

    proxwatch alerts channels add NAME URL|- [--url-file F] [--tenant T]
    proxwatch alerts channels list [--json] | remove NAME | test NAME
    proxwatch alerts rules list [--json]
    proxwatch alerts rules set [--server S | --tag T] [--offline/--no-offline] … [--latency-ms X --latency-polls N]
                               [--success-below Y] [--repeat 1h|off]
    proxwatch alerts silence SERVER | --tag T | --all --for 2h [--reason …] [--tenant T]
    proxwatch alerts silences list [--all] [--json] | remove ID
    proxwatch alerts log [--limit N] [--json]
    proxwatch alerts tags SERVER [TAG …] [--tenant T]   set a server's tags (none: clear them)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker import admin, alerts, db, sessions
from worker.cli_common import database, fail, guarded_by, read_secret

alerts_app = typer.Typer(help="Alerts: channels, rules, silences and the delivery log.", no_args_is_help=True)
channels_app = typer.Typer(help="Where alerts go (any Apprise URL).", no_args_is_help=True)
rules_app = typer.Typer(help="Which alerts are sent, per team, server or tag.", no_args_is_help=True)
silences_app = typer.Typer(help="Silences: problems recorded but not sent.", no_args_is_help=True)
alerts_app.add_typer(channels_app, name="channels")
alerts_app.add_typer(rules_app, name="rules")
alerts_app.add_typer(silences_app, name="silences")


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")


out = Console()
guarded = guarded_by(ValueError)


def _ago(value) -> str:
    from worker.cli import ago
    return ago(value)


def _channel(conn, name: str, tenant: Optional[str]) -> dict:
    rows = conn.execute(db.q("alert_channel_by_name"), {"name": name, "tenant": tenant}).fetchall()
    if not rows:
        raise alerts.AlertError(f"there is no alert channel named {name!r}" + (f" in tenant {tenant!r}" if tenant else ""))
    if len(rows) > 1:
        raise alerts.AlertError(f"several tenants have a channel named {name!r}: name the tenant with --tenant")
    return rows[0]


def _print_json(rows) -> None:
    print(json.dumps(rows, indent=2, default=str))


# ------------------------------------------------------------------------------------- channels
@channels_app.command("add")
@guarded
def channels_add(name: str = typer.Argument(..., help="A name for the channel, unique in its team"),
                 url: Optional[str] = typer.Argument(None, help="The Apprise URL, or - to read it from standard input"),
                 url_file: Optional[Path] = typer.Option(None, "--url-file", help="Read the URL from this file's first line"),
                 tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Add a channel: any Apprise URL (json://, mailto://, slack://, ntfy://, tgram://, …)."""
    from worker.crypto import Box

    secret = read_secret("channel URL", url, file=url_file)
    if secret is None:
        fail("give the channel URL: as an argument, - for standard input, or --url-file")
    with database() as (ep, conn):
        team = admin.tenant(conn, tenant)
        row = alerts.add_channel(conn, Box(ep.secret_key), team["id"], name, secret)
    out.print(f"added channel {escape(row['name'])} ({row['kind']}) to {escape(team['name'])}: "
              f"{escape(row['url_masked'])}", highlight=False)


@channels_app.command("list")
@guarded
def channels_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """The channels, their URLs masked, and whether they are failing."""
    with database() as (_, conn):
        rows = conn.execute(db.q("alert_channels_list")).fetchall()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("no alert channels yet: add one with `proxwatch alerts channels add NAME URL`")
        return
    table = Table("tenant", "name", "kind", "url", "state", "last success", "last error")
    for r in rows:
        state = f"[red]failing ({r['consecutive_failures']} failures)[/red]" if r["failing"] else \
            ("[yellow]failed last time[/yellow]" if r["consecutive_failures"] else "[green]ok[/green]")
        table.add_row(escape(r["tenant_name"]), escape(r["name"]), r["kind"], escape(r["url_masked"]), state,
                      _ago(r["last_success_at"]), escape(r["last_error"] or ""))
    out.print(table)


@channels_app.command("remove")
@guarded
def channels_remove(name: str, tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Remove a channel (its queued messages go with it; the log stays)."""
    with database() as (_, conn):
        channel = _channel(conn, name, tenant)
        conn.execute(db.q("alert_channel_remove"), {"id": channel["id"]})
        conn.commit()
    out.print(f"removed channel {escape(name)}")


@channels_app.command("test")
@guarded
def channels_test(name: str, tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Send a real test message and print what the service answered (secrets masked)."""
    from worker.crypto import Box

    with database() as (ep, conn):
        channel = _channel(conn, name, tenant)
        outcome = alerts.test_channel(conn, Box(ep.secret_key), channel)
    verdict = "[green]delivered[/green]" if outcome.ok else "[red]failed[/red]"
    out.print(f"{verdict} in {outcome.duration_ms} ms: {escape(outcome.answer)}", highlight=False)
    if not outcome.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------- rules
RULE_FIELDS = ("offline", "recovered", "degraded", "cert_expiry", "operation_failed")


@rules_app.command("list")
@guarded
def rules_list(tenant: Optional[str] = typer.Option(None, "--tenant"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """The rules; a team without one gets the defaults (offline, recovered, certificates, failed
    operations on; degraded off)."""
    with database() as (_, conn):
        if tenant is not None:
            tenant = admin.tenant(conn, tenant)["name"]   # an unknown name is an error, not an empty list
        rows = conn.execute(db.q("alert_rules_list"), {"tenant": tenant}).fetchall()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("no rules: every team gets the defaults (offline, back online, certificate expiring within 14 days"
                  " and failed operations on; degraded off)")
        return
    table = Table("tenant", "scope", *RULE_FIELDS, "latency", "success below", "repeat")
    for r in rows:
        scope = f"server {r['server_name']}" if r["server_id"] else (f"tag {r['tag']}" if r["tag"] else "team")
        table.add_row(escape(r["tenant_name"]), escape(scope), *("on" if r[f] else "off" for f in RULE_FIELDS),
                      f"> {r['latency_ms']} ms × {r['latency_polls']}" if r["latency_ms"] else "–",
                      f"{r['success_rate_pct']} %" if r["success_rate_pct"] else "–",
                      f"{r['repeat_interval_s']} s" if r["repeat_interval_s"] else "off")
    out.print(table)


@rules_app.command("set")
@guarded
def rules_set(tenant: Optional[str] = typer.Option(None, "--tenant"),
              server: Optional[str] = typer.Option(None, "--server", help="The rule of one server"),
              tag: Optional[str] = typer.Option(None, "--tag", help="The rule of the servers with this tag"),
              offline: Optional[bool] = typer.Option(None, "--offline/--no-offline"),
              recovered: Optional[bool] = typer.Option(None, "--recovered/--no-recovered"),
              degraded: Optional[bool] = typer.Option(None, "--degraded/--no-degraded"),
              cert_expiry: Optional[bool] = typer.Option(None, "--cert-expiry/--no-cert-expiry"),
              operation_failed: Optional[bool] = typer.Option(None, "--operation-failed/--no-operation-failed"),
              latency_ms: Optional[int] = typer.Option(None, "--latency-ms", min=0, max=600000,
                                                       help="Alert above this response time (0: off)"),
              latency_polls: Optional[int] = typer.Option(None, "--latency-polls", min=1, max=100),
              success_below: Optional[float] = typer.Option(None, "--success-below", min=0, max=100,
                                                            help="Alert when the 24 h success rate is below (0: off)"),
              repeat: Optional[str] = typer.Option(None, "--repeat", help="Repeat while a problem lasts: 1h, 30m … or off"),
              flaps: Optional[bool] = typer.Option(None, "--flaps/--no-flaps",
                                                   help="Also send problems that start and end inside the window")) -> None:
    """Create or change the rule of a team, a server or a tag (only the options given change)."""
    if server and tag:
        fail("a rule is for a server or a tag, not both")
    repeat_s = None
    if repeat is not None:
        repeat_s = 0 if repeat.strip().lower() == "off" else int(sessions.parse_duration(repeat).total_seconds())
        if repeat_s and not 60 <= repeat_s <= 604800:
            fail("--repeat is between 1m and 7d (or off)")
    with database() as (_, conn):
        server_row = admin.find_server(conn, server, tenant) if server else None
        team = admin.tenant(conn, server_row["tenant"] if server_row else tenant)
        if tag is not None and not alerts.TAG.fullmatch(tag):
            fail(f"{tag!r} is not a tag: letters, digits, '.', '_' or '-'")
        row = conn.execute(db.q("alert_rule_upsert"), {
            "tenant_id": team["id"], "server_id": server_row["id"] if server_row else None, "tag": tag,
            "offline": offline, "recovered": recovered, "degraded": degraded, "cert_expiry": cert_expiry,
            "operation_failed": operation_failed, "latency_ms": latency_ms, "latency_polls": latency_polls,
            "success_rate_pct": success_below, "repeat_interval_s": repeat_s, "flaps": flaps}).fetchone()
        conn.commit()
    on = [f for f in RULE_FIELDS if row[f]]
    out.print(f"rule saved: {', '.join(on) or 'nothing'} on", highlight=False)


# ------------------------------------------------------------------------------------- silences
@alerts_app.command("silence")
@guarded
def silence(server: Optional[str] = typer.Argument(None, help="The server to silence"),
            tag: Optional[str] = typer.Option(None, "--tag", help="Silence the servers with this tag"),
            whole_team: bool = typer.Option(False, "--all", help="Silence the whole team"),
            tenant: Optional[str] = typer.Option(None, "--tenant"),
            duration: str = typer.Option(..., "--for", help="How long: 30m, 2h, 1d"),
            reason: Optional[str] = typer.Option(None, "--reason")) -> None:
    """Silence a server, a tag or a team: its problems are recorded but not sent; those still open
    when the silence ends are sent then."""
    if sum(bool(x) for x in (server, tag, whole_team)) != 1:
        fail("silence one of: a SERVER, --tag T, or --all (the whole team)")
    seconds = int(sessions.parse_duration(duration).total_seconds())
    if not 60 <= seconds <= 90 * 86400:
        fail("--for is between 1m and 90d")
    if reason is not None and len(reason) > 500:
        fail("--reason is at most 500 characters")
    with database() as (_, conn):
        server_row = admin.find_server(conn, server, tenant) if server else None
        team_id = admin.tenant(conn, server_row["tenant"] if server_row else tenant)["id"]
        row = conn.execute(db.q("alert_silence_add"), {"tenant_id": team_id,
                                                       "server_id": server_row["id"] if server_row else None,
                                                       "tag": tag, "for_s": seconds, "reason": reason}).fetchone()
        conn.commit()
    what = f"server {server}" if server else (f"tag {tag}" if tag else "the whole team")
    out.print(f"silenced {escape(what)} for {escape(duration)} (silence {str(row['id'])[:8]})", highlight=False)


@silences_app.command("list")
@guarded
def silences_list(show_all: bool = typer.Option(False, "--all", help="Ended ones too"),
                  tenant: Optional[str] = typer.Option(None, "--tenant"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Active silences (and ended ones with --all)."""
    with database() as (_, conn):
        if tenant is not None:
            tenant = admin.tenant(conn, tenant)["name"]   # an unknown name is an error, not an empty list
        rows = conn.execute(db.q("alert_silences_list"), {"all": show_all, "tenant": tenant}).fetchall()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("no active silences")
        return
    table = Table("id", "tenant", "what", "until", "reason", "by")
    for r in rows:
        what = f"server {r['server_name']}" if r["server_id"] else (f"tag {r['tag']}" if r["tag"] else "whole team")
        until = r["ends_at"].strftime("%Y-%m-%d %H:%M UTC") + ("" if r["active"] else " (ended)")
        table.add_row(str(r["id"])[:8], escape(r["tenant_name"]), escape(what), until, escape(r["reason"] or ""),
                      escape(r["created_by"] or ""))
    out.print(table)


@silences_app.command("remove")
@guarded
def silences_remove(silence_id: str = typer.Argument(..., metavar="ID", help="The id or its first characters")) -> None:
    """End a silence now (problems it held back that are still open are sent at the next round)."""
    prefix = silence_id.strip().lower()
    if len(prefix) < 4 or any(c not in "0123456789abcdef-" for c in prefix):
        fail(f"{silence_id!r} is not a silence id: give at least its first 4 characters")
    with database() as (_, conn):
        rows = conn.execute(db.q("alert_silence_find"), {"prefix": prefix}).fetchall()
        if not rows:
            fail(f"there is no silence {silence_id!r}")
        if len(rows) > 1:
            fail(f"several silences start with {silence_id!r}: give more characters")
        conn.execute(db.q("alert_silence_end"), {"id": rows[0]["id"]})
        conn.commit()
    out.print(f"silence {str(rows[0]['id'])[:8]} ended")


# ------------------------------------------------------------------------------------------ log
@alerts_app.command("log")
@guarded
def delivery_log(tenant: Optional[str] = typer.Option(None, "--tenant"),
                 limit: int = typer.Option(50, "--limit", min=1, max=1000),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Every try to deliver an alert: when, to which channel, the outcome and the service's answer."""
    with database() as (_, conn):
        rows = conn.execute(db.q("alert_log"), {"tenant": tenant, "limit": limit}).fetchall()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("nothing delivered yet")
        return
    table = Table("when", "tenant", "channel", "try", "outcome", "message", "answer")
    for r in rows:
        style = "green" if r["outcome"].endswith("delivered") else "red"
        table.add_row(r["attempted_at"].strftime("%Y-%m-%d %H:%M:%S"), escape(r["tenant_name"]),
                      escape(r["channel_name"]), str(r["attempt"]), f"[{style}]{r['outcome']}[/]",
                      escape(r["title"] or "test"), escape(r["answer"] or ""))
    out.print(table)


# ----------------------------------------------------------------------------------------- tags
@alerts_app.command("tags")
@guarded
def tags(server: str, tag_list: Optional[list[str]] = typer.Argument(None, metavar="[TAG]..."),
         tenant: Optional[str] = typer.Option(None, "--tenant")) -> None:
    """Set a server's tags, which rules and silences address with --tag (no TAG: clear them)."""
    given = list(dict.fromkeys(tag_list or []))
    bad = [t for t in given if not alerts.TAG.fullmatch(t)]
    if bad:
        fail(f"{bad[0]!r} is not a tag: 1 to 63 letters, digits, '.', '_' or '-'")
    with database() as (_, conn):
        row = admin.find_server(conn, server, tenant)
        done = conn.execute(db.q("server_set_tags"), {"id": row["id"], "tags": given}).fetchone()
        conn.commit()
    out.print(f"{escape(done['name'])}: " + (escape(", ".join(done["tags"])) if done["tags"] else "no tags"),
              highlight=False)
