"""A minimal /metrics HTTP server: the registry is built per scrape (its values read then)."""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)


def make_server(host: str, port: int, registry: Callable[[], object]) -> ThreadingHTTPServer:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                body = generate_latest(registry())
            except Exception as exc:  # noqa: BLE001 - e.g. the database is down: say so, keep serving
                log.warning("metrics scrape failed: %s", exc)
                self.send_error(503, "metrics unavailable")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_forever(host: str, port: int, registry: Callable[[], object]) -> None:
    server = make_server(host, port, registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    server.serve_forever()
