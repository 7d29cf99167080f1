"""The one HTTP layer to the Proxmox VE API: proxmoxer over requests (and, for a poll's GETs, over
our own small HTTP/1.1 client on kept-alive TLS sockets), with

- API-token auth (preferred) or password/ticket auth,
- TLS verified by the system CAs, or pinned to the SHA-256 fingerprint of the server's
  certificate (how a PVE default self-signed certificate is trusted), or explicitly insecure,
- a fallback address tried when the primary one fails at the connection level,
- per-call timing, and
- one exception type, PveError, with a small fixed vocabulary of kinds and a plain sentence.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import http.client
import json
import re
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import urlsplit

import requests
import urllib3
from worker.errors import ProxwatchError
from proxmoxer.backends.https import JsonSerializer, ProxmoxHttpSession, ProxmoxHTTPApiTokenAuth, ProxmoxHTTPAuth
from proxmoxer.core import AuthenticationError, ProxmoxResource, ResourceException
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri
from urllib3.util.ssl_ import create_urllib3_context

# The vocabulary of connection_metrics.error_kind.
TIMEOUT, REFUSED, DNS, NETWORK, TLS, AUTH, HTTP, BAD_RESPONSE, CONFIG = (
    "timeout", "refused", "dns", "network", "tls", "auth", "http", "bad_response", "config")
# Failures at the connection level: the only ones for which the fallback address is tried.
CONNECTION_LEVEL = {TIMEOUT, REFUSED, DNS, NETWORK}

TOKEN_RE = re.compile(r"^(?P<user>[^@!\s=]+@[^@!\s=]+)!(?P<tokenid>[A-Za-z][A-Za-z0-9._-]*)=(?P<secret>\S+)$")
FINGERPRINT_RE = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


class PveError(ProxwatchError):
    """The Proxmox VE API could not be used."""

    def __init__(self, kind: str, message: str, permanent: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.permanent = permanent


def normalize_fingerprint(value: str) -> str:
    """'aa:bb…' or 'aabb…' (64 hex digits) → 'AA:BB:…', or ValueError with a sentence."""
    hexdigits = value.strip().replace(":", "").upper()
    if not re.fullmatch(r"[0-9A-F]{64}", hexdigits):
        raise ValueError(f"{value!r} is not a SHA-256 fingerprint (64 hex digits, optionally colon-separated)")
    return ":".join(hexdigits[i:i + 2] for i in range(0, 64, 2))


def parse_token(value: str) -> tuple[str, str, str]:
    """'USER@REALM!TOKENID=SECRET' → (user, tokenid, secret), or ValueError with a sentence."""
    match = TOKEN_RE.match(value.strip())
    if not match:
        raise ValueError("the API token must look like USER@REALM!TOKENID=SECRET (for example root@pam!monitor=…)")
    return match["user"], match["tokenid"], match["secret"]


@dataclass(frozen=True)
class Target:
    """How to reach and authenticate to one server."""
    base_url: str
    username: str
    secret: str
    token_id: str | None = None          # token auth when set, else password auth
    tls_mode: str = "verify"             # verify | pinned | insecure
    fingerprint: str | None = None
    fallback_url: str | None = None
    ca_file: str | None = None           # extra CA bundle (verify mode), e.g. in tests


@dataclass
class CallTiming:
    path: str
    ms: float


@dataclass
class Probe:
    """What one poll learned: version, cluster nodes, timings."""
    version: str
    nodes_online: int
    nodes_total: int
    quorate: bool | None
    response_time_ms: int
    used_fallback: bool
    timings: list[CallTiming] = field(default_factory=list)


@functools.lru_cache(maxsize=None)
def _tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One SSL context per TLS setting, shared by every connection: urllib3 would otherwise build a
    context and load the whole CA bundle for each new connection (~30 ms CPU, ~0.8 MB each)."""
    if not verify:
        return create_urllib3_context(cert_reqs=ssl.CERT_NONE)
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.check_hostname = True
    context.load_verify_locations(cafile=ca_file or requests.certs.where())
    return context


