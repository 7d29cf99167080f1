"""`python -m worker.embedded.standin`: the stand-in as its own process, serving until SIGINT or
SIGTERM (`proxwatch up` and the tests launch it this way)."""

from __future__ import annotations

import logging
import signal
import threading

from worker.embedded.standin.server import StandIn, StandInError
from worker.settings import SettingsError, load

log = logging.getLogger("proxwatch.standin")


def configuration() -> tuple[str, str, int, dict]:
    """(database URL, JWT secret, port, Realtime quotas) from worker/settings.py: DATABASE_URL,
    PROXWATCH_JWT_SECRET, PROXWATCH_SUPABASE_PORT (default 54321), PROXWATCH_REALTIME_EVENTS_PER_S
    and PROXWATCH_REALTIME_JOINS_PER_S (Supabase's 100 each by default)."""
    try:
        s = load()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    if not s.database_url or not s.jwt_secret:
        raise SystemExit("Set DATABASE_URL and PROXWATCH_JWT_SECRET to run the Supabase stand-in"
                         " (`proxwatch up` starts it for you in embedded mode).")
    return s.database_url, s.jwt_secret, s.standin_port, {"events_per_s": s.realtime.events_per_s,
                                                          "joins_per_s": s.realtime.joins_per_s}


def main() -> None:
    """Start the stand-in on the configured port and serve until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    database_url, secret, port, limits = configuration()
    standin = StandIn(database_url, secret, port=port, realtime_limits=limits)
    try:
        standin.start()
    except StandInError as exc:
        raise SystemExit(str(exc)) from None
    log.info("Supabase stand-in listening on %s", standin.url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    standin.stop()


if __name__ == "__main__":
    main()
