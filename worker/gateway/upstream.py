"""The server side of a console: PVE's vncwebsocket (VNC or terminal) or an SSH shell.

Steps of opening a PVE console (Opener.open_pve):
1. the server's PveClient (worker.pve: its TLS settings and stored credentials) requests the
   ticket — vncproxy / termproxy — in a worker thread; the caller audits it;
2. the WebSocket `GET …/vncwebsocket?port=…&vncticket=…` is opened with the same credentials
   (PVEAPIToken header, or the PVEAuthCookie of a password login), verifying TLS exactly as
   worker.pve does: system CAs, the pinned SHA-256 fingerprint, or explicitly insecure; the
   fallback address is tried when the primary one does not connect;
3. a terminal logs in with `<user>:<ticket>\\n` and waits for `OK`.

Failures are worker.pve.PveError (PVE) or worker.ssh.SshError (SSH), each with a sentence.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from worker import consoles, ssh
from worker.crypto import Box
from worker.pve import AUTH, DNS, HTTP, NETWORK, REFUSED, TIMEOUT, TLS, CONNECTION_LEVEL, PveClient, PveError, Target
from worker.pve_clients import PveClients

LOGIN_TTL_S = 3600          # a PVE login ticket lives 2 h; renew after one
TERMINAL_LOGIN_TIMEOUT_S = 10
WS_MAX_MSG = 16 * 1024 * 1024


def ssl_param(target: Target):
    """aiohttp's ssl= for this server, as worker.pve verifies it."""
    if target.tls_mode == "pinned":
        return aiohttp.Fingerprint(bytes.fromhex((target.fingerprint or "").replace(":", "")))
    if target.tls_mode == "insecure":
        return False
    return ssl.create_default_context(cafile=target.ca_file) if target.ca_file else True


def classify_ws(exc: BaseException, url: str, timeout: float) -> PveError:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    if isinstance(exc, PveError):
        return exc
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return PveError(TLS, f"{host} presented a certificate whose SHA-256 fingerprint does not match the pinned one")
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return PveError(TLS, f"{host} presented a certificate that is not trusted (pin its fingerprint, or install its CA)")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        if exc.status == 401:
            return PveError(AUTH, f"{host} refused the console ticket or the credentials (401 {exc.message})")
        if exc.status == 403:
            return PveError(AUTH, f"{host} denied the console (403 {exc.message})")
        return PveError(HTTP, f"{host} did not open the console WebSocket ({exc.status} {exc.message})")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return PveError(TIMEOUT, f"{host} did not answer within {timeout * 1000:.0f} ms")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return PveError(DNS, f"the name of {host} could not be resolved")
        if isinstance(os_error, ConnectionRefusedError):
            return PveError(REFUSED, f"{host} refused the connection (nothing listens on that port)")
        return PveError(NETWORK, f"{host} could not be reached: {os_error}")
    return PveError(NETWORK, f"{host} could not be used: {exc}")


class PveUpstream:
    """PVE's vncwebsocket: bytes both ways (a terminal's input frames stay text, as PVE expects).
    aiohttp's send awaits the transport's drain past its high-water mark: backpressure as SSH's."""

    kind = "PVE"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws

    async def login(self, ticket: consoles.Ticket) -> None:
        """The termproxy handshake: `<user>:<ticket>\\n`, answered by `OK`."""
        await self.ws.send_str(f"{ticket.user}:{ticket.ticket}\n")
        try:
            first = await asyncio.wait_for(self.ws.receive(), TERMINAL_LOGIN_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise PveError(TIMEOUT, "PVE did not answer the terminal login") from None
        data = first.data if first.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT) else None
        if isinstance(data, str):
            data = data.encode()
        if not data or not data.startswith(b"OK"):
            raise PveError(AUTH, "PVE refused the terminal login")
        self.pending = data[2:] or None

    pending: bytes | None = None

    async def send(self, msg: aiohttp.WSMessage) -> None:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await self.ws.send_str(msg.data)
        else:
            await self.ws.send_bytes(msg.data)

    async def receive(self) -> bytes | None:
        if self.pending is not None:
            data, self.pending = self.pending, None
            return data
        msg = await self.ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.data.encode()
        return None

    async def close(self) -> None:
        await self.ws.close()