class _TlsAdapter(HTTPAdapter):
    """TLS with a shared context: verified by CAs (and hostname), pinned to exactly the certificate
    with this SHA-256 fingerprint (urllib3's assert_fingerprint), or unverified (insecure)."""

    def __init__(self, verify: bool, ca_file: str | None = None, fingerprint: str | None = None):
        self._verify = verify
        self._context = _tls_context(verify, ca_file)
        self._fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        super().__init__(pool_maxsize=4)

    def _tls_kwargs(self) -> dict:
        kw = {"ssl_context": self._context, "cert_reqs": "CERT_REQUIRED" if self._verify else "CERT_NONE"}
        if self._fingerprint:
            kw["assert_fingerprint"] = self._fingerprint
        return kw

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(self._tls_kwargs())
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn, url, verify, cert):
        # The shared context carries the CAs; a per-pool ca_certs would be loaded again per connection.
        super().cert_verify(conn, url, False, cert)
        for key, value in self._tls_kwargs().items():
            if key != "ssl_context":
                setattr(conn, key, value)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, False, cert)
        pool_kwargs.pop("ca_certs", None)
        pool_kwargs.pop("ca_cert_dir", None)
        pool_kwargs.update(self._tls_kwargs())
        return host_params, pool_kwargs


class _SessionTicketAuth(ProxmoxHTTPAuth):
    """proxmoxer's ticket auth, but logging in through our session (so pinning and timeouts apply)."""

    def __init__(self, session: requests.Session, username: str, password: str, base_url: str, **kwargs):
        self._login_session = session
        super().__init__(username, password, base_url=base_url, **kwargs)

    def _get_new_tokens(self, password=None, otp=None, otptype=None):
        if password is None:
            password = self.pve_auth_ticket  # a valid ticket renews itself
        # For manual test: curl -k -d username=root@pam -d password=… https://HOST:8006/api2/json/access/ticket
        response = self._login_session.post(self.base_url + "/access/ticket", timeout=self.timeout,
                                            verify=self.verify_ssl,
                                            data={"username": self.username, "password": password})
        if response.status_code != 200:
            raise AuthenticationError(f"{response.status_code} {response.reason}")
        data = response.json().get("data") or {}
        if data.get("NeedTFA"):
            raise AuthenticationError("the account needs a second factor (TFA); use an API token instead")
        self.birth_time = time.monotonic()
        self.pve_auth_ticket = data["ticket"]
        self.csrf_prevention_token = data["CSRFPreventionToken"]


class _Answer:
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


class _Wire:
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

    def get(self, request: bytes, timeout: float) -> _Answer:
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

    def _exchange(self, sock, request: bytes, reused: bool) -> _Answer | None:
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
        return _Answer(status, reason, body)


