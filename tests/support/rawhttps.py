"""A PVE API peer that answers byte by byte what a test scripts, over real TLS on 127.0.0.1: for the
answers fakepve and the fleet simulator always send well-formed (they are real HTTP servers) —
keep-alive connections closed by the server, `Connection: close`, chunked bodies, HTTP/1.0, answers
cut short, headers that never end.

    server = RawPve(certfile, keyfile, TOKEN)          # GET /api2/json/version and /cluster/status
    server.reply = lambda path: (answer(b'{"data":…}', chunked=True), KEEP)
    server.requests                                   # [(connection number, path), …] as they came
    server.close_idle()                               # end every connection waiting for a request
    server.stop()
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from typing import Callable

# After the answer: wait for the next request; close; hang (never send again); end the sending side only
# (FIN, as a server that dies mid-answer). After the last two the server still takes requests on that
# connection, to see whether the client sends any.
KEEP, CLOSE, STALL, HALF = "keep", "close", "stall", "half-close"

VERSION = b'{"data":{"version":"9.1.4","release":"9.1","repoid":"5f6e7d8c"}}'
STATUS = (b'{"data":[{"type":"cluster","name":"lab","nodes":2,"quorate":1,"version":4},'
          b'{"type":"node","name":"pve1","nodeid":1,"local":1,"online":1,"ip":"127.0.0.1","level":""},'
          b'{"type":"node","name":"pve2","nodeid":2,"local":0,"online":0,"ip":"127.0.0.2","level":""}]}')
BODIES = {"/api2/json/version": VERSION, "/api2/json/cluster/status": STATUS}
DENIED = b'{"data":null}'


def answer(body: bytes, status: int = 200, reason: str = "OK", version: str = "HTTP/1.1",
           headers: tuple[str, ...] = (), length: bool = True, chunked: bool = False) -> bytes:
    """The bytes of one answer: status line, headers (Content-Length unless `length` is False or the
    body is chunked, in chunks of 7 bytes then), a blank line, the body."""
    lines = [f"{version} {status} {reason}", "Server: pve-api-daemon/3.0", "Content-Type: application/json;charset=UTF-8",
             *headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        body += b"0\r\nX-Trailer: yes\r\n\r\n"
    elif length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body


class RawPve:
    """The two calls of a poll, answered by `reply(path) → (bytes, KEEP | CLOSE | STALL | HALF)`; the default
    reply is the PVE answer with Content-Length, kept alive. A request without the API token gets
    401 (so the token the client sends is checked)."""

    def __init__(self, certfile: str, keyfile: str, token: str):
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certfile, keyfile)
        self._authorization = f"PVEAPIToken={token}".encode()
        self.reply: Callable[[str], tuple[bytes, str]] = lambda path: (answer(BODIES[path]), KEEP)
        self.requests: list[tuple[int, str]] = []
        self.headers: list[bytes] = []       # the head of every request, as sent
        self._numbers = itertools.count(1)
        self._open: set[ssl.SSLSocket] = set()
        self._idle: set[ssl.SSLSocket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def connections(self) -> int:
        """How many connections carried at least one request."""
        return len({number for number, _ in self.requests})

    def close_idle(self) -> None:
        """End every connection that waits for its next request, as a server does with idle
        keep-alive connections (TCP FIN, no TLS close_notify, as when the process goes away)."""
        with self._lock:
            idle = list(self._idle)
        for sock in idle:
            _shutdown(sock)

    def stop(self) -> None:
        self._stopped.set()
        _shutdown(self._listener)
        self._listener.close()
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            _shutdown(sock)
        for thread in list(self._threads):
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            sock = self._context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        number = next(self._numbers)
        with self._lock:
            self._open.add(sock)
        try:
            self._requests(sock, number)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(sock)
                self._idle.discard(sock)
            sock.close()

    def _requests(self, sock: ssl.SSLSocket, number: int) -> None:
        buf, mute = b"", False
        while True:
            with self._lock:
                self._idle.add(sock)
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            with self._lock:
                self._idle.discard(sock)
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests.append((number, path))
            self.headers.append(head)
            fields = [line.partition(b":") for line in head.split(b"\r\n")[1:]]
            if (b"authorization", self._authorization) not in {(n.strip().lower(), v.strip()) for n, _, v in fields}:
                data, then = answer(DENIED, 401, "No ticket"), KEEP
            else:
                data, then = self.reply(path)
            if not mute:
                sock.sendall(data)
            if then == HALF:
                socket.socket.shutdown(sock, socket.SHUT_WR)
            mute = mute or then in (HALF, STALL)
            if then == CLOSE:
                _shutdown(sock)
                return


def _shutdown(sock: socket.socket) -> None:
    """shutdown(2) of the TCP socket itself (not a TLS close_notify): wakes a thread blocked on it."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
