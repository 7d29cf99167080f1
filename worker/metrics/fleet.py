"""The fleet exporter: per-server gauges for Grafana, read from the database at each scrape.

One query (`fleet_metrics` in sql/queries.sql) per scrape; every gauge carries the server's tenant
and name as labels. A value the database does not know (a server never polled, a timeout not yet
learned, a newest poll that failed) is left out rather than shown as 0.
"""

from __future__ import annotations

from worker import db

# name: (help, how a row gives the value or None)
GAUGES = {
    "proxwatch_server_up": ("1 while the server answers (online or degraded), 0 when offline; absent while "
                            "unknown (never polled).",
                            lambda r: {"online": 1, "degraded": 1, "offline": 0}.get(r["status"])),
    "proxwatch_server_response_time_seconds": ("Response time of the server's newest poll; absent when it failed.",
                                               lambda r: _ms(r["response_time_ms"])),
    "proxwatch_server_success_ratio_24h": ("Share of the last 24 h's polls that succeeded (0–1).",
                                           lambda r: None if r["success_rate"] is None
                                           else float(r["success_rate"]) / 100),
    "proxwatch_server_learned_timeout_seconds": ("The poll timeout learned from recent response times; absent "
                                                 "until learned.", lambda r: _ms(r["learned_timeout_ms"])),
    "proxwatch_server_nodes_online": ("Cluster nodes online, as the newest successful poll reported.",
                                      lambda r: r["nodes_online"]),
    "proxwatch_server_guests_running": ("Guests (VMs and containers, not templates) running at the last guest "
                                        "sync.", lambda r: r["guests_running"]),
    "proxwatch_server_sessions_open": ("Console and SSH sessions open now.", lambda r: r["sessions_open"]),
    "proxwatch_server_operations_running": ("Operations in progress now.", lambda r: r["operations_running"]),
}
NAMES = tuple(GAUGES)


def _ms(value) -> float | None:
    return None if value is None else value / 1000


class FleetCollector:
    """A prometheus-client collector over the `fleet_metrics` query."""

    def __init__(self, pool):
        self.pool = pool

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        with self.pool.connection() as conn:
            rows = conn.execute(db.q("fleet_metrics")).fetchall()
        for name, (help_text, value) in GAUGES.items():
            family = GaugeMetricFamily(name, help_text, labels=("tenant", "name"))
            for row in rows:
                v = value(row)
                if v is not None:
                    family.add_metric((row["tenant"], row["name"]), float(v))
            yield family


def registry(pool):
    from prometheus_client import CollectorRegistry

    r = CollectorRegistry(auto_describe=False)
    r.register(FleetCollector(pool))
    return r
