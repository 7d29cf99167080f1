"""Console tickets from PVE, console links, the terminal framing, and the ticket audit.

A console is one of:
- vnc:  a qemu guest's display — `POST /nodes/{node}/qemu/{vmid}/vncproxy` with websocket=1;
- term: a text console — `POST …/qemu|lxc/{vmid}/termproxy` (guests) or `/nodes/{node}/termproxy`
        (the node's shell);
then `GET …/vncwebsocket?port=…&vncticket=…` as a WebSocket upgrade with the same credentials
(the console gateway does that part). PVE's ticket lives ~40 s and opens one connection.
(ssh, the third protocol, goes to the node directly: worker/ssh.py.)

Every ticket issued is an audit entry `console.ticket.issue`: who, which guest or node, when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode

from psycopg.types.json import Jsonb

from worker import audit, db
from worker.pve import BAD_RESPONSE, PveError

PROTOCOLS = ("vnc", "term", "ssh")
TICKET_TIMEOUT_MS = 10000


@dataclass(frozen=True)
class ConsoleTarget:
    """What a console link opens (from public.console_token())."""
    server_id: str
    tenant_id: str
    server_name: str
    protocol: str
    node: str
    guest_type: str | None = None      # qemu | lxc; None: the node's shell
    vmid: int | None = None
    guest_name: str | None = None
    target: str = ""
    user_id: str | None = None
    user_email: str | None = None

    @classmethod
    def from_info(cls, info: dict) -> "ConsoleTarget":
        return cls(server_id=str(info["server_id"]), tenant_id=str(info["tenant_id"]),
                   server_name=info.get("server_name") or "", protocol=info["protocol"], node=info["node"],
                   guest_type=info.get("guest_type"), vmid=info.get("vmid"), guest_name=info.get("guest_name"),
                   target=info.get("target") or "", user_id=str(info["user_id"]) if info.get("user_id") else None,
                   user_email=info.get("user_email"))

    @property
    def title(self) -> str:
        return f"{self.target} on {self.server_name}" if self.server_name else self.target


@dataclass(frozen=True)
class Ticket:
    user: str
    ticket: str
    port: str
    upid: str | None = None
    password: str | None = None         # the VNC password (PVE: the ticket itself unless generated)


def _base(t: ConsoleTarget) -> str:
    if t.vmid is None:
        return f"nodes/{t.node}"
    return f"nodes/{t.node}/{t.guest_type}/{int(t.vmid)}"


def ticket_call(t: ConsoleTarget) -> tuple[str, dict]:
    """(path, parameters) of the ticket request for this console."""
    if t.protocol == "vnc":
        if t.guest_type != "qemu" or t.vmid is None:
            raise ValueError("a VNC console needs a qemu guest")
        return f"{_base(t)}/vncproxy", {"websocket": 1}
    if t.protocol == "term":
        return f"{_base(t)}/termproxy", {}
    raise ValueError(f"{t.protocol} consoles do not use a PVE ticket")


def websocket_path(t: ConsoleTarget, ticket: Ticket) -> str:
    """The vncwebsocket path and query under /api2/json/ for this console and ticket."""
    return f"{_base(t)}/vncwebsocket?" + urlencode({"port": ticket.port, "vncticket": ticket.ticket})


def request_ticket(client, t: ConsoleTarget) -> Ticket:
    """Ask PVE for a console ticket with the server's stored credentials (client: worker.pve.PveClient).

    For manual test: pvesh create /nodes/<node>/qemu/<vmid>/vncproxy --websocket 1
                     pvesh create /nodes/<node>/lxc/<vmid>/termproxy
    """
    path, params = ticket_call(t)
    data = client.request("POST", path, timeout_ms=TICKET_TIMEOUT_MS, **params)
    if not isinstance(data, dict) or not data.get("ticket") or data.get("port") in (None, ""):
        raise PveError(BAD_RESPONSE, f"POST /{path} answered without a ticket and port")
    return Ticket(user=str(data.get("user") or ""), ticket=str(data["ticket"]), port=str(data["port"]),
                  upid=data.get("upid"), password=data.get("password") or None)


def audit_params(t: ConsoleTarget, ticket: Ticket | None, user_id: str | None) -> dict:
    """The named query insert_audit's parameters for console.ticket.issue (never the ticket itself)."""
    return {"tenant_id": t.tenant_id, "user_id": user_id, "actor": "user", "action": "console.ticket.issue",
            "server_id": t.server_id, "target_type": "guest" if t.vmid is not None else "node",
            "target_id": f"{t.guest_type}/{t.vmid}" if t.vmid is not None else t.node,
            "details": Jsonb({"protocol": t.protocol, "node": t.node, "target": t.target,
                              "upid": ticket.upid if ticket else None, "pve_user": ticket.user if ticket else None})}


def issue_ticket(conn, client, t: ConsoleTarget, user_id: str | None) -> Ticket:
    """Request the ticket and write its audit entry (committed): the synchronous path, for workers."""
    ticket = request_ticket(client, t)
    p = audit_params(t, ticket, user_id)
    audit.record(conn, "console.ticket.issue", tenant_id=p["tenant_id"], user_id=user_id, actor="user",
                 server_id=t.server_id, target_type=p["target_type"], target_id=p["target_id"],
                 details=p["details"].obj)
    conn.commit()
    return ticket


def pve_console_url(base_url: str, node: str, vmid: int | None = None, guest_type: str | None = None,
                    name: str | None = None, xterm: bool = False) -> str:
    """The PVE web UI's own console link (the fallback: it needs the browser logged in to PVE)."""
    if vmid is None:
        query = {"console": "shell", "xtermjs" if xterm else "novnc": 1, "node": node, "resize": "off", "cmd": ""}
    else:
        query = {"console": "kvm" if guest_type == "qemu" else "lxc", "xtermjs" if xterm else "novnc": 1,
                 "vmid": vmid, "vmname": name or "", "node": node, "resize": "off", "cmd": ""}
    return base_url.rstrip("/") + "/?" + urlencode(query)


# -- the terminal framing (PVE's termproxy protocol, also spoken by the gateway's SSH terminals) --
# Client → server: "0:<bytelen>:<data>" input, "1:<cols>:<rows>:" resize, "2" keepalive.
_RESIZE = re.compile(r"^1:(\d{1,4}):(\d{1,4}):$")


def term_input(data: str) -> str:
    return f"0:{len(data.encode())}:{data}"


def term_resize(cols: int, rows: int) -> str:
    return f"1:{int(cols)}:{int(rows)}:"


def parse_term_frame(frame: str) -> tuple:
    """("input", text) | ("resize", cols, rows) | ("ping",); ValueError for anything else."""
    if frame == "2":
        return ("ping",)
    if frame.startswith("0:"):
        length, sep, data = frame[2:].partition(":")
        if not sep or not length.isdigit() or int(length) != len(data.encode()):
            raise ValueError("an input frame must be 0:<bytelen>:<data>")
        return ("input", data)
    match = _RESIZE.match(frame)
    if match:
        cols, rows = int(match[1]), int(match[2])
        if not (1 <= cols <= 1000 and 1 <= rows <= 1000):
            raise ValueError("a terminal size must be between 1 and 1000")
        return ("resize", cols, rows)
    raise ValueError("unknown terminal frame")


async def record_ticket_async(aconn, t: ConsoleTarget, ticket: Ticket | None, user_id: str | None) -> None:
    """The audit entry from the gateway's async connection (autocommit)."""
    await aconn.execute(db.q("insert_audit"), audit_params(t, ticket, user_id))
