"""service_restart: restart one of PVE's own services on a node and follow the PVE task."""

from __future__ import annotations

from worker.operations.common import OperationFailed
from worker.operations.context import Context
from worker.operations.tasks import run_task

# PVE's restartable services (pve-manager PVE/API2/Services.pm); public.operation_services() in SQL
# holds the same list (a test keeps them equal).
SERVICES = ("chrony", "corosync", "cron", "ksmtuned", "lxcfs", "postfix", "proxmox-firewall", "pve-cluster",
            "pve-firewall", "pve-ha-crm", "pve-ha-lrm", "pve-lxc-syscalld", "pvedaemon", "pvefw-logger",
            "pveproxy", "pvescheduler", "pvestatd", "qmeventd", "spiceproxy", "sshd", "syslog",
            "systemd-journald", "systemd-timesyncd")


def run(ctx: Context) -> tuple[str, dict]:
    service = ctx.params.get("service")
    if service not in SERVICES:  # enqueue refuses these; a hand-made row must not reach PVE either
        raise OperationFailed(f"{service!r} is not a service PVE can restart", "config")
    node = ctx.resolve_node()
    what = f"Restarting {service} on {node}"
    ctx.progress(2, what)
    # For manual test: pvesh create /nodes/<node>/services/<service>/restart
    warnings, took = run_task(ctx, node, "POST", f"nodes/{node}/services/{service}/restart", message=what, what=what)
    return (f"{service} on {node} restarted in {took:.0f} s" + (f" ({warnings})" if warnings else ""),
            {**ctx.metadata, "duration_s": round(took, 1)})
