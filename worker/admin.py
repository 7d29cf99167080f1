"""Tenants, users and servers: the validated writes behind `proxwatch tenants|users|servers`.

Bad input raises InputError with one sentence, before anything is written.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import re
from dataclasses import dataclass

import bcrypt
import psycopg
from psycopg.types.json import Jsonb

from worker import db
from worker.crypto import Box
from worker.pve import normalize_fingerprint, parse_token

ROLES = ("admin", "operator", "viewer")
URL_RE = re.compile(r"^https://[^/\s:]+(:[0-9]{1,5})?/?$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


class InputError(ProxwatchError):
    """The input is not valid; nothing was written."""


def check_url(url: str, what: str = "URL") -> str:
    url = url.strip()
    if not url.startswith("https://"):
        raise InputError(f"the {what} {url!r} must start with https:// (the PVE API is served over HTTPS, port 8006)")
    if not URL_RE.match(url):
        raise InputError(f"the {what} {url!r} must be https://HOST[:PORT] with nothing after it")
    port = url.rstrip("/").rsplit(":", 1)[-1]
    if url.count(":") == 2 and not 1 <= int(port) <= 65535:
        raise InputError(f"the {what} {url!r} has a port outside 1-65535")
    if url.count(":") == 1:
        url = url.rstrip("/") + ":8006"
    return url.rstrip("/")


def hash_password(password: str) -> str:
    """bcrypt, as Supabase Auth (GoTrue) stores encrypted_password."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()


def add_tenant(conn: psycopg.Connection, name: str) -> dict:
    name = name.strip()
    if not name:
        raise InputError("the tenant name is empty")
    if conn.execute(db.q("tenant_by_name"), {"name": name}).fetchone():
        raise InputError(f"a tenant named {name!r} exists already")
    row = conn.execute(db.q("insert_tenant"), {"name": name}).fetchone()
    conn.commit()
    return row


def tenant(conn: psycopg.Connection, name: str | None) -> dict:
    """The named tenant, or the only one when no name is given."""
    if name:
        row = conn.execute(db.q("tenant_by_name"), {"name": name}).fetchone()
        if not row:
            raise InputError(f"there is no tenant named {name!r} (create it with `proxwatch tenants add {name}`)")
        return row
    rows = conn.execute(db.q("tenants_list")).fetchall()
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise InputError("there is no tenant yet: create one with `proxwatch tenants add NAME`")
    raise InputError("there are several tenants: name one with --tenant")


def add_user(conn: psycopg.Connection, email: str, password: str, tenant_name: str, role: str) -> dict:
    email = email.strip().lower()
    if not EMAIL_RE.match(email):
        raise InputError(f"{email!r} is not an e-mail address")
    if len(password) < 8:
        raise InputError("the password must have at least 8 characters")
    if role not in ROLES:
        raise InputError(f"the role must be one of {', '.join(ROLES)}, not {role!r}")
    t = tenant(conn, tenant_name)
    user = conn.execute(db.q("user_by_email"), {"email": email}).fetchone()
    if user:
        conn.execute(db.q("update_user_password"), {"user_id": user["id"], "password_hash": hash_password(password)})
    else:
        user = conn.execute(db.q("insert_user"), {"email": email, "password_hash": hash_password(password)}).fetchone()
    conn.execute(db.q("upsert_member"), {"tenant_id": t["id"], "user_id": user["id"], "role": role})
    conn.commit()
    return {"id": user["id"], "email": email, "tenant": t["name"], "role": role}


@dataclass
class ServerInput:
    name: str
    url: str
    token: str | None = None
    user: str | None = None
    password: str | None = None
    fallback_url: str | None = None
    fingerprint: str | None = None
    insecure: bool = False
    tenant: str | None = None
    interval: int = 10


def parse_credentials(token: str | None, user: str | None, password: str | None) -> tuple | None:
    """(username, token_id, secret, auth_kind) from --token or --user/--password; None when none given."""
    if token and (user or password):
        raise InputError("give either --token or --user/--password, not both")
    if token:
        try:
            username, token_id, secret = parse_token(token)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return username, token_id, secret, "token"
    if user or password:
        if not (user and password):
            raise InputError("give both --user and --password")
        if "@" not in user:
            raise InputError(f"the user {user!r} needs a realm, like root@pam")
        return user, None, password, "password"
    return None


