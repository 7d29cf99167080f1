"""Operation buttons with their states (idle, running, done, failed), for any page:

    from dashboard import ops_ui
    ops_ui.server_operations(client, server_row)          # Test SSH · Restart Service · Renew Certificate
    ops_ui.guest_operations(client, server_row, guest)    # Start · Shutdown · Stop · Reset

States of a button:
- normal: "Test SSH", "Restart Service", "Renew Certificate", "Start" …;
- active (pending or in progress): disabled, "Testing…", "Restarting… (4:32 remaining)" (the
  estimate minus the time since the request), "Processing Renewal (60%)", "Starting…" …, with a
  progress bar and the operation's message;
- completed: the result shown briefly (SUCCESS_S), then normal again;
- failed: the error in plain words and a "Retry …" button.

Everything is read and requested through SQL functions with the user's JWT (operation_states,
operation_options, request_operation), so a viewer sees the states but cannot press. Two tabs or two
users see the same state: each page watches active_operations through Realtime (dashboard/live.py)
and redraws on a change; while an operation runs, the panel also redraws every second for the
countdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import streamlit as st

from dashboard import data, live, timefmt
from dashboard.text import plain

log = logging.getLogger("proxwatch.ops_ui")

SUCCESS_S = 10          # how long a finished operation's result stays on its button
FAILURE_S = 3600        # a failure older than this no longer colours the button (the Operations page keeps it)
TICK_S = 1              # redraw interval while something runs
FLASH_KEY = "_proxwatch_ops_flash"

LABELS = {"ssh_test": "Test SSH", "service_restart": "Restart Service", "certificate_renewal": "Renew Certificate",
          "start": "Start", "stop": "Stop", "shutdown": "Shutdown", "reset": "Reset"}
ACTIVE = {"ssh_test": "Testing…", "service_restart": "Restarting…", "certificate_renewal": "Processing Renewal",
          "start": "Starting…", "stop": "Stopping…", "shutdown": "Shutting down…", "reset": "Resetting…"}
POWER = ("start", "shutdown", "stop", "reset")
RUNNING = ("pending", "in_progress")


# ------------------------------------------------------------------------------- pure helpers
def active_label(op_type: str, progress: int, remaining: float | None) -> str:
    """The label of a running operation's (disabled) button, worded as the operation type's own verb."""
    if op_type == "certificate_renewal":
        return f"Processing Renewal ({int(progress)}%)"
    if op_type == "service_restart":
        if remaining is None:
            return "Restarting…"
        return f"Restarting… ({timefmt.clock(remaining)} remaining)" if remaining >= 1 else "Restarting… (finishing)"
    return ACTIVE.get(op_type, "Working…")


def running_label(state: dict, now: datetime | None = None, op_type: str | None = None) -> str:
    """active_label() of a running operation (an operation_states or operations_list row), the time
    left counted from its start against its estimate."""
    left = timefmt.remaining_s(state.get("started_at"), state.get("estimated_duration_ms"), now or state.get("now"))
    return active_label(state.get("operation_type") or op_type, int(state.get("progress") or 0), left)


@dataclass
class ButtonState:
    kind: str                 # idle | active | success | failed
    label: str
    disabled: bool
    progress: int | None = None
    caption: str | None = None
    error: str | None = None


def button_state(op_type: str, state: dict | None, now: datetime | None = None, can_operate: bool = True,
                 base_label: str | None = None) -> ButtonState:
    """What one operation button shows, from its target's latest operation (operation_states row)."""
    label = base_label or LABELS.get(op_type, op_type)
    now = now or (timefmt.parse_time(state.get("now")) if state else None) or datetime.now(timezone.utc)
    if state and state.get("status") in RUNNING:
        return ButtonState("active", running_label(state, now, op_type), True, int(state.get("progress") or 0),
                           state.get("message") or "Waiting for a worker")
    ended = timefmt.parse_time(state.get("completed_at")) if state else None
    age = (now - ended).total_seconds() if ended else None
    if state and state.get("status") == "completed" and age is not None and age < SUCCESS_S:
        return ButtonState("success", label, not can_operate, 100, state.get("message"))
    if state and state.get("status") == "failed" and age is not None and age < FAILURE_S:
        return ButtonState("failed", f"Retry {label}" if not label.startswith("Retry") else label, not can_operate,
                           None, state.get("message"), state.get("error"))
    return ButtonState("idle", label, not can_operate)


def needs_ticking(states: list[dict], now: datetime | None = None) -> bool:
    """True while something runs or a result is still on show (the countdown and the brief success)."""
    for s in states:
        if s.get("status") in RUNNING:
            return True
        ended = timefmt.parse_time(s.get("completed_at"))
        ref = now or timefmt.parse_time(s.get("now")) or datetime.now(timezone.utc)
        if s.get("status") == "completed" and ended and (ref - ended).total_seconds() < SUCCESS_S:
            return True
    return False