class SshUpstream:
    """An SSH shell with a pty, fed with the terminal framing (input, resize, keepalive)."""

    kind = "SSH"

    def __init__(self, conn: ssh.SshConnection, process):
        self.conn = conn
        self.process = process

    async def send(self, msg: aiohttp.WSMessage) -> None:
        text = msg.data if isinstance(msg.data, str) else msg.data.decode(errors="replace")
        try:
            frame = consoles.parse_term_frame(text)
        except ValueError:
            return  # not a terminal frame: ignored, as PVE's termproxy does
        if frame[0] == "input":
            # Wait while the channel's buffer is over its high-water mark (the shell is not reading):
            # the gateway then stops reading the browser, instead of buffering what it sends.
            self.process.stdin.write(frame[1].encode())
            await self.process.stdin.drain()
        elif frame[0] == "resize":
            self.process.change_terminal_size(frame[1], frame[2])

    async def receive(self) -> bytes | None:
        data = await self.process.stdout.read(65536)
        return data or None

    async def close(self) -> None:
        try:
            self.process.close()
        except Exception:  # noqa: BLE001 - closing what may be closed already
            pass
        await self.conn.close()


class Opener:
    """Opens upstreams; keeps one PveClient per server (keep-alive) and one HTTP session."""

    def __init__(self, box: Box, ca_file: str | None = None, timeout_s: float = 10.0, threads: int = 16):
        self.box = box
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pve-ticket")
        self.http: aiohttp.ClientSession | None = None
        self.clients = PveClients(box, ca_file)
        self._logins: dict[str, tuple[Target, float, str]] = {}

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                          timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout_s))

    async def close(self) -> None:
        if self.http:
            await self.http.close()
        self.clients.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def client(self, row: dict) -> tuple[PveClient, Target]:
        """The server's client from its poll_target row (shared cache: worker/pve_clients.py)."""
        return self.clients.get(row)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def request_ticket(self, row: dict, t: consoles.ConsoleTarget) -> consoles.Ticket:
        client, _ = self.client(row)
        return await self._call(consoles.request_ticket, client, t)

    async def _auth(self, row: dict) -> dict:
        """The header that authenticates the WebSocket as the ticket's user."""
        client, target = self.client(row)
        if target.token_id:
            return {"Authorization": f"PVEAPIToken={target.username}!{target.token_id}={target.secret}"}
        sid = str(row["id"])
        cached = self._logins.get(sid)
        # A login is for the target it was made with: changed credentials log in again.
        if cached is None or cached[0] is not target or time.monotonic() - cached[1] > LOGIN_TTL_S:
            # For manual test: curl -k -d username=root@pam -d password=… https://HOST:8006/api2/json/access/ticket
            data = await self._call(lambda: client.request("POST", "access/ticket", timeout_ms=int(self.timeout_s * 1000),
                                                           username=target.username, password=target.secret))
            cached = self._logins[sid] = (target, time.monotonic(), str(data["ticket"]))
        return {"Cookie": f"PVEAuthCookie={cached[2]}"}

    async def open_pve(self, row: dict, t: consoles.ConsoleTarget, ticket: consoles.Ticket) -> PveUpstream:
        """The vncwebsocket for this ticket (primary address, else the fallback when it does not connect)."""
        _, target = self.client(row)
        headers = await self._auth(row)
        path = "/api2/json/" + consoles.websocket_path(t, ticket)
        urls = [target.base_url] + ([target.fallback_url] if target.fallback_url else [])
        for i, base in enumerate(urls):
            url = base.rstrip("/") + path
            try:
                ws = await asyncio.wait_for(self.http.ws_connect(
                    url, protocols=("binary",), headers=headers, ssl=ssl_param(target),
                    max_msg_size=WS_MAX_MSG, autoping=True, compress=0), self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - every failure becomes one PveError
                error = classify_ws(exc, url, self.timeout_s)
                if i + 1 < len(urls) and error.kind in CONNECTION_LEVEL:
                    continue
                raise error from exc
            up = PveUpstream(ws)
            if t.protocol == "term":
                try:
                    await up.login(ticket)
                except BaseException:
                    await up.close()
                    raise
            return up
        raise PveError(NETWORK, "no address of the server could be tried")

    async def open_ssh(self, creds: dict, cols: int = 80, rows: int = 24) -> SshUpstream:
        """An SSH shell on the node (creds: the named query ssh_target's row)."""
        secret = self.box.open(creds["secret_ciphertext"])
        conn = await ssh.connect(creds["host"], int(creds["port"]), creds["username"], creds["host_key"],
                                 password=secret if creds["auth_kind"] == "password" else None,
                                 client_key=secret if creds["auth_kind"] == "key" else None,
                                 timeout=self.timeout_s)
        try:
            process = await conn.shell(cols=cols, rows=rows)
        except BaseException:
            await conn.close()
            raise
        return SshUpstream(conn, process)