def add_server(conn: psycopg.Connection, box: Box, spec: ServerInput) -> dict:
    """Validate everything, then write the server and its encrypted credentials in one transaction."""
    name = spec.name.strip()
    if not name:
        raise InputError("the server name is empty")
    base_url = check_url(spec.url)
    fallback = check_url(spec.fallback_url, "fallback URL") if spec.fallback_url else None
    creds = parse_credentials(spec.token, spec.user, spec.password)
    if creds is None:
        raise InputError("give credentials: --token USER@REALM!ID=SECRET (preferred) or --user U --password P")
    username, token_id, secret, auth_kind = creds
    if spec.fingerprint and spec.insecure:
        raise InputError("give either --fingerprint or --insecure, not both")
    fingerprint = None
    if spec.fingerprint:
        try:
            fingerprint = normalize_fingerprint(spec.fingerprint)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    tls_mode = "pinned" if fingerprint else "insecure" if spec.insecure else "verify"
    if not 2 <= spec.interval <= 3600:
        raise InputError(f"the interval must be between 2 and 3600 seconds, not {spec.interval}")
    t = tenant(conn, spec.tenant)
    try:
        row = conn.execute(db.q("insert_server"), {
            "tenant_id": t["id"], "name": name, "base_url": base_url, "fallback_url": fallback,
            "tls_mode": tls_mode, "tls_fingerprint": fingerprint, "auth_kind": auth_kind,
            "poll_interval_s": spec.interval}).fetchone()
    except psycopg.errors.UniqueViolation:
        conn.rollback()
        raise InputError(f"tenant {t['name']!r} has a server named {name!r} already") from None
    conn.execute(db.q("insert_credentials"), {"server_id": row["id"], "username": username, "token_id": token_id,
                                              "secret_ciphertext": box.seal(secret)})
    conn.commit()
    return {"id": row["id"], "name": name, "tenant": t["name"], "base_url": base_url, "tls_mode": tls_mode,
            "auth_kind": auth_kind}


def find_server(conn: psycopg.Connection, name: str, tenant_name: str | None = None) -> dict:
    rows = conn.execute(db.q("servers_by_name"), {"name": name, "tenant": tenant_name}).fetchall()
    if not rows:
        raise InputError(f"there is no server named {name!r}" + (f" in tenant {tenant_name!r}" if tenant_name else ""))
    if len(rows) > 1:
        raise InputError(f"several tenants have a server named {name!r}: name the tenant with --tenant")
    return rows[0]


def remove_server(conn: psycopg.Connection, name: str, tenant_name: str | None = None) -> dict:
    row = find_server(conn, name, tenant_name)
    conn.execute(db.q("delete_server"), {"id": row["id"]})
    conn.commit()
    return row


def list_servers(conn: psycopg.Connection, tenant_name: str | None = None) -> list[dict]:
    return conn.execute(db.q("servers_list"), {"tenant": tenant_name}).fetchall()


def update_server(conn: psycopg.Connection, box: Box, name: str, tenant_name: str | None = None, *,
                  rename: str | None = None, url: str | None = None, fallback_url: str | None = None,
                  fingerprint: str | None = None, tls_mode: str | None = None, token: str | None = None,
                  user: str | None = None, password: str | None = None, interval: int | None = None,
                  enabled: bool | None = None) -> dict:
    """Change a server through public.update_server(), the one write path for people and the CLI:
    a changed address or TLS setting drops the stored credentials unless new ones are given here
    (fallback_url "" removes the fallback address)."""
    row = find_server(conn, name, tenant_name)
    creds = parse_credentials(token, user, password)
    credentials = None
    if creds:
        username, token_id, secret, _ = creds
        credentials = Jsonb({"username": username, "token_id": token_id, "secret_ciphertext": box.seal(secret)})
    try:
        result = conn.execute(db.q("update_server"), {
            "id": row["id"], "name": rename, "base_url": url, "fallback_url": fallback_url, "tls_mode": tls_mode,
            "tls_fingerprint": fingerprint, "poll_interval_s": interval, "enabled": enabled,
            "credentials": credentials}).fetchone()["result"]
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.InsufficientPrivilege) as exc:
        conn.rollback()
        raise InputError(exc.diag.message_primary or str(exc)) from None
    conn.commit()
    return {**result, "tenant": row["tenant"]}
