"""Fixtures and helpers shared by the operations tests (no tests here).

- OpsPve: fakepve, plus what it does not model the way the operations need — service restarts as
  `srvrestart` tasks that take time, ACME orders/renewals whose task log grows step by step as on
  a real node (pve-manager PVE/API2/ACME.pm), and certificates/info with a pveproxy-ssl.pem whose
  expiry a test sets. Served over real HTTPS with fakepve's own PKI.
- sshd: a real OpenSSH server on 127.0.0.1 (its own host key, config, authorized key and a fake
  `pveversion` on its PATH); the system's sshd is never touched.
- helpers to run the real dramatiq worker / scheduler as subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis
from fakepve.model import PveError as FakePveError, TaskError
from fakepve.pytest_plugin import _Serving
from fakepve.server import USER, FakePve, ok, params

from tests.conftest import free_port
from tests.integration.conftest import TOKEN
from worker.operations.service_restart import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400

ACME_LOG = [
    "Loading ACME account details",
    "Placing ACME order",
    "Order URL: https://acme-v02.api.letsencrypt.org/acme/order/1234567/89012345",
    "",
    "Getting authorization details from 'https://acme-v02.api.letsencrypt.org/acme/authz-v3/4567890'",
    "... pending!",
    "Setting up webserver",
    "Triggering validation",
    "Sleeping for 5 seconds",
    "Status is 'valid'!",
    "",
    "All domains validated!",
    "",
    "Creating CSR",
    "Finalizing order",
    "Checking order status",
    "valid!",
    "",
    "Downloading certificate",
    "Setting pveproxy certificate and key",
    "Restarting pveproxy",
]


class OpsPve(FakePve):
    """fakepve with service restarts, ACME certificate tasks and certificate info as a node has them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.restart_secs = 3.0            # PVE seconds a service restart takes
        self.cert_expiry: dict[str, float] = {}   # node -> notafter of its pveproxy-ssl.pem (none: no ACME cert)
        self.acme_step_secs = 1.0          # PVE seconds between two lines of an ACME task log
        self.acme_error: str | None = None # the ACME task ends with TASK ERROR: this, after "Triggering validation"
        self.acme_calls: list[tuple[str, str]] = []   # (method, node) of every ACME order/renewal

    def _register_stateful(self, r, formats):
        super()._register_stateful(r, formats)
        for p in formats:
            node = p + "/nodes/{node}"
            r.add_post(node + "/services/{service}/restart", self._ops_restart)
            r.add_get(node + "/certificates/info", self._ops_cert_info)
            r.add_post(node + "/certificates/acme/certificate", self._ops_acme)
            r.add_put(node + "/certificates/acme/certificate", self._ops_acme)

    def _ops_node(self, request) -> str:
        node = request.match_info["node"]
        if node not in self.nodes:
            raise FakePveError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: "
                                    "Name or service not known")
        return node

    async def _ops_restart(self, request):
        node = self._ops_node(request)
        service = request.match_info["service"]
        if service not in SERVICES:
            raise FakePveError(400, "Parameter verification failed.",
                               {"service": f"value '{service}' does not have a value in the enumeration "
                                           f"'{', '.join(SERVICES)}'"})
        secs = self.restart_secs

        async def body():
            await self.pause(secs)
        upid = await self.task(node, "srvrestart", service, request[USER], body)
        return ok(upid)

    async def _ops_cert_info(self, request):
        node = self._ops_node(request)
        data = [{"filename": "pve-ssl.pem", "fingerprint": "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
                 "10:21:32:43:54:65:76:87:98:A9:BA:CB:DC:ED:FE:0F", "issuer": "CN=Proxmox Virtual Environment",
                 "subject": f"CN={node}.lan", "notbefore": int(time.time()) - 300 * DAY,
                 "notafter": int(time.time()) + 700 * DAY, "san": [f"DNS:{node}.lan"]}]
        if node in self.cert_expiry:
            notafter = int(self.cert_expiry[node])
            data.append({"filename": "pveproxy-ssl.pem", "fingerprint": f"AB:CD:{notafter % 100:02d}:" + ":".join(
                ["EF"] * 29), "issuer": "CN=R11,O=Let's Encrypt,C=US", "subject": f"CN={node}.example.org",
                "notbefore": notafter - 90 * DAY, "notafter": notafter, "san": [f"DNS:{node}.example.org"]})
        return ok(data)

    async def _ops_acme(self, request):
        node = self._ops_node(request)
        p = await params(request)
        force = str(p.get("force", "0")) in ("1", "true")
        renew = request.method == "PUT"
        expiry = self.cert_expiry.get(node)
        if renew and expiry is None:
            raise FakePveError(500, "No current (custom) certificate found, please order a new certificate!")
        if renew and expiry > time.time() + 30 * DAY and not force:
            raise FakePveError(400, "Parameter verification failed.",
                               {"force": "Certificate does not expire within the next 30 days, and 'force' is not set."})
        self.acme_calls.append((request.method, node))
        holder: dict = {}
        error = self.acme_error

        async def body():
            record = self.tasks[holder["upid"]] if "upid" in holder else self.tasklog[-1]
            for line in ACME_LOG + (["Revoking old certificate"] if renew else []):
                record["log"].append(line)
                await self.pause(self.acme_step_secs)
                if error and line == "Triggering validation":
                    raise TaskError(error)
            self.cert_expiry[node] = time.time() + 90 * DAY
        holder["upid"] = await self.task(node, "acmerenew" if renew else "acmenewcert", "", request[USER], body)
        return ok(holder["upid"])


