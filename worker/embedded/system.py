"""Run the whole system in the foreground: `proxwatch up` and `proxwatch demo`.

Steps of `run`:
1. embedded mode, holding the home's bootstrap lock (one bootstrap however many proxwatch processes
   start at once): start Postgres (data under PROXWATCH_HOME) or attach to it, apply the migrations
   with the supabase CLI, make sure a tenant and the local admin exist;
2. start Redis and the Supabase stand-in (RPC, Auth, Realtime);
3. demo: start the simulated fleet, register it in tenant "demo" and, once, backfill its simulated
   history (demo.backfill_history);
4. start the Procfile's processes (worker, scheduler, console, metrics, web) with the endpoints in their env;
5. print the dashboard's address and wait; Ctrl-C stops everything in reverse order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psycopg

from worker import admin, db, runtime
from worker.embedded.services import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, load_secrets, port_in_use
from worker import settings
from worker.settings import Settings, is_loopback

ROOT = Path(__file__).resolve().parents[2]


def _postgres(s: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(s.home, s.pg_port, load_secrets(s.home)["pg_password"])


# One home, one bootstrap. Every proxwatch process that needs the embedded database takes
# BOOTSTRAP_LOCK before it looks at Postgres: it starts it when it is not running, applies the
# migrations when the schema is missing, and makes sure the local admin exists. A command that
# started Postgres for itself keeps the lock until it has stopped it again, so nobody attaches to a
# server that is about to go away; one that found Postgres running (under `proxwatch up`) attaches
# and lets go at once. `proxwatch up` also holds UP_LOCK for as long as it runs.
BOOTSTRAP_LOCK, UP_LOCK = "bootstrap.lock", "up.lock"


@contextlib.contextmanager
def home_lock(s: Settings, name: str, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on <home>/<name> (flock: the kernel drops it when the process ends, however
    it ends). Yields True once held; with wait=False, False at once when another process holds it."""
    try:
        s.home.mkdir(parents=True, exist_ok=True)
        handle = open(s.home / name, "a")
    except OSError as exc:
        raise EmbeddedError(f"cannot use {s.home} as PROXWATCH_HOME: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            print(f"proxwatch: another proxwatch process is starting or using the embedded database in {s.home}:"
                  " waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bootstrap(s: Settings, ep: runtime.Endpoints, *, always_migrate: bool = False,
              default_tenant: bool = True) -> str | None:
    """With BOOTSTRAP_LOCK held and Postgres running: the migrations (when the schema is missing, or
    always), and the local admin. Returns the supabase CLI's report when it ran."""
    report = None
    with db.connect(ep.database_url) as conn:
        present = conn.execute(db.q("schema_present")).fetchone()["present"]
    if always_migrate or not present:
        report = db.migrate(ep.database_url, s.home / "supabase-cli")
    with db.connect(ep.database_url) as conn:
        ensure_local_admin(conn, ep, default_tenant=default_tenant)
    return report


@contextlib.contextmanager
def attached(s: Settings, *, always_migrate: bool = False, default_tenant: bool = True) -> Iterator[str | None]:
    """The embedded database for one command, bootstrapped (see BOOTSTRAP_LOCK): attached to when it
    runs already, else started for the command and stopped after it. Yields the migration report."""
    ep = runtime.endpoints(s)
    with home_lock(s, BOOTSTRAP_LOCK), contextlib.ExitStack() as stack:
        pg = _postgres(s)
        if not pg.running():
            pg.start()
            stack.callback(pg.stop)
            yield bootstrap(s, ep, always_migrate=always_migrate, default_tenant=default_tenant)
            return
        report = bootstrap(s, ep, always_migrate=always_migrate, default_tenant=default_tenant)
    yield report


def ensure_local_admin(conn: psycopg.Connection, ep: runtime.Endpoints, *, default_tenant: bool = True) -> None:
    """Embedded mode: a tenant exists (unless default_tenant is False), and the local admin
    administers every tenant. Safe to run again, and beside another process doing the same."""
    if default_tenant and not conn.execute(db.q("tenants_list")).fetchall():
        admin.add_tenant(conn, "default")
    user = conn.execute(db.q("user_by_email"), {"email": ep.admin_email}).fetchone()
    if not user:
        conn.execute(db.q("insert_local_admin"), {"email": ep.admin_email,
                                                  "password_hash": admin.hash_password(ep.admin_password)})
        user = conn.execute(db.q("user_by_email"), {"email": ep.admin_email}).fetchone()
    conn.execute(db.q("local_admin_memberships"), {"user_id": user["id"]})
    conn.commit()


