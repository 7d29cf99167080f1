"""Postgres access: a psycopg pool and the named queries in sql/queries.sql.

Every statement the Python code runs lives in sql/ as a named query (`-- name: insert_metrics`),
so the SQL can be read, reviewed and explained without reading Python.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = ROOT / "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.M)


class MigrationError(ProxwatchError):
    """The schema could not be applied."""


@cache
def queries() -> dict[str, str]:
    """{name: statement} from every sql/*.sql file that has `-- name:` headers."""
    found: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        text = path.read_text()
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in found:
                raise RuntimeError(f"query {name} is defined twice (second time in {path.name})")
            found[name] = body.strip().rstrip(";")
    return found


def q(name: str) -> str:
    return queries()[name]


def connect(url: str, **kw) -> psycopg.Connection:
    return psycopg.connect(url, row_factory=dict_row, **kw)


def make_pool(url: str, min_size: int = 1, max_size: int = 10) -> ConnectionPool:
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                          kwargs={"row_factory": dict_row, "autocommit": False})
    pool.open(wait=True, timeout=30)
    return pool


def supabase_cli() -> Path:
    binary = ROOT / "node_modules" / ".bin" / "supabase"
    if not binary.exists():
        raise MigrationError("the supabase CLI is missing: run 'npm install' in the project root"
                             " (make test and make demo do)")
    return binary


def cli_url(url: str) -> str:
    """The URL for the supabase CLI: loopback servers are reached without TLS."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1") and "sslmode=" not in parts.query:
        return url + ("&" if parts.query else "?") + "sslmode=disable"
    return url


def migrate(url: str, workdir: Path) -> str:
    """Apply sql/compat.sql (where the Supabase surface is missing), then supabase/migrations with
    the real supabase CLI (`supabase db push`). Returns the CLI's report."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "compat.sql").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(workdir), "TMPDIR": str(workdir), "PATH": "/usr/local/bin:/usr/bin:/bin",
           "SUPABASE_TELEMETRY_DISABLED": "1", "DO_NOT_TRACK": "1"}
    out = subprocess.run([str(supabase_cli()), "db", "push", f"--remote={cli_url(url)}", "--yes"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise MigrationError(f"supabase db push failed: {report}")
    return report
