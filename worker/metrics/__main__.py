"""`python3 -m worker.metrics`: the fleet exporter on PROXWATCH_METRICS_HOST:PROXWATCH_METRICS_PORT."""

from __future__ import annotations

import logging

from worker import db, runtime, settings as settings_mod
from worker.metrics import fleet
from worker.metrics.http import serve_forever


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s metrics %(message)s")
    s = settings_mod.load()
    pool = db.make_pool(runtime.endpoints(s).database_url, min_size=1, max_size=2)
    registry = fleet.registry(pool)
    serve_forever(s.metrics.host, s.metrics.port, lambda: registry)


if __name__ == "__main__":
    main()
