"""The product's processes as a person starts them: `python -m …` subprocesses in their own
session (so a test can stop the whole group), with the environment of the test's services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def service_env(db_url: str, redis_url: str, secret_key: str, home: Path, **extra: str) -> dict:
    """os.environ plus the services of one test (database, Redis, secret key, PROXWATCH_HOME),
    plain output for 200 columns, no worker metrics endpoint (tests that want one set its port),
    and `extra`."""
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, PROXWATCH_SECRET_KEY=secret_key,
               PROXWATCH_HOME=str(home), PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1",
               PROXWATCH_WORKER_METRICS_PORT="0")
    env.update(extra)
    return env


def flush_redis(redis_url: str) -> None:
    """Forget every message of an earlier test (the Redis server is shared by the session)."""
    redis.Redis.from_url(redis_url).flushall()


def spawn(args, env: dict, log, prefix: tuple = (), **kw) -> subprocess.Popen:
    """`python <args>` from the repository root, in its own session, its output into log; `prefix`
    runs it through another command (`("ip", "netns", "exec", name)`: inside a network namespace)."""
    return subprocess.Popen([*prefix, sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, **kw)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 20) -> None:
    """Signal the process group, wait for it, SIGKILL it if it does not end within timeout seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def run_cli(env: dict, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """`python -m worker.cli <args>` to its end (standard input: `input`), output captured as text."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, input=input)


class Procs:
    """Subprocesses of one test (worker, scheduler), stopped at the end; their output in one log."""

    def __init__(self, env: dict, logfile: Path):
        self.env = env
        self.logfile = logfile
        self.log = open(logfile, "ab")
        self.procs: list[subprocess.Popen] = []

    def spawn(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        proc = spawn(args, env or self.env, self.log)
        self.procs.append(proc)
        return proc

    def worker(self, threads: int = 4, env: dict | None = None) -> subprocess.Popen:
        return self.spawn("-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1",
                          "--threads", str(threads), env=env)

    def scheduler(self, env: dict | None = None) -> subprocess.Popen:
        return self.spawn("-m", "worker.scheduler", env=env)

    def output(self) -> str:
        self.log.flush()
        return self.logfile.read_text(errors="replace")[-4000:]

    stop = staticmethod(stop)

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.log.close()
