"""Supabase mode: users are created through the Auth admin API (service role key), as Supabase
Auth owns auth.users there; the tenant membership is then written to the database."""

from __future__ import annotations

import psycopg

from worker import admin, db
from worker.admin import InputError
from worker.settings import Settings


def add_user_via_auth_api(conn: psycopg.Connection, s: Settings, email: str, password: str, tenant_name: str,
                          role: str) -> dict:
    from supabase import create_client

    if role not in admin.ROLES:
        raise InputError(f"the role must be one of {', '.join(admin.ROLES)}, not {role!r}")
    if len(password) < 8:
        raise InputError("the password must have at least 8 characters")
    t = admin.tenant(conn, tenant_name)
    existing = conn.execute(db.q("user_by_email"), {"email": email}).fetchone()
    client = create_client(s.supabase_url, s.supabase_service_key)
    if existing:
        client.auth.admin.update_user_by_id(str(existing["id"]), {"password": password})
        user_id = existing["id"]
    else:
        created = client.auth.admin.create_user({"email": email, "password": password, "email_confirm": True})
        user_id = created.user.id
    conn.execute(db.q("upsert_member"), {"tenant_id": t["id"], "user_id": user_id, "role": role})
    conn.commit()
    return {"id": user_id, "email": email.lower(), "tenant": t["name"], "role": role}
