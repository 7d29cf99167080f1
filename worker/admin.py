"""Tenants, users and servers: the validated writes behind `proxwatch tenants|users|servers`.

Bad input raises InputError with one sentence, before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import bcrypt
import psycopg
from psycopg.types.json import Jsonb

from worker import db
from worker.crypto import Box
from worker.errors import ProxwatchError
from worker.pve import normalize_fingerprint, parse_token
from worker.urls import server_url

ROLES = ("admin", "operator", "viewer")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
NAME_MAX = 100          # tenants and servers: the schema's check (length(btrim(name)) between 1 and 100)
EMAIL_MAX = 254         # RFC 5321's path limit, as GoTrue checks it
PASSWORD_MIN = 8
BCRYPT_MAX_BYTES = 72   # bcrypt reads no further; GoTrue refuses longer passwords


class InputError(ProxwatchError):
    """The input is not valid; nothing was written."""


def check_url(url: str, what: str = "URL") -> str:
    """https://HOST[:PORT] → https://host:port (worker/urls.py), or InputError with a sentence."""
    try:
        return server_url(url, what)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def check_name(value: str, what: str, limit: int = NAME_MAX) -> str:
    """A name people gave (a tenant, a server): trimmed, 1 to `limit` characters, no control characters."""
    name = (value or "").strip()
    if not name:
        raise InputError(f"the {what} is empty")
    if len(name) > limit:
        raise InputError(f"the {what} has {len(name)} characters: at most {limit}")
    if any(not ch.isprintable() for ch in name):
        raise InputError(f"the {what} {name[:40]!r} contains control or invisible characters")
    return name


def check_password(password: str) -> str:
    """A dashboard password: 8 characters at least, 72 bytes (UTF-8) at most, no NUL."""
    if len(password) < PASSWORD_MIN:
        raise InputError(f"the password must have at least {PASSWORD_MIN} characters")
    if len(password.encode("utf-8", "surrogatepass")) > BCRYPT_MAX_BYTES:
        raise InputError(f"the password is longer than {BCRYPT_MAX_BYTES} bytes (UTF-8), the most bcrypt reads: "
                         "Supabase Auth refuses it too; choose a shorter one")
    if "\x00" in password:
        raise InputError("the password contains a NUL character")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the password is not valid text (UTF-8)") from None
    return password


def hash_password(password: str) -> str:
    """bcrypt, as Supabase Auth (GoTrue) stores encrypted_password."""
    return bcrypt.hashpw(check_password(password).encode(), bcrypt.gensalt(rounds=10)).decode()


def add_tenant(conn: psycopg.Connection, name: str) -> dict:
    name = check_name(name, "tenant name")
    if conn.execute(db.q("tenant_by_name"), {"name": name}).fetchone():
        raise InputError(f"a tenant named {name!r} exists already")
    row = conn.execute(db.q("insert_tenant"), {"name": name}).fetchone()
    conn.commit()
    return row


def tenant(conn: psycopg.Connection, name: str | None) -> dict:
    """The named tenant, or the only one when no name is given."""
    if name is not None:
        name = check_name(name, "tenant name")
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
    email = check_email(email)
    check_password(password)
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


def check_email(email: str) -> str:
    email = (email or "").strip().lower()
    if len(email) > EMAIL_MAX:
        raise InputError(f"the e-mail address has {len(email)} characters: at most {EMAIL_MAX}")
    if not EMAIL_RE.match(email) or any(not ch.isprintable() for ch in email):
        raise InputError(f"{email[:80]!r} is not an e-mail address")
    return email


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
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", user) or len(user) > 128 or not user.isprintable():
            raise InputError(f"the user {user[:80]!r} needs a realm, like root@pam")
        return user, None, password, "password"
    return None


def add_server(conn: psycopg.Connection, box: Box, spec: ServerInput) -> dict:
    """Validate everything, then write the server and its encrypted credentials in one transaction."""
    name = check_name(spec.name, "server name")
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
    if not name or "\x00" in name or len(name) > NAME_MAX or (tenant_name and "\x00" in tenant_name):
        raise InputError(f"there is no server named {name[:80]!r}" +
                         (f" in tenant {tenant_name[:80]!r}" if tenant_name else ""))
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
    """The servers (of one tenant: InputError when it does not exist)."""
    if tenant_name is not None:
        tenant(conn, tenant_name)
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
    # Checked here first, with the same rules as public.update_server(), so a bad value is a
    # sentence before anything reaches the database (and NUL characters never do).
    rename = check_name(rename, "server name") if rename is not None else None
    url = check_url(url) if url is not None else None
    if fallback_url is not None and fallback_url.strip():
        fallback_url = check_url(fallback_url, "fallback URL")
    if tls_mode is not None and tls_mode not in ("verify", "pinned", "insecure"):
        raise InputError(f"unknown TLS mode {tls_mode[:40]!r}: use verify, pinned or insecure")
    if fingerprint is not None:
        try:
            fingerprint = normalize_fingerprint(fingerprint)
        except ValueError as exc:
            raise InputError(str(exc)[:200]) from None
    if interval is not None and not 2 <= interval <= 3600:
        raise InputError(f"the interval must be between 2 and 3600 seconds, not {interval}")
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
