"""ssh_test: log in to the node over SSH with the pinned host key (worker.ssh), run `pveversion`,
and record the login latency and the PVE version. Its credentials are set with
`proxwatch ops ssh-set` (worker.ssh.set_credentials)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from worker import db, ssh
from worker.operations.common import OperationFailed
from worker.operations.context import Context

PVEVERSION_RE = re.compile(r"pve-manager/(?P<version>[0-9][^/\s]*)")


@dataclass
class SshResult:
    version: str
    latency_ms: int      # TCP connect + key exchange + authentication
    command_ms: int
    output: str
    host_key_fingerprint: str


def run(ctx: Context) -> tuple[str, dict]:
    """SSH to the node with the pinned host key, run pveversion, record latency and version."""
    with ctx.pool.connection() as conn:
        cred = conn.execute(db.q("ops_ssh_credentials"), {"server_id": ctx.op["server_id"],
                                                          "node": ctx.op["node"]}).fetchone()
    if cred is None:
        raise OperationFailed(f"no SSH credentials for {ctx.where}: set them with `proxwatch ops ssh-set`", "config")
    secret = ctx.box.open(cred["secret_ciphertext"])
    ctx.progress(10, f"Connecting to {cred['username']}@{cred['host']}:{cred['port']}")
    result = asyncio.run(ssh_pveversion(
        cred["host"], cred["port"], cred["username"], cred["host_key"],
        password=secret if cred["auth_kind"] == "password" else None,
        private_key=secret if cred["auth_kind"] == "key" else None, timeout=ctx.tuning.ssh_timeout_s))
    return (f"SSH OK: pve-manager {result.version}, login in {result.latency_ms} ms",
            {"latency_ms": result.latency_ms, "command_ms": result.command_ms, "version": result.version,
             "pveversion": result.output[:300], "host": cred["host"], "port": cred["port"],
             "host_key_fingerprint": result.host_key_fingerprint})


async def ssh_pveversion(host: str, port: int, username: str, host_key: str, password: str | None = None,
                         private_key: str | None = None, timeout: float = 15.0) -> SshResult:
    """SSH to the node trusting only the pinned host key (worker.ssh), run `pveversion`.
    OperationFailed in plain words.

    For manual test: ssh -o StrictHostKeyChecking=yes -p PORT USER@HOST pveversion
    """
    where = f"{host}:{port}"
    started = time.perf_counter()
    try:
        async with await ssh.connect(host, port, username, host_key, password=password, client_key=private_key,
                                     timeout=timeout) as conn:
            latency_ms = round((time.perf_counter() - started) * 1000)
            result = await conn.run("pveversion", timeout=timeout)
    except ssh.SshError as exc:
        raise OperationFailed(exc.message, exc.kind) from None
    if result.exit_status == 127:
        raise OperationFailed(f"SSH to {where} works, but pveversion is not installed there: is it a Proxmox VE node?",
                              "not_pve")
    if result.exit_status != 0:
        raise OperationFailed(f"pveversion on {where} exited with {result.exit_status}: {result.stderr.strip()[:200]}",
                              "command")
    try:
        version = parse_pveversion(result.stdout)
    except ValueError as exc:
        raise OperationFailed(f"SSH to {where} works, but {exc}", "not_pve") from None
    return SshResult(version=version, latency_ms=latency_ms, command_ms=result.ms, output=result.stdout.strip(),
                     host_key_fingerprint=ssh.fingerprint(host_key))


def parse_pveversion(output: str) -> str:
    """'pve-manager/9.1.4/5f8ca1e0 (running kernel: …)' → '9.1.4', or ValueError."""
    match = PVEVERSION_RE.search(output or "")
    if not match:
        raise ValueError(f"unexpected pveversion output: {output.strip()[:120]!r}")
    return match["version"]