def serve(pki, time_scale: float) -> tuple[OpsPve, _Serving]:
    pve = OpsPve(user="root@pam", password="secret", host="127.0.0.1", port=0)
    pve.time_scale = time_scale
    user, rest = TOKEN.split("!", 1)
    tokenid, secret = rest.split("=", 1)
    pve.apitokens[f"{user}!{tokenid}"] = secret
    return pve, _Serving(pve, *pki)


@pytest.fixture
def opspve(_fakepve_pki):
    """An OpsPve over HTTPS where 1 PVE second is 0.1 s (a 3 s restart takes 0.3 s), with VM 100
    ("web", stopped) and container 200 ("dns", running) on node pve1."""
    pve, serving = serve(_fakepve_pki, 0.1)
    pve.add_vm(100, "web", node="pve1", status="stopped")
    pve.add_ct(200, "dns", node="pve1", status="running")
    try:
        yield pve
    finally:
        serving.stop()


# ------------------------------------------------------------------------------------------ guests
def sync_guests(pool, box, server_id) -> None:
    """Fill public.guests as the guest sync does (worker.inventory, against the fake's /cluster/resources)."""
    from worker import inventory
    from worker.polling import Poller
    from worker.settings import load

    result = inventory.sync_guests(Poller(pool, box, load()), str(server_id))
    assert result is not None and not result.error_kind, result


# ------------------------------------------------------------------------------------------- sshd
PVEVERSION = "pve-manager/9.1.4/5f8ca1e0a3c2e4b1 (running kernel: 6.14.8-2-pve)"


class Sshd:
    def __init__(self, root: Path, port: int):
        self.root, self.port, self.host = root, port, "127.0.0.1"
        self.proc: subprocess.Popen | None = None

    def key(self, name: str) -> tuple[str, str]:
        """(private key text, public key line) of a key made for this server."""
        return (self.root / name).read_text(), " ".join((self.root / f"{name}.pub").read_text().split()[:2])

    @property
    def host_key(self) -> str:
        return self.key("host_key")[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (key login as the user running the tests; password login enabled,
    so a wrong password is refused by sshd itself). `pveversion` on its PATH prints PVEVERSION."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.path.exists(sshd_bin), "openssh-server is missing: `apt-get install -y openssh-server` (make test does)"
    root = tmp_path_factory.mktemp("sshd")
    os.chmod(root, 0o755)
    for name in ("host_key", "client_key", "stranger_key", "other_host_key"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "pveversion").write_text(f"#!/bin/sh\necho '{PVEVERSION}'\n")
    os.chmod(bindir / "pveversion", 0o755)
    port = free_port()
    (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
SetEnv PATH={bindir}:/usr/local/bin:/usr/bin:/bin
MaxStartups 50:30:100
LogLevel VERBOSE
""")
    command = [sshd_bin, "-D", "-e", "-f", str(root / "sshd_config")]
    if not os.path.isdir("/run/sshd"):
        # sshd wants its privilege-separation directory; give it a private one in a mount namespace
        # (as root), so nothing of the system changes.
        (root / "run").mkdir()
        command = ["unshare", "-m", "sh", "-c",
                   f"mount --bind {root}/run /run && mkdir -p /run/sshd && exec {' '.join(command)}"]
    log = open(root / "sshd.log", "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Sshd(root, port)
    server.proc = proc
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"sshd exited: {(root / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)
    else:
        raise AssertionError(f"sshd did not listen: {(root / 'sshd.log').read_text()[-2000:]}")
    yield server
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


# ---------------------------------------------------------------------------------------- processes
def wait_for(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


@pytest.fixture
def ops_env(db_url, redis_server, secret_key, tmp_path):
    redis.Redis.from_url(redis_server.url).flushall()
    return dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_server.url, PROXWATCH_SECRET_KEY=secret_key,
                PROXWATCH_HOME=str(tmp_path), PYTHONUNBUFFERED="1", PROXWATCH_OPERATION_POLL_MS="200",
                COLUMNS="200", NO_COLOR="1")


class Procs:
    """Subprocesses of one test (worker, scheduler), stopped at the end; their output in one log."""

    def __init__(self, env: dict, logfile: Path):
        self.env = env
        self.logfile = logfile
        self.log = open(logfile, "ab")
        self.procs: list[subprocess.Popen] = []

    def spawn(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env or self.env, stdout=self.log,
                                stderr=subprocess.STDOUT, start_new_session=True)
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

    @staticmethod
    def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        self.log.close()


@pytest.fixture
def procs(ops_env, tmp_path):
    p = Procs(ops_env, tmp_path / "procs.log")
    yield p
    p.close()


def op_row(db_url: str, operation_id) -> dict:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as c:
        return c.execute("select * from active_operations where id = %s", (str(operation_id),)).fetchone()


def finished(db_url: str, operation_id):
    row = op_row(db_url, operation_id)
    return row if row and row["status"] in ("completed", "failed") else None
