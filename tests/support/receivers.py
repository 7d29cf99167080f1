"""Real receivers for alert messages: an HTTP server that takes Apprise's json:// POSTs and an SMTP
server (aiosmtpd, with AUTH) that takes its mailto:// mails. Both keep what they received; the HTTP
one can be stopped and started again on the same port (a receiver that is down for a while)."""

from __future__ import annotations

import json
import threading
import time
from email import message_from_bytes
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.waiting import free_port


class WebhookReceiver:
    """json://127.0.0.1:PORT/hook — every POST body (parsed JSON) lands in `received` with its arrival time."""

    def __init__(self, port: int | None = None, status: int = 200):
        self.port = port or free_port()
        self.status = status
        self.received: list[dict] = []
        self.arrivals: list[float] = []
        self.auth: list[str | None] = []
        self._server: ThreadingHTTPServer | None = None
        self._cond = threading.Condition()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}' if receiver.status < 400 else b'{"error": "no"}')
                if receiver.status < 400:
                    with receiver._cond:
                        receiver.received.append(json.loads(body or b"{}"))
                        receiver.arrivals.append(time.time())
                        receiver.auth.append(self.headers.get("Authorization"))
                        receiver._cond.notify_all()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_count(self, n: int, timeout: float = 10) -> list[dict]:
        """Until `n` messages have arrived (AssertionError otherwise); the messages."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= n, timeout):
                raise AssertionError(f"{len(self.received)} messages arrived within {timeout} s, not {n}")
            return list(self.received)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SmtpReceiver:
    """An SMTP server on 127.0.0.1 that accepts AUTH PLAIN/LOGIN for one user without TLS (loopback)
    and keeps each mail as an email.message.EmailMessage."""

    def __init__(self, user: str = "alerts", password: str = "smtp-Pa55-word"):
        self.port = free_port()
        self.user, self.password = user, password
        self.mails: list = []
        self.logins: list[str] = []
        self._controller = None
        self._cond = threading.Condition()

    def url(self, to: str = "ops@example.test") -> str:
        return (f"mailto://{self.user}:{self.password}@127.0.0.1:{self.port}"
                f"?from=proxwatch@example.test&to={to}&secure=no")

    def start(self) -> "SmtpReceiver":
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                with receiver._cond:
                    receiver.mails.append(message_from_bytes(envelope.content, policy=email_policy))
                    receiver._cond.notify_all()
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == receiver.user \
                and auth_data.password.decode() == receiver.password
            if ok:
                receiver.logins.append(receiver.user)
            return AuthResult(success=ok)

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                                      auth_require_tls=False, auth_required=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_count(self, n: int, timeout: float = 10) -> list:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.mails) >= n, timeout):
                raise AssertionError(f"{len(self.mails)} mails arrived within {timeout} s, not {n}")
            return list(self.mails)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