def pick_state(states: list[dict], op_type: str | tuple, node: str | None, service: str | None = None,
               target: str | None = None) -> dict | None:
    """The latest operation of a button's target among operation_states rows. A node-level
    operation requested before the node's name was known (node null) counts for any node."""
    types = (op_type,) if isinstance(op_type, str) else op_type
    found = []
    for s in states:
        if s.get("operation_type") not in types:
            continue
        if target is not None:
            if s.get("target") == target:
                found.append(s)
            continue
        if service is not None and (s.get("params") or {}).get("service") != service:
            continue
        if s.get("node") in (node, None) or not node:
            found.append(s)
    if not found:
        return None
    return max(found, key=lambda s: (s.get("status") in RUNNING, str(s.get("started_at") or "")))


# ------------------------------------------------------------------- the Operations page's table
OPERATION_STATUS = {"pending": "○ waiting", "in_progress": "◐ running", "completed": "● completed",
                    "failed": "✕ failed"}
OPERATION_STATUS_COLOR = {"○ waiting": "#b45309", "◐ running": "#1d4ed8", "● completed": "#15803d",
                          "✕ failed": "#b91c1c"}
REQUESTED_BY = {"user": "person", "cron": "daily job", "auto": "proxwatch"}


def operation_target(row: dict) -> str:
    """What an operation acts on: 'VM 100 (web)', 'pveproxy on pve1', 'pve1'."""
    params = row.get("params") or {}
    if row["operation_type"] in POWER:
        kind = "CT" if params.get("guest_type") == "lxc" else "VM"
        return f"{kind} {params.get('vmid')}" + (f" ({params['guest_name']})" if params.get("guest_name") else "")
    if row["operation_type"] == "service_restart":
        return f"{params.get('service')} on {row.get('node') or 'default node'}"
    return row.get("node") or "default node"


def operation_rows(rows: list[dict]) -> list[dict]:
    """operations_list() rows → the history table's cells."""
    return [{
        "Started": timefmt.local_datetime(r.get("started_at")),
        "Server": r.get("server_name"),
        "Operation": LABELS.get(r["operation_type"], r["operation_type"]),
        "Target": operation_target(r),
        "Status": OPERATION_STATUS.get(r["status"], r["status"]),
        "Progress": f"{r['progress']} %",
        "Requested by": r.get("requested_by_email") or REQUESTED_BY.get(r.get("created_by"), r.get("created_by")),
        "Took": timefmt.took(r.get("started_at"), r.get("completed_at")),
        "Result": (r.get("error") if r["status"] == "failed" else r.get("message")) or "",
    } for r in rows]


# --------------------------------------------------------------------------------- the widgets
def _flash(key: str, message: str, kind: str) -> None:
    st.session_state.setdefault(FLASH_KEY, {})[key] = (kind, message)


def _show_flash(key: str) -> None:
    kind, message = st.session_state.get(FLASH_KEY, {}).pop(key, (None, None))
    if message:
        {"info": st.info, "error": st.error, "success": st.success}[kind](plain(message))


def _press(client, server_id: str, op_type: str, params: dict, flash_key: str) -> None:
    try:
        result = data.request_operation(client, server_id, op_type, params)
    except data.DataError as exc:
        _flash(flash_key, str(exc), "error")
        return
    if result.get("status") == "already_running":
        existing = result.get("existingOperation") or {}
        who = "the daily job" if existing.get("createdBy") == "cron" else "someone"
        _flash(flash_key, f"Already running ({existing.get('progress', 0)}%), started by {who}: "
                          f"{existing.get('message') or 'waiting for a worker'}", "info")
    else:
        st.toast(f"{LABELS.get(op_type, op_type)}: started", icon=":material/play_arrow:")


def operation_button(client, server_id: str, op_type: str, params: dict, state: dict | None, can_operate: bool,
                     key: str, label: str | None = None, help_text: str | None = None,
                     enabled: bool = True, slot=None) -> None:
    """One button with its state, progress bar and result (the button in `slot` when given, the
    rest below it in the current container)."""
    shown = button_state(op_type, state, can_operate=can_operate, base_label=label)
    disabled = shown.disabled or not enabled
    pressed = (slot or st).button(shown.label, key=key, disabled=disabled, width="stretch",
                                  type="primary" if shown.kind == "failed" else "secondary",
                                  help=help_text if help_text and (disabled or not can_operate) else None)
    if shown.kind == "active":
        st.progress((shown.progress or 0) / 100, text=plain(shown.caption))
    elif shown.kind == "success":
        st.success(plain(shown.caption or "Done"), icon=":material/check_circle:")
    elif shown.kind == "failed":
        st.error(plain(f"{shown.caption}: {shown.error}"), icon=":material/error:")
    _show_flash(key)
    if pressed and not disabled:
        _press(client, server_id, op_type, params, key)
        st.rerun()


def _node_choice(server_id: str, opts: dict) -> str | None:
    nodes = opts.get("nodes") or []
    names = [n["node"] for n in nodes]
    if len(names) <= 1:
        return names[0] if names else None
    local = next((n["node"] for n in nodes if n.get("local")), names[0])
    return st.selectbox("Node", names, index=names.index(local), key=f"ops-node-{server_id}")


