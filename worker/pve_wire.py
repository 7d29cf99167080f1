"""The worker's own HTTP/1.1 client for a poll's GETs (worker/pve.py puts it under proxmoxer): kept-alive
TLS sockets per origin, request bytes prepared by the caller, answers read straight from the socket
(Content-Length, chunked, Connection: close, HTTP/1.0), and the exceptions requests raises, so that
worker.pve.classify() says for its failures what it says for requests'."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import re
import socket
import ssl

import requests


class Answer:
    """What proxmoxer reads of an answer (status_code, reason, content, text)."""

    __slots__ = ("status_code", "reason", "content")

    def __init__(self, status_code: int, reason: str, content: bytes):
        self.status_code, self.reason, self.content = status_code, reason, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


_RECV = 32768             # bytes asked of the TLS socket at once (a TLS record holds at most 16 KiB)
_MAX_HEAD = 65536         # status line and headers, as http.client allows per line
_MAX_HEADERS = 100        # as http.client
_IDLE_PER_ORIGIN = 4      # idle connections a session keeps (requests' pool_maxsize here)
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class _Buffer:
    """The bytes of one answer as they arrive on a socket: `pos` is where reading continues."""

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock, first: bytes):
        self.sock, self.buf, self.pos = sock, first, 0

    def more(self) -> None:
        data = self.sock.recv(_RECV)
        if not data:
            raise http.client.IncompleteRead(self.buf[self.pos:])
        self.buf = self.buf[self.pos:] + data
        self.pos = 0

    def head(self) -> bytes:
        while (end := _HEAD_END.search(self.buf, self.pos)) is None:
            if len(self.buf) - self.pos > _MAX_HEAD:
                raise http.client.LineTooLong("header block")
            self.more()
        head = self.buf[self.pos:end.start()]
        self.pos = end.end()
        return head

    def line(self) -> bytes:
        while (end := self.buf.find(b"\n", self.pos)) < 0:
            if len(self.buf) - self.pos > _MAX_HEAD:
                raise http.client.LineTooLong("chunk size line")
            self.more()
        line = self.buf[self.pos:end]
        self.pos = end + 1
        return line

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if len(self.buf) >= end:
            data = self.buf[self.pos:end]
            self.pos = end
            return data
        parts = [self.buf[self.pos:]]
        got = len(parts[0])
        while got < n:
            data = self.sock.recv(min(n - got, _RECV))  # never past the answer's end
            if not data:
                raise http.client.IncompleteRead(b"".join(parts), n - got)
            parts.append(data)
            got += len(data)
        self.buf, self.pos = b"", 0
        return b"".join(parts)

    def to_eof(self) -> bytes:
        parts = [self.buf[self.pos:]]
        while data := self.sock.recv(_RECV):
            parts.append(data)
        self.buf, self.pos = b"", 0
        return b"".join(parts)

    def chunked(self) -> bytes:
        parts = []
        while True:
            size = self.line().split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise http.client.HTTPException(f"a chunk size that is not a number ({size[:20]!r})") from None
            if n == 0:
                break
            parts.append(self.take(n))
            if self.line().strip():
                raise http.client.HTTPException("a chunk longer than its size")
        while self.line().strip():  # trailer fields, up to the blank line
            pass
        return b"".join(parts)


def _read_answer(sock, first: bytes) -> tuple[int, str, bytes, bool]:
    """(status, reason, body, whether the connection can carry another request) of the answer that
    begins with `first`: status line, headers (Content-Length, chunked, Connection, HTTP/1.0), body."""
    data = _Buffer(sock, first)
    while True:
        lines = data.head().split(b"\n")
        version, _, rest = lines[0].rstrip(b"\r").partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(lines[0][:100].decode("iso-8859-1"))
        status = int(code)
        if not 100 <= status < 200 or status == 101:
            break  # else an interim answer (100 Continue): the real one follows
    if len(lines) > _MAX_HEADERS + 1:
        raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
    length, chunked, encoding = None, False, None
    keep = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue  # a folded or broken line: nothing we read
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise http.client.HTTPException(f"an invalid Content-Length ({value[:20]!r})")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif name == b"connection":
            value = value.lower()
            if b"close" in value:
                keep = False
            elif b"keep-alive" in value:
                keep = True
        elif name == b"content-encoding":
            encoding = value.strip().lower()
    if status in (101, 204, 304):
        body = b""
    elif chunked:
        body = data.chunked()
    elif length is not None:
        body = data.take(length)
    else:
        body, keep = data.to_eof(), False
    if data.pos < len(data.buf):
        keep = False  # bytes after the answer: nothing a GET asked for
    if encoding and encoding != b"identity":
        body = _decoded(body, encoding)
    return status, reason.rstrip(b"\r").decode("iso-8859-1"), body, keep


def _decoded(body: bytes, encoding: bytes) -> bytes:
    """A body compressed although the request said `Accept-Encoding: identity`."""
    import zlib

    try:
        if encoding in (b"gzip", b"x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == b"deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as err:
        raise http.client.HTTPException(f"a body that is not {encoding.decode('ascii', 'replace')} ({err})") from None
    raise http.client.HTTPException(f"a body in an unknown encoding ({encoding[:20]!r})")


def _closing(sock) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class Wire:
    """HTTP/1.1 GETs to one origin on kept-alive TLS sockets, with the same exceptions requests
    raises (so classify() says what it says for requests' failures).

    Steps of get(): take an idle socket of this origin (or connect: TCP, then TLS with the shared
    context — CAs and hostname in verify mode, the SHA-256 pin in pinned mode); send the request's
    bytes; read the answer; put the socket back only after a complete answer that allows another
    request. A reused socket that the server had closed (EOF or reset before any byte of the
    answer) is replaced by a new connection once: a GET is safe to repeat, and a server closes idle
    keep-alive connections whenever it likes (pveproxy after a restart, proxies on a timer). The
    timeout is for the connection and for each read, as in urllib3."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, pin: str | None):
        self.host, self.port, self.context = host, port, context
        self.pin = bytes.fromhex(pin.replace(":", "")) if pin else None
        self.idle: list = []  # list.pop/append are atomic: the poll threads share it without a lock

    def get(self, request: bytes, timeout: float) -> Answer:
        try:
            sock = self.idle.pop()
        except IndexError:
            sock = None
        if sock is not None:
            if sock.gettimeout() != timeout:
                sock.settimeout(timeout)
            answer = self._exchange(sock, request, reused=True)
            if answer is not None:
                return answer
        return self._exchange(self._connect(timeout), request, reused=False)

    def close(self) -> None:
        while self.idle:
            with contextlib.suppress(IndexError):
                _closing(self.idle.pop())

    def _connect(self, timeout: float):
        try:
            raw = socket.create_connection((self.host, self.port), timeout)
        except TimeoutError as err:
            raise requests.exceptions.ConnectTimeout(err) from err
        except OSError as err:
            raise requests.exceptions.ConnectionError(err) from err
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except TimeoutError as err:
            _closing(raw)
            raise requests.exceptions.ConnectTimeout(err) from err
        except ssl.SSLError as err:
            _closing(raw)
            raise requests.exceptions.SSLError(err) from err
        except OSError as err:
            _closing(raw)
            raise requests.exceptions.ConnectionError(err) from err
        if self.pin is not None:
            got = hashlib.sha256(sock.getpeercert(binary_form=True) or b"").digest()
            if not hmac.compare_digest(got, self.pin):
                _closing(sock)
                raise requests.exceptions.SSLError(
                    f'Fingerprints did not match. Expected "{self.pin.hex()}", got "{got.hex()}"')
        return sock

    def _exchange(self, sock, request: bytes, reused: bool) -> Answer | None:
        """The answer to `request` on `sock`; None when `sock` was reused and turned out closed."""
        try:
            sock.sendall(request)
            first = sock.recv(_RECV)
        except TimeoutError as err:
            _closing(sock)
            raise requests.exceptions.ReadTimeout(err) from err
        except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as err:
            _closing(sock)
            if reused:
                return None
            raise requests.exceptions.ConnectionError(err) from err
        except ssl.SSLError as err:
            _closing(sock)
            raise requests.exceptions.SSLError(err) from err
        except OSError as err:
            _closing(sock)
            raise requests.exceptions.ConnectionError(err) from err
        if not first:
            _closing(sock)
            if reused:
                return None
            err = http.client.RemoteDisconnected("Remote end closed connection without response")
            raise requests.exceptions.ConnectionError(err) from err
        try:
            status, reason, body, keep = _read_answer(sock, first)
        except TimeoutError as err:
            _closing(sock)
            raise requests.exceptions.ReadTimeout(err) from err
        except (http.client.HTTPException, OSError) as err:
            _closing(sock)
            raise requests.exceptions.ConnectionError(err) from err
        if keep and len(self.idle) < _IDLE_PER_ORIGIN:
            self.idle.append(sock)
        else:
            _closing(sock)
        return Answer(status, reason, body)
