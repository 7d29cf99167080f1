"""Shared pieces of the Realtime benchmarks (no benchmark here): the stand-in as its own process,
a tenant of N servers with its users, sign-in, percentiles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from supabase import create_client

from worker import admin
from worker.embedded.standin import make_keys

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandInProcess:
    """`python -m worker.embedded.standin` on a free loopback port, as `proxwatch up` runs it
    beside the other processes (so the benchmark's client does not share its interpreter)."""

    def __init__(self, db_url: str, jwt_secret: str, home: Path):
        self.db_url = db_url
        self.jwt_secret = jwt_secret
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.anon_key = make_keys(jwt_secret)["anon_key"]
        self.log_path = home / f"standin-bench-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "StandInProcess":
        env = {**os.environ, "DATABASE_URL": self.db_url, "PROXWATCH_JWT_SECRET": self.jwt_secret,
               "PROXWATCH_SUPABASE_PORT": str(self.port), "PYTHONPATH": str(ROOT)}
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.embedded.standin"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/auth/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"the stand-in exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        raise AssertionError("the stand-in did not answer within 60 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def seed_servers(db_url: str, secret_key: str, n: int, users: int = 1, tenant: str = "bench",
                 status: str = "online") -> tuple[list[str], list[tuple[str, str]]]:
    """A tenant with n servers (as a poll leaves them: online, PVE 9.1.4, 1/1 node) and `users`
    viewers. Returns (server ids in name order, [(email, password)])."""
    creds = [(f"viewer{k}@{tenant}.test", f"{tenant}-password-{k:03d}") for k in range(users)]
    with psycopg.connect(db_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
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


def sign_in(standin, who: tuple[str, str]) -> str:
    client = create_client(standin.url, standin.anon_key)
    return client.auth.sign_in_with_password({"email": who[0], "password": who[1]}).session.access_token


def pct(values, p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
