"""Node certificates: the daily read of what each node serves, and its expiry.

For every online node of a server (from /cluster/status): `GET /nodes/{node}/certificates/info`,
the certificate pveproxy serves (pveproxy-ssl.pem when present, else the self-signed
pve-ssl.pem), stored in node_certificates. The table's trigger opens the "expires within 14 days"
problem (an alert event) and closes it when a later read — this job's, or the one a successful
renewal operation makes (worker/operations/certificate_renewal.py) — finds it valid for longer.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from psycopg_pool import ConnectionPool

from worker import db
from worker.pve import PveClient, PveError

log = logging.getLogger(__name__)

SERVED = ("pveproxy-ssl.pem", "pve-ssl.pem")   # what pveproxy serves, in order of preference


def served_certificate(info) -> dict | None:
    """The certificate pveproxy serves, from a certificates/info answer (a list, one entry per file)."""
    by_file = {c.get("filename"): c for c in info or [] if isinstance(c, dict)}
    return next((by_file[f] for f in SERVED if f in by_file and by_file[f].get("notafter") is not None), None)


def read(client: PveClient, node: str) -> dict | None:
    """For manual test: pvesh get /nodes/<node>/certificates/info"""
    return served_certificate(client.request("GET", f"nodes/{node}/certificates/info"))


def store(conn, server_id, node: str, cert: dict, checked_at: datetime | None = None) -> dict:
    """Write one node's served certificate (the caller commits)."""
    san = cert.get("san")
    return conn.execute(db.q("node_certificate_store"), {
        "server_id": server_id, "node": node, "filename": cert.get("filename"), "subject": cert.get("subject"),
        "san": [str(x) for x in san] if isinstance(san, list) else None, "fingerprint": cert.get("fingerprint"),
        "not_after": datetime.fromtimestamp(int(cert["notafter"]), timezone.utc),
        "checked_at": checked_at or datetime.now(timezone.utc)}).fetchone()


def check(pool: ConnectionPool, poller, server_id: str, checked_at: datetime | None = None) -> list[dict]:
    """Read and store every online node's served certificate; what was stored (a node that cannot be
    asked is logged and left as it was)."""
    from worker.operations.context import server_nodes

    found_nodes = server_nodes(pool, poller, server_id, log)
    if found_nodes is None:
        return []
    row, client, nodes = found_nodes
    stored = []
    for node in [n["node"] for n in nodes if n["online"]]:
        try:
            cert = read(client, node)
        except PveError as exc:
            log.warning("certificate check of %s/%s failed: %s", row["name"], node, exc.message)
            continue
        if cert is None:
            continue
        with pool.connection() as conn:
            stored.append(store(conn, server_id, node, cert, checked_at))
            conn.commit()
    return stored
