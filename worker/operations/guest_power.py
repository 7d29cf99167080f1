"""Power actions on a guest (start, stop, shutdown, reset of a VM or container): the PVE task
followed to its end, then the guest's row in public.guests brought along so the dashboard shows
the new state without waiting for the next guest sync."""

from __future__ import annotations

import logging
import time

from worker import db, inventory
from worker.operations.common import OperationFailed
from worker.operations.context import Context
from worker.operations.tasks import run_task
from worker.pve import PveError

log = logging.getLogger(__name__)

# Each action: (what it is doing, what it has done), as a person reads them.
POWER_WORDS = {"start": ("Starting", "started"), "stop": ("Stopping", "stopped"),
               "shutdown": ("Shutting down", "shut down"), "reset": ("Resetting", "reset")}
POWER_ACTIONS = tuple(POWER_WORDS)


def guest_label(params: dict) -> str:
    kind = "container" if params.get("guest_type") == "lxc" else "VM"
    name = params.get("guest_name")
    return f"{kind} {params.get('vmid')}" + (f" ({name})" if name else "")


def run(ctx: Context) -> tuple[str, dict]:
    action = ctx.op["operation_type"]
    vmid, kind, node = ctx.params.get("vmid"), ctx.params.get("guest_type"), ctx.params.get("node")
    if action not in POWER_ACTIONS or kind not in ("qemu", "lxc") or not node or not vmid:
        raise OperationFailed(f"the {action} request names no known guest", "config")
    doing, done = POWER_WORDS[action]
    label = guest_label(ctx.params)
    what = f"{doing} {label} on {node}"
    ctx.progress(2, what)
    # For manual test: pvesh create /nodes/<node>/qemu/<vmid>/status/start
    warnings, _ = run_task(ctx, node, "POST", f"nodes/{node}/{kind}/{vmid}/status/{action}",
                           message=what, what=f"{doing} {label}")
    meta = dict(ctx.metadata)
    try:
        current = ctx.pve("GET", f"nodes/{node}/{kind}/{vmid}/status/current")
        if isinstance(current, dict):
            meta["guest_status"] = current.get("status")
    except PveError as exc:
        log.info("status of %s after %s: %s", label, action, exc.message)
    if meta.get("guest_status"):
        ctx.progress(98, "Updating the guest list")
        meta["guest_row"] = follow_guest_row(ctx, int(vmid), meta["guest_status"])
    state = f" (now {meta['guest_status']})" if meta.get("guest_status") else ""
    return (f"{label[0].upper()}{label[1:]} {done}{state}" + (f" ({warnings})" if warnings else ""), meta)


def follow_guest_row(ctx: Context, vmid: int, status: str, within_s: float = 10.0) -> str:
    """Make the guest's row (public.guests, kept by worker.inventory) show the new state: sync the
    server's guests now, and again while /cluster/resources still lags behind (it trails reality by
    a few seconds). Returns the row's status, or a note when it could not be brought along."""
    deadline = time.monotonic() + within_s
    row_status = None
    while True:
        try:
            inventory.sync_guests(ctx.poller, str(ctx.op["server_id"]))
            with ctx.pool.connection() as conn:
                row = conn.execute(db.q("ops_guest_status"), {"server_id": ctx.op["server_id"], "vmid": vmid}).fetchone()
            row_status = row["status"] if row else None
        except Exception as exc:  # noqa: BLE001 - the power action itself succeeded
            log.warning("guest sync after a power action on %s failed: %s", ctx.where, exc)
            return f"not synced: {exc}"
        if row_status == status or time.monotonic() > deadline:
            return row_status or "gone"
        time.sleep(1.0)
