"""Run the whole system in the foreground: `proxwatch up` and `proxwatch demo`.

Steps of `run`:
1. embedded mode: start Postgres (data under PROXWATCH_HOME), apply the migrations with the
   supabase CLI, start Redis and the Supabase stand-in (RPC, Auth, Realtime);
2. make sure a tenant and the local admin exist (embedded mode);
3. demo: start the simulated fleet and register it in tenant "demo";
4. start the Procfile's processes (worker, scheduler, web) with the endpoints in their env;
5. print the dashboard's address and wait; Ctrl-C stops everything in reverse order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from worker import admin, db, runtime
from worker.embedded.services import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, load_secrets, port_in_use
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _postgres(s: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(s.home, s.pg_port, load_secrets(s.home)["pg_password"])


def ensure_database(s: Settings, migrate: bool = True) -> EmbeddedPostgres | None:
    """Start the embedded Postgres when it is not running (returns it, so the caller stops it
    again), and apply the migrations when the schema is missing. None when it was running."""
    pg = _postgres(s)
    started = None
    if not pg.running():
        pg.start()
        started = pg
    if migrate:
        with db.connect(pg.url) as conn:
            present = conn.execute(db.q("schema_present")).fetchone()["present"]
        if not present:
            db.migrate(pg.url, s.home / "supabase-cli")
    return started


def ensure_local_admin(conn: psycopg.Connection, ep: runtime.Endpoints) -> None:
    """Embedded mode: a tenant exists, and the local admin administers every tenant."""
    if not conn.execute(db.q("tenants_list")).fetchall():
        admin.add_tenant(conn, "default")
    user = conn.execute(db.q("user_by_email"), {"email": ep.admin_email}).fetchone()
    if not user:
        user = conn.execute(db.q("insert_user"), {"email": ep.admin_email,
                                                  "password_hash": admin.hash_password(ep.admin_password)}).fetchone()
    conn.execute(db.q("local_admin_memberships"), {"user_id": user["id"]})
    conn.commit()


def child_env(s: Settings, ep: runtime.Endpoints) -> dict:
    env = dict(os.environ)
    env.update(DATABASE_URL=ep.database_url, REDIS_URL=ep.redis_url, PROXWATCH_SECRET_KEY=ep.secret_key,
               PROXWATCH_HOME=str(s.home), PYTHONUNBUFFERED="1")
    if ep.supabase_url:
        env["SUPABASE_URL"] = ep.supabase_url
    if ep.anon_key:
        env["SUPABASE_ANON_KEY"] = ep.anon_key
    if s.embedded:
        env.update(PROXWATCH_DASHBOARD_EMAIL=ep.admin_email, PROXWATCH_DASHBOARD_PASSWORD=ep.admin_password)
    return env


def processes(s: Settings) -> dict[str, list[str]]:
    """The Procfile's processes, as commands for this Python."""
    py = sys.executable
    return {
        "worker": [py, "-m", "dramatiq", "worker.broker", "worker.actors", "--processes",
                   str(s.worker_processes), "--threads", str(s.worker_threads)],
        "scheduler": [py, "-m", "worker.scheduler"],
        "console": [py, "-m", "worker.gateway"],
        "web": [py, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"), "--server.headless", "true",
                "--server.address", "127.0.0.1", "--server.port", str(s.web_port),
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"],
    }


def run(s: Settings, demo: bool = False) -> None:
    ep = runtime.endpoints(s)
    children: dict[str, subprocess.Popen] = {}
    with contextlib.ExitStack() as stack:
        if s.embedded:
            print(f"proxwatch: embedded mode, data in {s.home}", flush=True)
            pg = _postgres(s)
            if pg.running():
                raise EmbeddedError(f"the embedded Postgres of {s.home} is running already: is `proxwatch up` "
                                    "running elsewhere? Stop it first.")
            pg.start()
            stack.callback(pg.stop)
            print("proxwatch: applying migrations with the supabase CLI", flush=True)
            db.migrate(ep.database_url, s.home / "supabase-cli")
            if not s.redis_url:
                redis = EmbeddedRedis(s.home, s.redis_port, load_secrets(s.home)["redis_password"])
                redis.start()
                stack.callback(redis.stop)
            from worker.embedded.standin import StandIn

            standin = StandIn(ep.database_url, ep.jwt_secret, port=s.standin_port)
            standin.start()
            stack.callback(standin.stop)
            with db.connect(ep.database_url) as conn:
                ensure_local_admin(conn, ep)
        if demo:
            from worker.embedded.demo import DemoFleet

            fleet = DemoFleet(s.home / "demo")
            fleet.start()
            stack.callback(fleet.stop)
            with db.connect(ep.database_url) as conn:
                names = fleet.register(conn, ep)
                if s.embedded:
                    ensure_local_admin(conn, ep)
            print(f"proxwatch: simulated fleet up: {', '.join(names)}", flush=True)
        if port_in_use(s.web_port):
            raise EmbeddedError(f"port {s.web_port} is taken: set PROXWATCH_WEB_PORT to a free port")
        env = child_env(s, ep)
        logdir = s.home / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        for name, cmd in processes(s).items():
            log = open(logdir / f"{name}.log", "ab")
            stack.callback(log.close)
            children[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        stack.callback(_stop_children, children)
        print(f"proxwatch: dashboard at http://127.0.0.1:{s.web_port}  (logs in {logdir}; Ctrl-C stops)",
              flush=True)
        print(f"proxwatch: console gateway at http://{s.gateway.host}:{s.gateway.port}", flush=True)
        if s.embedded:
            print(f"proxwatch: signed in automatically as {ep.admin_email} (password in {s.home}/secrets.json)",
                  flush=True)
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        try:
            while not stop["now"]:
                for name, proc in children.items():
                    if proc.poll() is not None:
                        raise EmbeddedError(f"the {name} process exited with code {proc.returncode}: "
                                            f"see {logdir / (name + '.log')}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        print("\nproxwatch: stopping", flush=True)


def _stop_children(children: dict[str, subprocess.Popen]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in children.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
