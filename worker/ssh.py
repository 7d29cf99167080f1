"""SSH to Proxmox nodes with asyncssh, trusting exactly one pinned host key.

A small API shared by the console gateway (web SSH terminals) and operations (ssh_test):

    conn = await ssh.connect(host, port, username, known_host_key,
                             password=None, client_key=None, timeout=10.0)
    result = await conn.run("pveversion")          # RunResult(exit_status, stdout, stderr, ms)
    shell = await conn.shell(cols=80, rows=24)     # an asyncssh process with a pty (bytes in/out)
    await conn.close()                              # or: async with await ssh.connect(...) as conn:

- known_host_key is the node's public host key as an OpenSSH line ("ssh-ed25519 AAAA…", the
  content of /etc/ssh/ssh_host_ed25519_key.pub); nothing else is trusted — no known_hosts file,
  no ~/.ssh/config, no agent, no default keys. A different key is refused (kind "hostkey").
- client_key is a private key in OpenSSH or PEM format (text); password a password. Either or both.
- Every failure is SshError(kind, message): timeout, refused, dns, network, hostkey, auth, config —
  the same vocabulary as worker.pve, plus hostkey — with a plain sentence.

`await ssh.fetch_host_key(host, port)` reads a node's host key (to pin it on first use; show its
fingerprint to a person before storing it). `fingerprint(line)` gives OpenSSH's SHA256:… form.

`set_credentials(conn, box, server_id, host=…, username=…, host_key=…, password=… | private_key=…)`
stores how ssh_test reaches a server's nodes (`proxwatch ops ssh-set`): every field checked first
(`check_host_key`, `check_private_key`: ValueError with a sentence, nothing written), the secret
encrypted.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import asyncio
import re
import socket
import time
from dataclasses import dataclass

import asyncssh
import psycopg

from worker import db
from worker.crypto import Box

TIMEOUT, REFUSED, DNS, NETWORK, HOSTKEY, AUTH, CONFIG = (
    "timeout", "refused", "dns", "network", "hostkey", "auth", "config")


class SshError(ProxwatchError):
    """The SSH connection could not be used."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def parse_host_key(line: str) -> asyncssh.SSHKey:
    """An OpenSSH public key line → the key, or SshError(config) with a sentence."""
    text = (line or "").strip()
    try:
        return asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise SshError(CONFIG, "the pinned host key is not an OpenSSH public key line"
                               " (like 'ssh-ed25519 AAAA…', from /etc/ssh/ssh_host_ed25519_key.pub)") from None


def fingerprint(line: str) -> str:
    """OpenSSH's SHA256:… fingerprint of a public key line."""
    return parse_host_key(line).get_fingerprint("sha256")


def _private_key(text: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_private_key(text)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise SshError(CONFIG, "the client key is not a private key in OpenSSH or PEM format"
                               " (or it is encrypted with a passphrase)") from None


def _classify(exc: BaseException, where: str, timeout: float, pinned: str | None = None) -> SshError:
    if isinstance(exc, SshError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return SshError(HOSTKEY, f"{where} presented a host key that does not match the pinned one"
                                 + (f" ({pinned})" if pinned else "") + ": refusing to connect")
    if isinstance(exc, asyncssh.PermissionDenied):
        return SshError(AUTH, f"{where} refused the login (wrong user, password or key)")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return SshError(TIMEOUT, f"{where} did not answer within {timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return SshError(REFUSED, f"{where} refused the connection (nothing listens on that port)")
    if isinstance(exc, socket.gaierror):
        return SshError(DNS, f"the name of {where} could not be resolved")
    if isinstance(exc, asyncssh.Error):
        return SshError(NETWORK, f"the SSH session with {where} failed: {exc.reason}")
    if isinstance(exc, OSError):
        return SshError(NETWORK, f"{where} could not be reached: {exc.strerror or exc}")
    return SshError(NETWORK, f"{where} could not be used: {exc}")


@dataclass
class RunResult:
    exit_status: int | None
    stdout: str
    stderr: str
    ms: int


class SshConnection:
    """One authenticated SSH connection to a node."""

    def __init__(self, conn: asyncssh.SSHClientConnection, where: str):
        self._conn = conn
        self.where = where

    async def run(self, cmd: str, timeout: float = 30.0) -> RunResult:
        """Run one command; its exit status and output (text). SshError on failure or timeout."""
        start = time.perf_counter()
        try:
            done = await asyncio.wait_for(self._conn.run(cmd, check=False), timeout)
        except Exception as exc:  # noqa: BLE001 - one exception type for callers
            raise _classify(exc, self.where, timeout) from exc
        ms = round((time.perf_counter() - start) * 1000)
        out, err = done.stdout, done.stderr
        return RunResult(done.exit_status, out if isinstance(out, str) else (out or b"").decode(errors="replace"),
                         err if isinstance(err, str) else (err or b"").decode(errors="replace"), ms)

    async def shell(self, cols: int = 80, rows: int = 24, term: str = "xterm-256color"):
        """An interactive login shell with a pty: an asyncssh process whose stdin takes bytes and whose
        stdout gives bytes (stderr is merged by the pty); change_terminal_size(cols, rows) resizes."""
        try:
            return await self._conn.create_process(term_type=term, term_size=(cols, rows), encoding=None)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, self.where, 10) from exc

    async def close(self) -> None:
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), 5)
        except (asyncio.TimeoutError, OSError, asyncssh.Error):
            pass

    async def __aenter__(self) -> "SshConnection":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def connect(host: str, port: int, username: str, known_host_key: str, password: str | None = None,
                  client_key: str | None = None, timeout: float = 10.0) -> SshConnection:
    """Connect and log in, trusting only known_host_key. SshError on any failure."""
    where = f"{host}:{port}"
    if not password and not client_key:
        raise SshError(CONFIG, f"no password or key is set for {username}@{where}")
    pinned = parse_host_key(known_host_key)
    keys = [_private_key(client_key)] if client_key else None
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            host, port, username=username, password=password, client_keys=keys,
            known_hosts=([pinned], [], []), config=None, agent_path=None, agent_forwarding=False,
            preferred_auth=[m for m, on in (("publickey", keys), ("keyboard-interactive", password),
                                            ("password", password)) if on],
            connect_timeout=timeout, login_timeout=timeout, keepalive_interval=30), timeout + 1)
    except Exception as exc:  # noqa: BLE001 - one exception type for callers
        raise _classify(exc, where, timeout, pinned.get_fingerprint("sha256")) from exc
    return SshConnection(conn, where)