class _PollSession(ProxmoxHttpSession):
    """proxmoxer's session with a short path for what a poll sends: a GET without parameters under
    API-token auth goes to our own HTTP/1.1 client (_Wire) on kept-alive TLS sockets, with the
    request's bytes prepared once per path — the same headers requests sends, but
    `Accept-Encoding: identity` — and the exceptions requests raises. requests' per-call merging
    of session settings, environment, cookies and hooks, urllib3's pool and http.client's answer
    parsing were most of the worker's CPU per poll (tests/bench/bench_fleet_cycle.py). Any other
    request (login, a POST, parameters) takes proxmoxer's normal path through requests.

    The timeout is the calling thread's (`call.timeout`, set by PveClient for each call), not the
    session's: a server's learned timeout changes as its response times do, and a session made
    anew for each new timeout meant a new TLS handshake each time (all servers at once when their
    timeouts were first learned)."""

    wire: _Wire | None = None
    origin: str = ""

    def __init__(self):
        super().__init__()
        self.call = threading.local()
        self._requests: dict[str, bytes | None] = {}  # url -> the GET's bytes (None: not for the wire)

    def request(self, method, url, params=None, data=None, **kwargs):
        auth = self.auth
        timeout = kwargs.pop("timeout", None) or getattr(self.call, "timeout", None) or auth.timeout
        if method == "GET" and not params and not data and not kwargs and self.wire is not None:
            raw = self._requests.get(url, False)
            if raw is False:
                raw = self._requests[url] = self._prepare(url)
            if raw is not None:
                return self.wire.get(raw, timeout)
        return super().request(method, url, params=params, data=data, timeout=timeout, **kwargs)

    def _prepare(self, url: str) -> bytes | None:
        """The bytes of a GET of `url` as requests would send it, or None for requests' own path."""
        if not isinstance(self.auth, ProxmoxHTTPApiTokenAuth) or not url.startswith(self.origin + "/"):
            return None
        parts = urlsplit(url)
        target = requote_uri(parts.path) + (f"?{parts.query}" if parts.query else "")
        headers = CaseInsensitiveDict(self.headers)
        self.auth(SimpleNamespace(headers=headers, cert=None))  # sets Authorization: PVEAPIToken=…
        headers["Accept-Encoding"] = "identity"
        headers["Connection"] = "keep-alive"
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")

    def close(self):
        if self.wire is not None:
            self.wire.close()
        super().close()


@contextlib.contextmanager
def _quiet(target: Target):
    """Insecure mode is the server's explicit setting, not a warning on every call: only then are
    warnings caught (a catch_warnings() around every poll was ~2 % of the worker's CPU)."""
    if target.tls_mode != "insecure":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        yield


def _verify_setting(target: Target):
    if target.tls_mode == "verify":
        return target.ca_file or True
    return False


def _session(target: Target, base_url: str, timeout_s: float) -> ProxmoxResource:
    session = _PollSession()
    session.trust_env = False  # no proxy/netrc lookups in the environment on every call
    session.headers["accept"] = JsonSerializer().get_accept_types()
    verify = _verify_setting(target)
    session.mount("https://", _TlsAdapter(target.tls_mode == "verify", target.ca_file,
                                          target.fingerprint if target.tls_mode == "pinned" else None))
    api_url = base_url.rstrip("/") + "/api2/json"
    if target.token_id:
        session.auth = ProxmoxHTTPApiTokenAuth(target.username, target.token_id, target.secret,
                                               verify_ssl=verify, timeout=timeout_s)
        parts = urlsplit(api_url)
        if parts.scheme == "https" and parts.hostname:
            session.origin = f"https://{parts.netloc}"
            session.wire = _Wire(parts.hostname, parts.port or 443,
                                 _tls_context(target.tls_mode == "verify", target.ca_file),
                                 target.fingerprint if target.tls_mode == "pinned" else None)
    else:
        login = requests.Session()
        login.trust_env = False
        login.mount("https://", session.get_adapter("https://"))
        session.auth = _SessionTicketAuth(login, target.username, target.secret, api_url,
                                          verify_ssl=verify, timeout=timeout_s)
    return ProxmoxResource(base_url=api_url, session=session, serializer=JsonSerializer())


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)
        reason = getattr(exc, "reason", None)
        if isinstance(reason, BaseException) and id(reason) not in seen:
            nxt = reason
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(exc))
        exc = nxt


