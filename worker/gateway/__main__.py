"""`python -m worker.gateway`: run the console gateway in the foreground (Ctrl-C / SIGTERM stops it,
closing every open session as "the console gateway stopped")."""

from __future__ import annotations

import logging
import sys

from worker import runtime, settings
from worker.errors import ProxwatchError
from worker.gateway.app import GatewayConfig, serve


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s console %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        s = settings.load()
        ep = runtime.endpoints(s)
        config = GatewayConfig.from_settings(s, ep.database_url, ep.secret_key)
        serve(config)
    except ProxwatchError as exc:
        print(f"console gateway: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
