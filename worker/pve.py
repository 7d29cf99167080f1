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
import http.client
import json
import math
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
from worker.pve_wire import Wire
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
MAX_VERSION = 64  # characters of a reported PVE version (real ones: "8.2.4", "9.1.4")

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


class _PollSession(ProxmoxHttpSession):
    """proxmoxer's session with a short path for what a poll sends: a GET without parameters under
    API-token auth goes to our own HTTP/1.1 client (Wire) on kept-alive TLS sockets, with the
    request's bytes prepared once per path — the same headers requests sends, but
    `Accept-Encoding: identity` — and the exceptions requests raises. requests' per-call merging
    of session settings, environment, cookies and hooks, urllib3's pool and http.client's answer
    parsing were most of the worker's CPU per poll (tests/bench/bench_fleet_cycle.py). Any other
    request (login, a POST, parameters) takes proxmoxer's normal path through requests.

    The timeout is the calling thread's (`call.timeout`, set by PveClient for each call), not the
    session's: a server's learned timeout changes as its response times do, and a session made
    anew for each new timeout meant a new TLS handshake each time (all servers at once when their
    timeouts were first learned)."""

    wire: Wire | None = None
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
            session.wire = Wire(parts.hostname, parts.port or 443,
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


def _version_text(value) -> str:
    """The version a server reported ("8.2.4"; "4.4" on old releases), as text: a number is taken as
    written; anything else (a list, an empty or non-printable string, one longer than a version could
    be) is not the PVE API (ValueError, so bad_response)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) \
            or isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the version is not text")
    text = str(value).strip()
    if not text or len(text) > MAX_VERSION or not text.isprintable():
        raise ValueError("the version is not a version")
    return text


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
        (a new login, new connections) — unless its polls go over our own client (Wire), which
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
            version_text = _version_text(version["version"])
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
        return Probe(version=version_text, nodes_online=online, nodes_total=total,
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
