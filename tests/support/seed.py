"""The one seeder of the tests: tenants, users, servers, guests, SSH credentials, console sessions
and operations, written through worker.admin (as the CLI does) or the product's named queries, plus a
way to run SQL as a signed-in user exactly as PostgREST does (role authenticated, request.jwt.claims
set for the transaction), so row-level security decides.

Two ready-made worlds:

- seed_fleet — the monitoring fleet of the stand-in and dashboard tests. Tenant "acme": pve-alpha
  (online, polled for 6 hours with one empty hour), pve-beta (offline, insecure TLS, last error set),
  pve-delta (never polled: unknown). Tenant "globex": pve-gamma (degraded, polled through its
  fallback address). Users ALICE (acme admin) and BOB (globex viewer); metric rows (the rollup
  trigger fills connection_metrics_hourly).
- seed_large_fleet — n servers over three tenants with a mix of statuses and recent polls (the fleet
  table's search, filters, sort and pages; the dashboard benchmark at 1,000 servers).
- seed_teams — the teams of the guests / consoles / sessions tests: acme and globex, USERS of every
  role (one PASSWORD), servers pve1, pve2 (acme) and pveg (globex) unless others are named.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.rows import dict_row

from worker import admin, db
from worker.crypto import Box

TOKEN = "root@pam!monitor=8f0c2b6e-1111-4222-8333-944455556666"   # the API token every seeded server uses

# ------------------------------------------------------------------------------ the monitoring fleet
ALICE = ("alice@acme.test", "alice-password-1")
BOB = ("bob@globex.test", "bob-password-12")


@dataclass
class Fleet:
    servers: dict[str, str] = field(default_factory=dict)   # name -> id
    tenants: dict[str, str] = field(default_factory=dict)   # name -> id
    # pve-alpha: attempts / successes / response-time sum of successes over the seeded hours
    alpha_attempts: int = 0
    alpha_successes: int = 0
    alpha_response_sum: int = 0


def _server(conn, box, name, url, tenant, **kw) -> str:
    row = admin.add_server(conn, box, admin.ServerInput(name=name, url=url, token=TOKEN, tenant=tenant, **kw))
    return str(row["id"])


def seed_fleet(db_url: str, secret_key: str) -> Fleet:
    fleet = Fleet()
    box = Box(secret_key)
    now = datetime.now(timezone.utc)
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        for name in ("acme", "globex"):
            fleet.tenants[name] = str(admin.add_tenant(conn, name)["id"])
        admin.add_user(conn, ALICE[0], ALICE[1], "acme", "admin")
        admin.add_user(conn, BOB[0], BOB[1], "globex", "viewer")
        fleet.servers["pve-alpha"] = _server(conn, box, "pve-alpha", "https://alpha.acme.test:8006", "acme")
        fleet.servers["pve-beta"] = _server(conn, box, "pve-beta", "https://beta.acme.test:8006", "acme",
                                            insecure=True)
        fleet.servers["pve-delta"] = _server(conn, box, "pve-delta", "https://delta.acme.test:8006", "acme")
        fleet.servers["pve-gamma"] = _server(conn, box, "pve-gamma", "https://gamma.globex.test:8006", "globex",
                                             fallback_url="https://100.64.0.7:8006")
        status = [
            ("pve-alpha", "online", now - timedelta(seconds=20), None, None, 42, 83.3, "9.1.4", 3, 3, False),
            ("pve-beta", "offline", now - timedelta(minutes=3),
             "The server refused the connection on beta.acme.test:8006.", "refused", None, 0.0, "8.4.1", 0, 1, False),
            ("pve-gamma", "degraded", now - timedelta(seconds=50), None, None, 180, 95.0, "9.0.3", 1, 2, True),
        ]
        for name, st, checked, err, kind, avg, rate, ver, online, total, fallback in status:
            conn.execute(
                "update public.proxmox_servers set connection_status = %s, last_health_check_at = %s,"
                " last_connected_at = %s, health_check_error = %s, health_check_error_kind = %s,"
                " avg_response_time_ms = %s, success_rate = %s, pve_version = %s, nodes_online = %s,"
                " nodes_total = %s, used_fallback = %s where id = %s",
                (st, checked, checked if st != "offline" else None, err, kind, avg, rate, ver, online, total,
                 fallback, fleet.servers[name]))
        # pve-alpha: 6 polls an hour in hours now-5h .. now, except hour now-2h (no polls at all).
        # One failure an hour, so 5 of 6 succeed.
        rows = []
        hour0 = now.replace(minute=0, second=0, microsecond=0)
        for back in range(0, 6):
            if back == 2:
                continue
            for i in range(6):
                at = hour0 - timedelta(hours=back) + timedelta(seconds=10 * i)
                ok = i != 5
                ms = 30 + back * 2 + i if ok else None
                rows.append((fleet.servers["pve-alpha"], fleet.tenants["acme"], at, ok, ms,
                             None if ok else "timeout", None if ok else "The server did not answer within 5 s."))
                fleet.alpha_attempts += 1
                fleet.alpha_successes += ok
                fleet.alpha_response_sum += ms or 0
        for i in range(4):
            rows.append((fleet.servers["pve-gamma"], fleet.tenants["globex"], hour0 + timedelta(seconds=10 * i),
                         True, 170 + i, None, None))
        with conn.cursor() as cur:
            cur.executemany(
                "insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success,"
                " response_time_ms, error_kind, error_message) values (%s, %s, %s, %s, %s, %s, %s)", rows)
        conn.commit()
    return fleet


# ------------------------------------------------------------------------------------------ teams
USERS = {  # name: (email, team, role)
    "alice": ("alice@acme.test", "acme", "admin"),
    "olga": ("olga@acme.test", "acme", "operator"),
    "victor": ("victor@acme.test", "acme", "viewer"),
    "bob": ("bob@globex.test", "globex", "admin"),
}
PASSWORD = "password-1234"


@dataclass
class Seeded:
    teams: dict[str, str] = field(default_factory=dict)     # name -> tenant id
    users: dict[str, str] = field(default_factory=dict)     # name -> user id
    servers: dict[str, str] = field(default_factory=dict)   # name -> server id


def seed_teams(conn: psycopg.Connection, secret_key: str, servers: dict[str, tuple[str, str]] | None = None,
               fingerprint: str | None = None) -> Seeded:
    """Teams acme and globex, the USERS, and servers {name: (team, url)} (default: pve1, pve2 in acme,
    pveg in globex, on addresses nothing listens on)."""
    out = Seeded()
    box = Box(secret_key)
    for team in ("acme", "globex"):
        out.teams[team] = str(admin.add_tenant(conn, team)["id"])
    for name, (email, team, role) in USERS.items():
        out.users[name] = str(admin.add_user(conn, email, PASSWORD, team, role)["id"])
    servers = servers or {"pve1": ("acme", "https://127.0.0.1:9"), "pve2": ("acme", "https://127.0.0.1:10"),
                          "pveg": ("globex", "https://127.0.0.1:11")}
    for name, (team, url) in servers.items():
        spec = admin.ServerInput(name=name, url=url, tenant=team, token=TOKEN)
        if fingerprint:
            spec.fingerprint = fingerprint
        out.servers[name] = str(admin.add_server(conn, box, spec)["id"])
    return out


def seed_servers(db_url: str, secret_key: str, n: int, users: int = 1, tenant: str = "bench",
                 status: str = "online") -> tuple[list[str], list[tuple[str, str]]]:
    """A tenant with n servers (as a poll leaves them: online, PVE 9.1.4, 1/1 node) and `users`
    viewers, in one statement however large n is. Returns (server ids in name order, [(email, password)])."""
    creds = [(f"viewer{k}@{tenant}.test", f"{tenant}-password-{k:03d}") for k in range(users)]
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        tenant_id = admin.add_tenant(conn, tenant)["id"]
        for email, password in creds:
            admin.add_user(conn, email, password, tenant, "viewer")
        rows = conn.execute(
            "insert into public.proxmox_servers (tenant_id, name, base_url, auth_kind, connection_status,"
            " pve_version, nodes_online, nodes_total) select %s, 'bench-' || lpad(g::text, 5, '0'),"
            " 'https://bench-' || g || '.test:8006', 'token', %s::connection_status, '9.1.4', 1, 1"
            " from generate_series(1, %s) g order by g returning id", (tenant_id, status, n)).fetchall()
        conn.commit()
    return [str(r["id"]) for r in rows], creds


OPS = ("ops@fleet.test", "ops-password-123")   # a member of every tenant of seed_large_fleet
SITES = ("ams", "fra", "lon", "nyc")
LARGE_TENANTS = ("north", "south", "west")


def large_fleet_status(i: int) -> str:
    """The status of the i-th server of seed_large_fleet (1-based): a realistic mix, mostly online."""
    return "offline" if i % 10 == 0 else "degraded" if i % 7 == 0 else "unknown" if i % 13 == 0 else "online"


def seed_large_fleet(db_url: str, n: int, polls: int = 30, tenants=LARGE_TENANTS) -> dict[str, str]:
    """n servers spread round-robin over `tenants`, named <site>-<nnnn> (sites SITES in turn), with
    large_fleet_status(i), a latency of 10 + (i * 37) % 400 ms, PVE 8.x or 9.x, and `polls` polls each
    (one every 10 s up to now: an offline server's all failed, a degraded one's every third, an
    unknown one's none) — in a few set-based statements, whatever n is. OPS is an admin of every
    tenant. Returns server name → id."""
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        for t in tenants:
            admin.add_tenant(conn, t)
            admin.add_user(conn, OPS[0], OPS[1], t, "admin")
        ids = [str(admin.tenant(conn, t)["id"]) for t in tenants]
        rows = conn.execute(
            "with g as (select i, (%(ids)s::uuid[])[1 + (i - 1) %% cardinality(%(ids)s::uuid[])] as tenant_id,"
            "   (%(sites)s::text[])[1 + (i - 1) %% cardinality(%(sites)s::text[])] as site,"
            "   case when i %% 10 = 0 then 'offline' when i %% 7 = 0 then 'degraded' when i %% 13 = 0 then 'unknown'"
            "        else 'online' end as status"
            "   from generate_series(1, %(n)s) i)"
            " insert into public.proxmox_servers (tenant_id, name, base_url, auth_kind, connection_status,"
            "   pve_version, nodes_online, nodes_total, avg_response_time_ms, last_health_check_at,"
            "   health_check_error, health_check_error_kind)"
            " select tenant_id, site || '-' || lpad(i::text, 4, '0'), 'https://' || site || '-' || i || '.test:8006',"
            "   'token', status::connection_status, case when status = 'unknown' then null"
            "   when i %% 3 = 0 then '8.4.1' else '9.1.4' end, case when status = 'offline' then 0"
            "   when status = 'degraded' then 1 else 2 end, case when status = 'unknown' then null else 2 end,"
            "   case when status in ('online', 'degraded') then 10 + (i * 37) %% 400 end,"
            "   case when status <> 'unknown' then now() - make_interval(secs => i %% 10) end,"
            "   case when status = 'offline' then 'The server did not answer within 5 s.' end,"
            "   case when status = 'offline' then 'timeout' end"
            " from g order by i returning id, name",
            {"ids": ids, "sites": list(SITES), "n": n}).fetchall()
        conn.execute(
            "insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success, response_time_ms,"
            "   error_kind, error_message)"
            " select s.id, s.tenant_id, date_trunc('second', now()) - make_interval(secs => 10 * k), ok,"
            "   case when ok then s.avg_response_time_ms + (k * 7) %% 20 end,"
            "   case when not ok then 'timeout' end, case when not ok then 'The server did not answer within 5 s.' end"
            " from public.proxmox_servers s cross join generate_series(0, %(polls)s - 1) k"
            " cross join lateral (select case s.connection_status when 'offline' then false"
            "   when 'degraded' then k %% 3 <> 0 else true end as ok) o"
            " where s.tenant_id = any (%(ids)s::uuid[]) and s.connection_status <> 'unknown'",
            {"ids": ids, "polls": polls})
        conn.commit()
    return {r["name"]: str(r["id"]) for r in rows}


def backfill_simulated(db_url: str, server_ids: list[str], days: int = 30, ok: float = 0.97, ms: int = 40) -> datetime:
    """The demo's backfill (sql/demo.sql) for servers of any tenant: `days` of simulated hourly and
    daily rollups up to two hours ago (clear of seed_large_fleet's recent raw polls), ~`ok` of the
    polls answered in ~`ms`; the servers marked simulated up to now. Returns that time."""
    until = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    raw_from = until.replace(minute=0) - timedelta(hours=1)
    profiles = [{"server_id": sid, "ok": ok, "ms": ms, "kind": "timeout", "message": "no answer"} for sid in server_ids]
    args = {"profiles": json.dumps(profiles), "outages": "[]", "ids": server_ids, "until": until,
            "raw_from": raw_from, "since": (until - timedelta(days=days)).replace(hour=0, minute=0)}
    with psycopg.connect(db_url) as conn:
        conn.execute(db.q("demo_backfill_hourly"), args)
        conn.execute(db.q("demo_mark_simulated"), args)
    return until


# -------------------------------------------------------------------------- guests and credentials
def add_guest(conn, server_id: str, vmid: int, name: str, guest_type: str = "qemu", status: str = "running",
              node: str = "pve1") -> None:
    conn.execute("insert into public.guests (server_id, tenant_id, vmid, guest_type, node, name, status)"
                 " select id, tenant_id, %s, %s, %s, %s, %s from public.proxmox_servers where id = %s",
                 (vmid, guest_type, node, name, status, server_id))
    conn.commit()


def sync_guests(pool, box, server_id) -> None:
    """Fill public.guests as the guest sync does (worker.inventory, against the fake's /cluster/resources)."""
    from worker import inventory
    from worker.polling import Poller
    from worker.settings import load

    result = inventory.sync_guests(Poller(pool, box, load()), str(server_id))
    assert result is not None and not result.error_kind, result


def add_ssh_access(conn, secret_key, server_id, sshd, host_key) -> None:
    """Key login for node pve1 of the server to the test sshd, pinning host_key."""
    conn.execute("insert into public.server_ssh_credentials (server_id, node, host, port, username, host_key,"
                 " auth_kind, secret_ciphertext) values (%s, 'pve1', '127.0.0.1', %s, %s, %s, 'key', %s)",
                 (server_id, sshd.port, sshd.user, host_key, Box(secret_key).seal(sshd.key("client_key")[0])))
    conn.commit()


# ------------------------------------------------------------------------------ sessions, operations
def open_session(conn, server_id: str, user_id: str | None, protocol: str = "vnc", target: str = "web (qemu/100)",
                 client_ip: str = "192.0.2.10") -> dict:
    row = conn.execute(db.q("open_session"), {
        "user_id": user_id, "server_id": server_id, "protocol": protocol, "target": target, "guest_type": None,
        "vmid": None, "node": "pve1", "client_ip": client_ip, "gateway": "test", "user_email": None}).fetchone()
    conn.commit()
    return row


def op_row(db_url: str, operation_id) -> dict:
    with psycopg.connect(db_url, row_factory=dict_row) as c:
        return c.execute("select * from active_operations where id = %s", (str(operation_id),)).fetchone()


def finished(db_url: str, operation_id):
    """The operation's row once it has completed or failed, else None."""
    row = op_row(db_url, operation_id)
    return row if row and row["status"] in ("completed", "failed") else None


def count(conn, table: str) -> int:
    """Rows in table, as committed (the connection's transaction is ended first)."""
    conn.commit()
    return conn.execute(f"select count(*) as n from {table}").fetchone()["n"]


# ----------------------------------------------------------------------------- as a signed-in user
@contextlib.contextmanager
def as_user(conn: psycopg.Connection, user_id: str | None):
    """Run statements as this user (role authenticated with its JWT claims), as PostgREST does; the
    transaction is rolled back afterwards unless the caller commits."""
    claims = {"sub": user_id, "role": "authenticated", "aud": "authenticated"} if user_id else {"role": "anon"}
    with conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true), set_config('role', %s, true)",
                     (json.dumps(claims), claims["role"]))
        yield conn


def act_as(conn: psycopg.Connection, user_id, role: str = "authenticated") -> None:
    """The rest of conn's current transaction runs as PostgREST runs a request with this user's JWT
    (SET LOCAL role and the claims); the caller ends the transaction."""
    conn.execute("select set_config('request.jwt.claims', %s, true)",
                 (json.dumps({"sub": str(user_id), "role": role}),))
    conn.execute(f"set local role {role}")


def call(conn, user_id: str | None, sql: str, params=None, many: bool = True):
    """One API call as a user: the rows (or the first row when many=False). conn must be in autocommit
    mode, so the role lasts exactly one transaction."""
    assert conn.autocommit, "call() needs an autocommit connection"
    with as_user(conn, user_id):
        cur = conn.execute(sql, params or ())
        return cur.fetchall() if many else cur.fetchone()