def classify(exc: BaseException, url: str, timeout_s: float) -> PveError:
    """Any failure of a call → PveError(kind, plain sentence)."""
    host = url.split("://", 1)[-1].rstrip("/")
    if isinstance(exc, PveError):
        return exc
    if isinstance(exc, AuthenticationError):
        return PveError(AUTH, f"{host} refused the login: {exc}", permanent=True)
    if isinstance(exc, ResourceException):
        code = exc.status_code
        # PVE's reason phrase is its message's first line; a blank or huge one is cut to what reads.
        text = str(exc.content or exc.status_message or "").strip()
        reason = text.splitlines()[0].strip()[:300] if text else ""
        if code == 401:
            return PveError(AUTH, f"{host} refused the credentials (401 {reason})", permanent=True)
        if code == 403:
            return PveError(AUTH, f"{host} denied permission (403 {reason})", permanent=True)
        return PveError(HTTP, f"{host} answered {code} {reason}")
    if isinstance(exc, requests.exceptions.Timeout):
        return PveError(TIMEOUT, f"{host} did not answer within {timeout_s * 1000:.0f} ms")
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(_root_cause(exc))
        if "Fingerprints did not match" in str(exc) or "fingerprint" in text.lower():
            return PveError(TLS, f"{host} presented a certificate whose SHA-256 fingerprint does not match the pinned one")
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return PveError(TLS, f"{host} presented a certificate that is not trusted (pin its fingerprint, or install its CA)")
        return PveError(TLS, f"the TLS handshake with {host} failed: {text}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        root = _root_cause(exc)
        text = str(exc)
        if isinstance(root, socket.gaierror) or "NameResolutionError" in text or "Name or service not known" in text:
            return PveError(DNS, f"the name of {host} could not be resolved")
        if isinstance(root, ConnectionRefusedError) or getattr(root, "errno", None) == errno.ECONNREFUSED \
                or "Connection refused" in text:
            return PveError(REFUSED, f"{host} refused the connection (nothing listens on that port)")
        if "timed out" in text.lower():
            return PveError(TIMEOUT, f"{host} did not answer within {timeout_s * 1000:.0f} ms")
        if isinstance(root, http.client.IncompleteRead):
            return PveError(NETWORK, f"{host} closed the connection before the end of its answer")
        if isinstance(root, http.client.HTTPException) and not isinstance(root, ConnectionResetError):
            return PveError(BAD_RESPONSE, f"{host} answered with something that is not HTTP ({root})")
        if isinstance(root, ConnectionResetError) or "reset" in text.lower() or "aborted" in text.lower():
            return PveError(NETWORK, f"{host} closed the connection before answering")
        return PveError(NETWORK, f"{host} could not be reached: {root}")
    if isinstance(exc, (ValueError, KeyError, TypeError, json.JSONDecodeError)):
        return PveError(BAD_RESPONSE, f"{host} answered with something that is not the PVE API ({exc.__class__.__name__})")
    return PveError(NETWORK, f"{host} could not be used: {exc}")


class PveClient:
    """A client for one server, reused across polls so connections stay open (keep-alive)."""

    def __init__(self, target: Target):
        self.target = target
        self._apis: dict[str, ProxmoxResource] = {}
        # The resources a poll calls (api("version"), api("cluster/status")), made once per session:
        # proxmoxer builds a new one, joining the URL, on every api(path).
        self._polled: dict[str, tuple[ProxmoxResource, ProxmoxResource]] = {}  # path -> (api, resource)

    def _api(self, base_url: str, timeout_s: float) -> ProxmoxResource:
        """The session of this address (one per address, kept across timeouts), with timeout_s set
        for this thread's calls."""
        api = self._apis.get(base_url)
        if api is None:
            api = self._apis[base_url] = _session(self.target, base_url, timeout_s)
        api._store["session"].call.timeout = timeout_s
        return api

    def _drop(self, base_url: str) -> None:
        """After a failure, forget the session of this address so that the next call starts afresh
        (a new login, new connections) — unless its polls go over our own client (_Wire), which
        never keeps a connection that failed and replaces a stale one by itself: its kept
        connections spare the next poll a TLS handshake."""
        api = self._apis.get(base_url)
        if api is not None and api._store["session"].wire is None:
            self._apis.pop(base_url, None)

    def close(self) -> None:
        for api in self._apis.values():
            api._store["session"].close()
        self._apis.clear()
        self._polled = {}

    def _timed(self, api: ProxmoxResource, path: str, timings: list[CallTiming]):
        start = time.perf_counter()
        made = self._polled.get(path)
        if made is None or made[0] is not api:
            made = self._polled[path] = (api, api(path))
        try:
            return made[1].get()
        finally:
            timings.append(CallTiming(path, (time.perf_counter() - start) * 1000))

    def _probe_once(self, base_url: str, timeout_s: float, used_fallback: bool) -> Probe:
        timings: list[CallTiming] = []
        try:
            api = self._api(base_url, timeout_s)
            # For manual test: pvesh get /version
            version = self._timed(api, "version", timings)
            # For manual test: pvesh get /cluster/status
            status = self._timed(api, "cluster/status", timings)
            if not isinstance(version, dict) or "version" not in version or not isinstance(status, list):
                raise ValueError("unexpected shape")
            nodes = [e for e in status if isinstance(e, dict) and e.get("type") == "node"]
            cluster = next((e for e in status if isinstance(e, dict) and e.get("type") == "cluster"), None)
            online = sum(1 for n in nodes if int(n.get("online", 0) or 0) == 1)
            # A standalone node lists itself only; it answered, so it is online.
            total = len(nodes) or 1
            if not nodes:
                online = 1
        except Exception as exc:  # noqa: BLE001 - every failure becomes one PveError
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            # A stale session (e.g. an expired login) must not poison the next poll.
            self._drop(base_url)
            raise classify(exc, base_url, timeout_s) from exc
        return Probe(version=str(version["version"]), nodes_online=online, nodes_total=total,
                     quorate=bool(cluster.get("quorate")) if cluster else None,
                     response_time_ms=round(sum(t.ms for t in timings)), used_fallback=used_fallback,
                     timings=timings)

    def request(self, method: str, path: str, timeout_ms: int = 10000, **params):
        """One API call, e.g. request("POST", "nodes/pve1/qemu/100/vncproxy", websocket=1): the
        decoded `data`, or PveError. The fallback address is used as in probe()."""
        timeout_s = timeout_ms / 1000
        verb = method.lower()
        if verb not in ("get", "post", "put", "delete"):
            raise ValueError(f"unknown HTTP method {method!r}")

        def once(base_url: str):
            try:
                resource = self._api(base_url, timeout_s)(path.strip("/"))
                return getattr(resource, verb)(**params)
            except Exception as exc:  # noqa: BLE001 - every failure becomes one PveError
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                if not isinstance(exc, ResourceException):
                    self._drop(base_url)
                raise classify(exc, base_url, timeout_s) from exc

        with _quiet(self.target):
            return self._request_or_fallback(once, verb)

    def _request_or_fallback(self, once, verb: str):
        try:
            return once(self.target.base_url)
        except PveError as primary:
            # A write that may have reached the server (timeout, reset) is not sent again.
            retry_kinds = CONNECTION_LEVEL if verb == "get" else {REFUSED, DNS}
            if primary.kind not in retry_kinds or not self.target.fallback_url:
                raise
            return once(self.target.fallback_url)

    def probe(self, timeout_ms: int) -> Probe:
        """GET /version and GET /cluster/status, on the primary address or else the fallback.

        Steps: try the primary; on a connection-level failure (timeout, refused, dns, network)
        with a fallback_url set, try the fallback and mark the result used_fallback.
        """
        timeout_s = timeout_ms / 1000
        with _quiet(self.target):
            return self._probe_or_fallback(timeout_s)

    def _probe_or_fallback(self, timeout_s: float) -> Probe:
        try:
            return self._probe_once(self.target.base_url, timeout_s, False)
        except PveError as primary:
            if primary.kind not in CONNECTION_LEVEL or not self.target.fallback_url:
                raise
            try:
                return self._probe_once(self.target.fallback_url, timeout_s, True)
            except PveError as fallback:
                raise PveError(fallback.kind, f"{primary.message}; the fallback address failed too:"
                                              f" {fallback.message}") from fallback
