"""The embedded Supabase stand-in for the tests: in the test's process (running_standin, the
`standin` fixture) or as its own process (StandInProcess, as `proxwatch up` runs it), and signing
in to it with the official client."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from supabase import create_client

from tests.support.processes import ROOT
from tests.support.waiting import free_port, wait_for_http
from worker.embedded.standin import StandIn, make_keys


@contextlib.contextmanager
def running_standin(db_url: str, jwt_secret: str, **kw):
    """A started StandIn for the database (kw: access_token_ttl_s, port, …), stopped on exit."""
    server = StandIn(db_url, jwt_secret, **kw).start()
    try:
        yield server
    finally:
        server.stop()


def signed_in(standin, who: tuple[str, str]):
    """An official supabase client signed in as who = (email, password)."""
    client = create_client(standin.url, standin.anon_key)
    client.auth.sign_in_with_password({"email": who[0], "password": who[1]})
    return client


def sign_in(standin, who: tuple[str, str]) -> str:
    """A user's access token through the official client's password sign-in."""
    client = create_client(standin.url, standin.anon_key)
    return client.auth.sign_in_with_password({"email": who[0], "password": who[1]}).session.access_token


class StandInProcess:
    """`python -m worker.embedded.standin` on a free loopback port, as `proxwatch up` runs it
    beside the other processes (so a benchmark's client does not share its interpreter)."""

    def __init__(self, db_url: str, jwt_secret: str, home: Path):
        self.db_url = db_url
        self.jwt_secret = jwt_secret
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.anon_key = make_keys(jwt_secret)["anon_key"]
        self.log_path = home / f"standin-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "StandInProcess":
        env = {**os.environ, "DATABASE_URL": self.db_url, "PROXWATCH_JWT_SECRET": self.jwt_secret,
               "PROXWATCH_SUPABASE_PORT": str(self.port), "PYTHONPATH": str(ROOT)}
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.embedded.standin"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_http(f"{self.url}/auth/v1/health", 60, proc=self.proc, log=self.log_path, name="the stand-in")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
