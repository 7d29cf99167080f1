"""A real OpenSSH server on 127.0.0.1 for the tests: its own host keys, config, authorized key and a
fake `pveversion` on its PATH; the system's sshd and its configuration are never touched.

Key login works for the user running the tests with client_key; password login is enabled, so a
wrong password is refused by sshd itself; stranger_key is not authorized; other_host_key is a host
key the server does not have (to pin a wrong one).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.waiting import free_port, wait_for_port

PVEVERSION = "pve-manager/9.1.4/5f8ca1e0a3c2e4b1 (running kernel: 6.14.8-2-pve)"
KEYS = ("host_key", "client_key", "stranger_key", "other_host_key")


class Sshd:
    def __init__(self, root: Path, port: int):
        self.root, self.port, self.host = root, port, "127.0.0.1"
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None

    def key(self, name: str) -> tuple[str, str]:
        """(private key text, public key line) of a key made for this server."""
        return (self.root / name).read_text(), " ".join((self.root / f"{name}.pub").read_text().split()[:2])

    @property
    def host_key(self) -> str:
        return self.key("host_key")[1]

    def __getitem__(self, name: str):
        """The mapping view the gateway tests read: port, user, dir, host_key, other_host_key (public
        key lines) and client_key (the private key's text)."""
        view = {"port": lambda: self.port, "user": lambda: self.user, "dir": lambda: self.root,
                "host_key": lambda: self.host_key, "other_host_key": lambda: self.key("other_host_key")[1],
                "client_key": lambda: self.key("client_key")[0]}
        return view[name]()


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


@contextlib.contextmanager
def running_sshd(root: Path):
    """An Sshd whose files live in root (an empty directory), stopped on exit."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.path.exists(sshd_bin), "openssh-server is missing: `apt-get install -y openssh-server` (make test does)"
    os.chmod(root, 0o755)
    for name in KEYS:
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
PrintMotd no
PrintLastLog no
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
    log_path = root / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = Sshd(root, port)
        server.proc = proc
        try:
            wait_for_port(port, 20, proc=proc, log=log_path, name="sshd")
            yield server
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
