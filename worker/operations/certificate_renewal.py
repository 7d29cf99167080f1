"""certificate_renewal: renew (or order) a node's ACME certificate, with progress read from the
ACME task's log; and the daily job that requests a renewal of every ACME certificate that expires
within 30 days (`renew_expiring`, created_by 'cron') — through the same enqueue, so it cannot start
a renewal that is already running."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

from psycopg_pool import ConnectionPool

from worker import certificates, db
from worker.operations.common import utcnow
from worker.operations.context import Context, server_nodes
from worker.operations.requests import RequestRefused, enqueue
from worker.operations.tasks import run_task
from worker.polling import Poller
from worker.pve import PveClient, PveError

log = logging.getLogger(__name__)

# The certificate ACME manages on a node (pveproxy-ssl.pem); pve-ssl.pem is the cluster CA's own.
ACME_CERT_FILE = "pveproxy-ssl.pem"
RENEW_WITHIN_DAYS = 30
CRON_REPEAT_HOURS = 12

# Steps of an ACME order or renewal as its task log prints them (pve-manager PVE/API2/ACME.pm),
# in order, with the progress each one means.
CERT_STEPS: tuple[tuple[str, int, str], ...] = (
    ("Loading ACME account details", 10, "Loading the ACME account"),
    ("Placing ACME order", 20, "Placing the ACME order"),
    ("Getting authorization details", 30, "Getting the authorization details"),
    ("already validated!", 55, "Domain already validated"),
    ("... pending!", 35, "Validating the domain"),
    ("Setting up webserver", 40, "Validating the domain"),
    ("Triggering validation", 45, "Validating the domain"),
    ("Sleeping for 5 seconds", 50, "Waiting for the validation"),
    ("Status is still 'pending'", 50, "Waiting for the validation"),
    ("Status is 'valid'", 55, "Domain validated"),
    ("All domains validated!", 60, "All domains validated"),
    ("Creating CSR", 65, "Creating the certificate request"),
    ("Finalizing order", 70, "Finalizing the order"),
    ("Checking order status", 75, "Checking the order status"),
    ("Order is ready, finalizing order", 75, "Finalizing the order"),
    ("still pending", 75, "Waiting for the CA"),
    ("still processing", 75, "Waiting for the CA"),
    ("valid!", 80, "Certificate issued"),
    ("Downloading certificate", 85, "Downloading the certificate"),
    ("Setting pveproxy certificate and key", 90, "Installing the certificate"),
    ("Restarting pveproxy", 95, "Restarting pveproxy"),
    ("Revoking old certificate", 97, "Revoking the old certificate"),
)


def certificate_step(line: str) -> tuple[int, str] | None:
    """The (progress, message) a line of an ACME task log means, or None for other lines."""
    text = line.strip()
    for needle, progress, message in CERT_STEPS:
        if needle == "valid!" and text != "valid!":
            continue
        if needle in text:
            return progress, message
    return None


def acme_certificate(client: PveClient, node: str) -> dict | None:
    """The node's ACME certificate as certificates/info describes it (filename, notafter,
    fingerprint …), or None when it has none (a custom or only the self-signed certificate).
    PveError when the node cannot be asked.

    For manual test: pvesh get /nodes/<node>/certificates/info
    """
    info = client.request("GET", f"nodes/{node}/certificates/info")
    return next((c for c in info or [] if isinstance(c, dict) and c.get("filename") == ACME_CERT_FILE), None)


def run(ctx: Context) -> tuple[str, dict]:
    node = ctx.resolve_node()
    order = bool(ctx.params.get("order"))
    ctx.progress(2, "Ordering a new certificate" if order else "Requesting the renewal")
    extra = {"force": 1} if ctx.params.get("force") else {}
    # For manual test: pvesh set /nodes/<node>/certificates/acme/certificate   (create: a new order)
    warnings, _ = run_task(ctx, node, "POST" if order else "PUT", f"nodes/{node}/certificates/acme/certificate",
                           message="Renewing the certificate", on_line=certificate_step,
                           what=f"The certificate {'order' if order else 'renewal'} of {node}", **extra)
    meta = dict(ctx.metadata)
    notafter = None
    try:
        cert = acme_certificate(ctx.client(), node)
        if cert and cert.get("notafter"):
            notafter = datetime.fromtimestamp(int(cert["notafter"]), timezone.utc)
            meta.update(notafter=notafter.isoformat(), fingerprint=cert.get("fingerprint"))
            # The stored expiry follows the renewal now: an "expires within 14 days" alert resolves.
            with ctx.pool.connection() as conn:
                certificates.store(conn, ctx.op["server_id"], node, cert)
                conn.commit()
    except PveError as exc:  # the renewal worked; reading the new expiry is a nicety
        log.info("certificate info of %s after renewal: %s", node, exc.message)
    until = f"; valid until {notafter:%Y-%m-%d}" if notafter else ""
    return (f"Certificate of {node} renewed{until}" + (f" ({warnings})" if warnings else ""), meta)


def renew_expiring(pool: ConnectionPool, poller: Poller, send: Callable[[str], None] | None, server_id: str,
                   scheduled_at: datetime | None = None, within_days: int = RENEW_WITHIN_DAYS) -> list[dict]:
    """Request a renewal (created_by 'cron') of every node's ACME certificate that expires
    within `within_days`, and hand each new one to the broker with `send`. Returns what it found
    per node: {"node", "notafter", "result"}."""
    found_nodes = server_nodes(pool, poller, server_id, log)
    if found_nodes is None:
        return []
    row, client, nodes = found_nodes
    limit = utcnow() + timedelta(days=within_days)
    found = []
    for node in [n for n in nodes if n["online"]]:
        name = node["node"]
        try:
            cert = acme_certificate(client, name)
        except PveError as exc:
            log.warning("certificate check of %s/%s failed: %s", row["name"], name, exc.message)
            found.append({"node": name, "notafter": None, "result": f"not checked: {exc.message}"})
            continue
        if cert is None or cert.get("notafter") is None:
            continue  # no ACME (custom) certificate: the self-signed pve-ssl.pem is not ACME's to renew
        notafter = datetime.fromtimestamp(int(cert["notafter"]), timezone.utc)
        entry = {"node": name, "notafter": notafter.isoformat()}
        if notafter > limit:
            found.append({**entry, "result": "valid"})
            continue
        with pool.connection() as conn:
            recent = conn.execute(db.q("ops_recent_cron_renewal"), {"server_id": server_id, "node": name,
                                                                    "hours": CRON_REPEAT_HOURS}).fetchone()
            if recent is not None:
                found.append({**entry, "result": f"requested already today ({recent['status']})",
                              "operationId": str(recent["id"])})
                continue
            reason = f"expires {notafter:%Y-%m-%d %H:%M} UTC" + (
                f" (daily check {scheduled_at:%Y-%m-%d})" if scheduled_at else "")
            try:
                result = enqueue(conn, server_id, "certificate_renewal", {"node": name, "reason": reason}, "cron")
            except RequestRefused as exc:
                found.append({**entry, "result": f"refused: {exc}"})
                continue
            if result["status"] == "started":
                conn.execute(db.q("ops_mark_dispatched"), {"id": result["operationId"]})
            conn.commit()
        if result["status"] == "started" and send:
            send(result["operationId"])
        found.append({**entry, "result": result["status"], "operationId": result["operationId"]})
    return found
