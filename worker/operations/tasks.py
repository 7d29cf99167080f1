"""Following a PVE task: what a service restart, a certificate renewal and a power action have in
common once PVE has answered with a task id (UPID).

    warnings, took_s = run_task(ctx, node, "POST", f"nodes/{node}/services/{service}/restart",
                                message="Restarting …", what="Restarting …")

starts the task, records its UPID on the operation, follows its status and log to the end (progress
from the log when the handler can read it, else from the time elapsed against the estimate), and
judges the end: no warnings (None) when it ended well, PVE's warning line when it ended with
warnings, OperationFailed with PVE's reason otherwise.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from proxmoxer.core import ResourceException

from worker.operations.common import OperationFailed, utcnow
from worker.operations.context import Context
from worker.pve import CONNECTION_LEVEL, PveError

# A line of a task log → (progress, message), or None for lines that say nothing about progress.
LineReader = Callable[[str], tuple[int, str] | None]

UPID_RE = re.compile(r"^UPID:(?P<node>[^:]+):(?P<pid>[0-9A-Fa-f]{8}):(?P<pstart>[0-9A-Fa-f]{8,9}):"
                     r"(?P<starttime>[0-9A-Fa-f]{8}):(?P<type>[^:]*):(?P<id>[^:]*):(?P<user>[^:]+):$")


def parse_upid(upid: str) -> dict:
    """A UPID's fields (node, pid, pstart, starttime, type, id, user), or ValueError."""
    match = UPID_RE.match(upid or "")
    if not match:
        raise ValueError(f"{upid!r} is not a PVE task id (UPID)")
    out = match.groupdict()
    out["starttime"] = int(out["starttime"], 16)
    return out


def pve_message(exc: PveError) -> str:
    """PveError's sentence, with PVE's per-parameter reasons when it gave some (a 400 "Parameter
    verification failed." alone does not say what to change)."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None) if isinstance(cause, ResourceException) else None
    if isinstance(errors, dict) and errors:
        details = "; ".join(f"{k}: {str(v).strip()}" for k, v in errors.items())
        return f"{exc.message.rstrip('.')}: {details}"
    return exc.message


def timed_progress(elapsed_s: float, estimate_ms: int | None, cap: int = 95) -> int:
    """Progress of an operation known only by its expected duration: elapsed / estimate, capped
    below 100 until the task says it is done."""
    if not estimate_ms:
        return 0
    return max(0, min(cap, int(elapsed_s * 1000 * 100 / estimate_ms)))


def run_task(ctx: Context, node: str, method: str, path: str, *, message: str, what: str,
             on_line: LineReader | None = None, **params) -> tuple[str | None, float]:
    """Start a PVE task (`method path` answers with its UPID), follow it to its end and judge it:
    (its warnings or None when it ended well, the seconds it ran from its UPID on), or
    OperationFailed saying `what` failed and why."""
    upid = str(ctx.pve(method, path, **params))
    ctx.set_task(upid, node)
    started = time.monotonic()
    exitstatus, _ = follow_task(ctx, node, upid, message, on_line)
    warnings = task_outcome(ctx, exitstatus, what)
    return warnings, time.monotonic() - started


def follow_task(ctx: Context, node: str, upid: str, message: str,
                on_line: LineReader | None = None) -> tuple[str, list[str]]:
    """Follow a PVE task to its end: (exitstatus, log lines). Progress comes from on_line (the
    log) when given, else from the time elapsed against the estimate.

    For manual test: pvesh get /nodes/<node>/tasks/<upid>/status; … /log --start 0
    """
    t = ctx.tuning
    started = time.monotonic()
    lines: list[str] = []
    failures = 0
    path = f"nodes/{node}/tasks/{upid}"
    while True:
        try:
            status = ctx.pve("GET", f"{path}/status")
            new = ctx.pve("GET", f"{path}/log", start=len(lines), limit=500) or []
            failures = 0
        except PveError as exc:
            failures += 1
            if (exc.kind not in CONNECTION_LEVEL and exc.kind != "http") or failures >= 5:
                raise OperationFailed(f"lost track of the PVE task {upid}: {pve_message(exc)}; it may still be "
                                      "running on the server", exc.kind, {"upid": upid}) from None
            time.sleep(t.task_poll_ms / 1000)
            continue
        for entry in sorted((e for e in new if isinstance(e, dict)), key=lambda e: int(e.get("n", 0))):
            text = str(entry.get("t", ""))
            lines.append(text)
            step = on_line(text) if on_line else None
            if step:
                ctx.progress(step[0], step[1])
        if isinstance(status, dict) and status.get("status") == "stopped":
            ctx.metadata["task_log"] = lines[-20:]
            return str(status.get("exitstatus") or "unknown"), lines
        elapsed = time.monotonic() - started
        if on_line is None:
            # Against the estimate from the request on, as the dashboard counts the time remaining.
            since_request = (utcnow() - ctx.op["started_at"]).total_seconds()
            ctx.progress(timed_progress(since_request, ctx.op["estimated_duration_ms"]), message, force=False)
        if elapsed > t.task_deadline_s:
            raise OperationFailed(f"the PVE task {upid} did not finish within {t.task_deadline_s // 60} min; it may "
                                  "still be running on the server", "timeout", {"upid": upid})
        time.sleep(t.task_poll_ms / 1000)


def task_outcome(ctx: Context, exitstatus: str, what: str) -> str | None:
    """None when the task ended well, its warnings when it ended with some; OperationFailed with
    PVE's reason otherwise."""
    if exitstatus == "OK":
        return None
    if exitstatus.startswith("WARNINGS"):
        return exitstatus
    raise OperationFailed(f"{what} failed: {exitstatus}", "task", dict(ctx.metadata))
