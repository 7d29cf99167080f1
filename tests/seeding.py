"""A small, known fleet for the stand-in and dashboard tests: two tenants, a user in each, servers
in every status, and metric rows (the rollup trigger fills connection_metrics_hourly).

Tenant "acme": pve-alpha (online, polled for 6 hours with one empty hour), pve-beta (offline,
insecure TLS, last error set), pve-delta (never polled: unknown). Tenant "globex": pve-gamma
(degraded, polled through its fallback address).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.rows import dict_row

from worker import admin
from worker.crypto import Box

ALICE = ("alice@acme.test", "alice-password-1")
BOB = ("bob@globex.test", "bob-password-12")
TOKEN = "root@pam!monitor=00000000-0000-4000-8000-000000000000"


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
