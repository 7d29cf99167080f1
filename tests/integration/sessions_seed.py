"""Shared seeding for the guests / consoles / sessions tests: two teams, users of every role, servers
and guests, and a way to run SQL as a signed-in user exactly as PostgREST does (role authenticated,
request.jwt.claims set for the transaction), so row-level security decides."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import psycopg

from worker import admin, db
from worker.crypto import Box

TOKEN = "root@pam!monitor=8f0c2b6e-1111-4222-8333-944455556666"
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


def seed(conn: psycopg.Connection, secret_key: str, servers: dict[str, tuple[str, str]] | None = None,
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


def add_guest(conn, server_id: str, vmid: int, name: str, guest_type: str = "qemu", status: str = "running",
              node: str = "pve1") -> None:
    conn.execute("insert into public.guests (server_id, tenant_id, vmid, guest_type, node, name, status)"
                 " select id, tenant_id, %s, %s, %s, %s, %s from public.proxmox_servers where id = %s",
                 (vmid, guest_type, node, name, status, server_id))
    conn.commit()


def open_session(conn, server_id: str, user_id: str | None, protocol: str = "vnc", target: str = "web (qemu/100)",
                 client_ip: str = "192.0.2.10") -> dict:
    row = conn.execute(db.q("open_session"), {
        "user_id": user_id, "server_id": server_id, "protocol": protocol, "target": target, "guest_type": None,
        "vmid": None, "node": "pve1", "client_ip": client_ip, "gateway": "test", "user_email": None}).fetchone()
    conn.commit()
    return row


@contextlib.contextmanager
def as_user(conn: psycopg.Connection, user_id: str | None):
    """Run statements as this user (role authenticated with its JWT claims), as PostgREST does; the
    transaction is rolled back afterwards unless the caller commits."""
    claims = {"sub": user_id, "role": "authenticated", "aud": "authenticated"} if user_id else {"role": "anon"}
    with conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true), set_config('role', %s, true)",
                     (json.dumps(claims), claims["role"]))
        yield conn


def call(conn, user_id: str | None, sql: str, params=None, many: bool = True):
    """One API call as a user: the rows (or the first row when many=False). conn must be in autocommit
    mode, so the role lasts exactly one transaction."""
    assert conn.autocommit, "call() needs an autocommit connection"
    with as_user(conn, user_id):
        cur = conn.execute(sql, params or ())
        return cur.fetchall() if many else cur.fetchone()
