"""Driving statuses through the real worker path for the alert tests: polls of real (fake PVE or
refused) servers written by the worker's Recorder, so incidents — and the outbox rows their trigger
writes — come from the same transaction as in production."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.support.incidents import incident_arrays
from worker import alerts, certificates, db
from worker.crypto import Box
from worker.polling import PollResult, utcnow

STEP = timedelta(seconds=10)
DASH_PASSWORD = "dash-S3cret-pw"


class Polls:
    """Polls of some servers, all at t0, t0 + 10 s, … (each round's scheduled_at is the next step)."""

    def __init__(self, poller, recorder, server_ids):
        self.poller, self.recorder = poller, recorder
        self.server_ids = [str(s) for s in server_ids]
        self.at = utcnow().replace(microsecond=0) - timedelta(hours=1)

    def round(self, n: int = 1) -> list[PollResult]:
        """n rounds: every server polled once per round, each round written as one batch (as a cycle)."""
        done = []
        for _ in range(n):
            self.at += STEP
            results = [r for r in (self.poller.poll(sid, self.at) for sid in self.server_ids) if r is not None]
            self.recorder.write(results)
            done += results
        return done


def later(seconds: float) -> datetime:
    """A moment `seconds` from now (the drain's and the sender's clock in a test)."""
    return utcnow() + timedelta(seconds=seconds)


def seed_alerts(db_url, secret_key, fleet):
    """acme: a channel with a password, pve-beta offline, pve-alpha silenced, pve-delta's certificate
    expiring in 5 days, one delivery try in the log."""
    with db.connect(db_url) as conn:
        acme = fleet.tenants["acme"]
        channel = alerts.add_channel(conn, Box(secret_key), acme, "ops-hook",
                                     f"json://bot:{DASH_PASSWORD}@hooks.example.test/alerts")
        conn.execute(db.q("record_incidents"), incident_arrays([(fleet.servers["pve-beta"], {
            "connection_status": "offline", "health_check_error": "The server refused the connection.",
            "health_check_error_kind": "refused"}, utcnow() - timedelta(minutes=3))]))
        conn.execute("select public.alert_silence_add(%s, %s, null, 7200, 'kernel update')",
                     (acme, fleet.servers["pve-alpha"]))
        certificates.store(conn, fleet.servers["pve-delta"], "pve1",
                           {"filename": "pveproxy-ssl.pem", "notafter": int((utcnow() + timedelta(days=5, hours=1)).timestamp()),
                            "subject": "CN=delta.acme.test"})
        conn.execute(db.q("alert_log_attempt"), {"tenant_id": acme, "delivery_id": None, "channel_id": channel["id"],
                                                 "channel_name": "ops-hook", "attempt": 1, "outcome": "test-failed",
                                                 "answer": "A Connection error occurred sending JSON notification",
                                                 "duration_ms": 3, "now": utcnow()})
        conn.commit()
        return channel
