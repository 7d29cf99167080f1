"""Embedded Postgres and Redis from Debian's packages, with their data under PROXWATCH_HOME.

Postgres refuses to run as root, so when proxwatch runs as root the server runs as the
'postgres' system user (created by Debian's postgresql package) and owns its data directory.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class EmbeddedError(ProxwatchError):
    """An embedded service could not be started or stopped."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port, host):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"nothing answered on {host}:{port} within {timeout:.0f} s")


def load_secrets(home: Path) -> dict:
    """The generated passwords and keys of this PROXWATCH_HOME, created on first use (mode 600)."""
    path = home / "secrets.json"
    home.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    values = {
        "pg_password": secrets.token_urlsafe(18),
        "redis_password": secrets.token_urlsafe(18),
        "jwt_secret": secrets.token_urlsafe(48),
        "secret_key": Fernet.generate_key().decode(),
        "admin_email": "admin@proxwatch.local",
        "admin_password": secrets.token_urlsafe(12),
    }
    # Two processes starting on a new home at once must agree on one set: each writes its own file
    # and links it into place; the link fails for the second, which reads the first one's.
    fd, tmp = tempfile.mkstemp(prefix=".secrets-", dir=home)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(values, out, indent=2)
        os.link(tmp, path)
    except FileExistsError:
        return json.loads(path.read_text())
    finally:
        os.unlink(tmp)
    return values


def pg_bindir() -> Path:
    """Debian's PostgreSQL server binaries (the newest installed major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise EmbeddedError("PostgreSQL server binaries are missing: install them with 'apt-get install postgresql'"
                            " (make test and make demo do), or set DATABASE_URL.")
    return Path(found[-1]).parent


class EmbeddedPostgres:
    """A Postgres cluster in <home>/postgres listening on 127.0.0.1:<port> only."""

    def __init__(self, home: Path, port: int, password: str):
        self.datadir = home / "postgres"
        self.logfile = home / "postgres.log"
        self.port = port
        self.password = password
        self.bindir = pg_bindir()
        self.run_as = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *args]
        return list(args)

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, **kw)

    def _own(self, path: Path) -> None:
        """As root: hand a path to the postgres user and make sure it can reach it."""
        if not self.run_as:
            return
        pw = pwd.getpwnam(self.run_as)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run(["runuser", "-u", self.run_as, "--", "test", "-w", str(path)])
        if probe.returncode != 0:
            raise EmbeddedError(f"the postgres user cannot write {path}: choose a PROXWATCH_HOME that every user"
                                " can traverse (for root the default is /var/lib/proxwatch)")

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._run(str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir)).returncode == 0

    def init(self) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        self._own(self.datadir)
        pwfile = self.datadir.parent / ".pgpass-init"
        pwfile.write_text(self.password + "\n")
        try:
            self._own(pwfile)
            out = self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                            "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise EmbeddedError(f"initdb failed: {out.stderr.strip() or out.stdout.strip()}")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# proxwatch embedded mode\nwal_level = logical\nmax_connections = 200\n"
                       "shared_buffers = 256MB\nfsync = on\nlog_min_messages = warning\n")

    def start(self, timeout: float = 60) -> None:
        if not self.initialized():
            self.init()
        if self.running():
            return
        if port_in_use(self.port):
            raise EmbeddedError(f"port {self.port} is taken by another program: set PROXWATCH_PG_PORT to a free port")
        self.logfile.touch(exist_ok=True)
        self._own(self.logfile)
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        out = self._run(str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)), "-D",
                        str(self.datadir), "-l", str(self.logfile), "-o", opts)
        if out.returncode != 0:
            tail = self.logfile.read_text()[-800:] if self.logfile.exists() else ""
            raise EmbeddedError(f"Postgres did not start: {out.stderr.strip()} {tail}".strip())

    def stop(self) -> None:
        if self.running():
            self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.datadir))

    def restart(self) -> None:
        self.stop()
        self.start()


class EmbeddedRedis:
    """redis-server on 127.0.0.1:<port>, a child of this process. Redis only carries messages."""

    def __init__(self, home: Path, port: int, password: str):
        self.dir = home / "redis"
        self.port = port
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise EmbeddedError("redis-server is missing: install it with 'apt-get install redis-server'"
                                " (make test and make demo do), or set REDIS_URL.")
        if port_in_use(self.port):
            raise EmbeddedError(f"port {self.port} is taken by another program: set PROXWATCH_REDIS_PORT to a free port")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            # Messages survive a restart of the embedded Redis (append-only file in PROXWATCH_HOME).
            out.write(f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\ndir {self.dir}\n"
                      "appendonly yes\nsave \"\"\nprotected-mode yes\nloglevel warning\n"
                      f"logfile {self.dir / 'redis.log'}\n")
        self.proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(self.port, timeout)
        except EmbeddedError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