def child_env(s: Settings, ep: runtime.Endpoints) -> dict:
    env = settings.child_environment()
    env.update(DATABASE_URL=ep.database_url, REDIS_URL=ep.redis_url, PROXWATCH_SECRET_KEY=ep.secret_key,
               PROXWATCH_HOME=str(s.home), PYTHONUNBUFFERED="1")
    if ep.supabase_url:
        env["SUPABASE_URL"] = ep.supabase_url
    if ep.anon_key:
        env["SUPABASE_ANON_KEY"] = ep.anon_key
    for name in ("PROXWATCH_DASHBOARD_EMAIL", "PROXWATCH_DASHBOARD_PASSWORD"):
        env.pop(name, None)
    if s.embedded and is_loopback(s.web_host):
        # Whoever reaches a loopback address is on this machine already; anywhere else, people sign in.
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
        "metrics": [py, "-m", "worker.metrics"],
        "web": [py, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"), "--server.headless", "true",
                "--server.address", s.web_host, "--server.port", str(s.web_port),
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"],
    }


def run(s: Settings, demo: bool = False, demo_servers: int = 0) -> None:
    ep = runtime.endpoints(s)
    children: dict[str, subprocess.Popen] = {}
    # SIGTERM stops `up` as Ctrl-C does, at any step: what was started so far is stopped again.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.ExitStack() as stack:
        if s.embedded:
            print(f"proxwatch: embedded mode, data in {s.home}", flush=True)
            if not stack.enter_context(home_lock(s, UP_LOCK, wait=False)):
                raise EmbeddedError(f"`proxwatch up` is running on {s.home} already: use that one, or stop it first")
            with home_lock(s, BOOTSTRAP_LOCK):
                pg = _postgres(s)
                if pg.running():
                    # Nobody owns it: a command that started Postgres holds BOOTSTRAP_LOCK until it
                    # stopped it. Left behind by a process that was killed: `up` takes it over.
                    print("proxwatch: attaching to the embedded Postgres that runs already", flush=True)
                else:
                    pg.start()
                stack.callback(pg.stop)
                print("proxwatch: applying migrations with the supabase CLI", flush=True)
                bootstrap(s, ep, always_migrate=True)
            if not s.redis_url:
                redis = EmbeddedRedis(s.home, s.redis_port, load_secrets(s.home)["redis_password"])
                redis.start()
                stack.callback(redis.stop)
            from worker.embedded.standin import StandIn

            standin = StandIn(ep.database_url, ep.jwt_secret, port=s.standin_port)
            standin.start()
            stack.callback(standin.stop)
        if demo:
            from worker.embedded.demo import HISTORY_DAYS, DemoFleet, backfill_history

            fleet = DemoFleet(s.home / "demo", extra=demo_servers)
            fleet.start()
            stack.callback(fleet.stop)
            with db.connect(ep.database_url) as conn:
                names = fleet.register(conn, ep)
                if s.embedded:
                    ensure_local_admin(conn, ep)
                backfilled = backfill_history(conn)
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6:,} more" if len(names) > 6 else "")
            print(f"proxwatch: simulated fleet up: {shown}", flush=True)
            if backfilled:
                print(f"proxwatch: backfilled {HISTORY_DAYS} days of simulated history for {', '.join(backfilled)}",
                      flush=True)
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
        web = f"[{s.web_host}]" if ":" in s.web_host else s.web_host
        print(f"proxwatch: dashboard at http://{web}:{s.web_port}  (logs in {logdir}; Ctrl-C stops)",
              flush=True)
        print(f"proxwatch: console gateway at http://{s.gateway.host}:{s.gateway.port}", flush=True)
        print(f"proxwatch: metrics at {s.metrics.url}", flush=True)
        if s.embedded and is_loopback(s.web_host):
            print(f"proxwatch: signed in automatically as {ep.admin_email} (password in {s.home}/secrets.json)",
                  flush=True)
        elif s.embedded:
            print(f"proxwatch: the dashboard listens on {s.web_host}, so everyone signs in: the local admin is "
                  f"{ep.admin_email} (password in {s.home}/secrets.json)", flush=True)
        try:
            while True:
                for name, proc in children.items():
                    if proc.poll() is not None:
                        raise EmbeddedError(f"the {name} process exited with code {proc.returncode}: "
                                            f"see {logdir / (name + '.log')}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: let the clean-up finish
        print("\nproxwatch: stopping", flush=True)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


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