def _server_panel(client, server: dict, opts: dict, rows: list[dict]) -> None:
    sid = str(server["id"])
    can = bool(opts.get("canOperate"))
    viewer_help = "Viewers cannot start operations: an admin can make you an operator."
    node = _node_choice(sid, opts)
    base = {"node": node} if node else {}
    ssh_col, restart_col, cert_col = st.columns(3)
    with ssh_col:
        ssh_ok = bool(opts.get("sshConfigured"))
        command = f"proxwatch ops ssh-set {server.get('name', 'SERVER')} --host …"
        no_ssh = f"No SSH access set yet: {plain(command)}"
        operation_button(client, sid, "ssh_test", dict(base), pick_state(rows, "ssh_test", node), can,
                         key=f"ops-{sid}-ssh_test-{node or ''}", enabled=ssh_ok,
                         help_text=viewer_help if not can else no_ssh)
        last = pick_state(rows, "ssh_test", node)
        if not ssh_ok:
            st.caption(no_ssh)
        elif last and last.get("status") == "completed" and (last.get("metadata") or {}).get("latency_ms") is not None:
            meta = last["metadata"]
            st.caption(plain(f"Last test: pve-manager {meta.get('version')}, {meta['latency_ms']} ms"))
    with restart_col:
        services = opts.get("services") or ["pveproxy"]
        pick, press = st.columns([1, 1.4])
        service = pick.selectbox("Service", services, index=services.index("pveproxy") if "pveproxy" in services else 0,
                                 key=f"ops-service-{sid}", label_visibility="collapsed")
        operation_button(client, sid, "service_restart", {**base, "service": service},
                         pick_state(rows, "service_restart", node, service=service), can,
                         key=f"ops-{sid}-service_restart-{node or ''}-{service}", help_text=viewer_help, slot=press)
        others = [r for r in rows if r.get("operation_type") == "service_restart" and r.get("status") in RUNNING
                  and (r.get("params") or {}).get("service") != service]
        for r in others:
            st.caption(plain(f"Also running: {r.get('message') or r.get('target') or ''} ({r.get('progress')}%)"))
    with cert_col:
        operation_button(client, sid, "certificate_renewal", dict(base), pick_state(rows, "certificate_renewal", node),
                         can, key=f"ops-{sid}-certificate_renewal-{node or ''}", help_text=viewer_help)


def _panel(client, server: dict, rows: list[dict] | None = None) -> bool:
    """Draw the server's panel; True while it needs redrawing every second."""
    sid = str(server["id"])
    try:
        opts = data.operation_options(client, sid)
        rows = data.operation_states(client, sid) if rows is None else rows
    except data.DataError as exc:
        st.error(plain(exc))
        return False
    _server_panel(client, server, opts, rows)
    return needs_ticking(rows)


@st.fragment(run_every=TICK_S)
def _ticking_panel(client, server: dict) -> None:
    if not _panel(client, server):
        st.rerun()  # nothing runs any more: redraw the page, which draws the still panel


def server_operations(client, server: dict) -> None:
    """The operations of one server: Test SSH, Restart Service (choose the service), Renew Certificate."""
    sid = str(server["id"])
    feed = live.try_watch(st.session_state, [("active_operations", f"server_id=eq.{sid}")])
    st.markdown("##### Operations")
    try:
        rows = data.operation_states(client, sid)
    except data.DataError as exc:
        st.error(plain(exc))
        return
    if needs_ticking(rows):
        _ticking_panel(client, server)
    else:
        _panel(client, server, rows)
    if feed is not None:
        live.rerun_on_change(feed, show_status=False)


def guest_operations(client, server: dict, guest: dict, can_operate: bool | None = None,
                     rows: list[dict] | None = None) -> None:
    """Power buttons of one guest (a guests_overview row): Start when stopped; Shutdown, Stop and
    Reset (VMs only) when running. Power actions on one guest never overlap: while one runs, its
    button shows the state and the others wait."""
    sid = str(server.get("id") or guest.get("server_id"))
    if rows is None:
        rows = data.operation_states(client, sid)
    if can_operate is None:
        can_operate = bool(data.operation_options(client, sid).get("canOperate"))
    target = f"{guest['guest_type']}/{guest['vmid']}"
    current = pick_state(rows, POWER, None, target=target)
    running = current if current and current.get("status") in RUNNING else None
    status = guest.get("status")
    actions = ["start"] if status != "running" else ["shutdown", "stop"] + (["reset"] if guest["guest_type"] == "qemu"
                                                                           else [])
    if running and running["operation_type"] not in actions:
        actions = [running["operation_type"]] + actions
    for column, action in zip(st.columns(max(4, len(actions))), actions):
        with column:
            mine = current if current and current.get("operation_type") == action else None
            operation_button(client, sid, action, {"vmid": guest["vmid"]}, mine, can_operate,
                             key=f"ops-{sid}-{target}-{action}",
                             enabled=running is None or running is mine,
                             help_text="Viewers cannot start operations." if not can_operate else
                             "Another power action of this guest is running.")