async def fetch_host_key(host: str, port: int = 22, timeout: float = 10.0) -> str:
    """The node's host key as an OpenSSH line (to pin on first use, after a person checked it)."""
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, config=None), timeout)
    except Exception as exc:  # noqa: BLE001
        raise _classify(exc, f"{host}:{port}", timeout) from exc
    if key is None:
        raise SshError(NETWORK, f"{host}:{port} offered no host key")
    return key.export_public_key("openssh").decode().strip()


# ---------------------------------------------------------- credentials a person gives (ssh-set)
def check_host_key(text: str) -> str:
    """An OpenSSH public key line ('ssh-ed25519 AAAA… [comment]', or a known_hosts line) → 'type base64',
    or ValueError with a sentence."""
    parts = text.strip().split()
    # A known_hosts line starts with the host pattern(s).
    if len(parts) >= 3 and not re.match(r"^(ssh-|ecdsa-|sk-)", parts[0]):
        parts = parts[1:]
    if len(parts) < 2:
        raise ValueError("the host key must be an OpenSSH public key line, e.g. the contents of "
                         "/etc/ssh/ssh_host_ed25519_key.pub on the node")
    line = f"{parts[0]} {parts[1]}"
    try:
        parse_host_key(line)
    except SshError:
        raise ValueError("the host key is not a valid OpenSSH public key (copy /etc/ssh/ssh_host_ed25519_key.pub "
                         "of the node)") from None
    return line


def check_private_key(text: str) -> str:
    """The private key as given, or ValueError saying why proxwatch cannot log in with it."""
    try:
        asyncssh.import_private_key(text)
    except asyncssh.KeyEncryptionError:
        raise ValueError("the private key is protected by a passphrase: use a key without one, kept for "
                         "proxwatch only") from None
    except (asyncssh.KeyImportError, ValueError):
        raise ValueError("the private key file is not an SSH private key (OpenSSH or PEM format)") from None
    return text


def set_credentials(conn: psycopg.Connection, box: Box, server_id, *, host: str, username: str, host_key: str,
                    port: int = 22, password: str | None = None, private_key: str | None = None,
                    node: str = "") -> dict:
    """Store (or replace) the SSH access of a server's node ('' = every node without its own):
    everything checked first (ValueError with a sentence, nothing written), the secret encrypted.
    The caller commits."""
    host = (host or "").strip()
    if not host or len(host) > 255 or re.search(r"\s", host):
        raise ValueError("the SSH host must be a host name or address, without spaces")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"the SSH port must be between 1 and 65535, not {port}")
    username = (username or "").strip()
    if not username or len(username) > 64 or re.search(r"[\s@:]", username):
        raise ValueError("the SSH user must be a plain user name (like root)")
    if node and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", node):
        raise ValueError(f"{node!r} is not a PVE node name")
    if bool(password) == bool(private_key):
        raise ValueError("give either a password or a private key for SSH (exactly one)")
    line = check_host_key(host_key)
    if private_key:
        check_private_key(private_key)
    auth_kind = "key" if private_key else "password"
    conn.execute(db.q("ops_upsert_ssh_credentials"), {
        "server_id": server_id, "node": node, "host": host, "port": int(port), "username": username,
        "host_key": line, "auth_kind": auth_kind, "secret_ciphertext": box.seal(private_key or password)})
    return {"host": host, "port": int(port), "username": username, "node": node, "auth_kind": auth_kind,
            "fingerprint": fingerprint(line)}
