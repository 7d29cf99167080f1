"""Fixtures of the integration tests only; the shared ones (connections, the stand-in, fake PVE
servers, sshd, processes) are in tests/conftest.py, their workings in tests/support."""

from __future__ import annotations

import pytest

from tests.support.gateway import make_gateway
from tests.support.seed import TOKEN, seed_teams
from worker import admin, db, inventory
from worker.crypto import Box
from worker.polling import Poller


@pytest.fixture
def add_server(conn, box, fingerprint):
    """add_server(name, url, **ServerInput fields) in tenant 'acme' (created on first use)."""
    def make(name="pve1", url=None, tenant="acme", **kw):
        if not conn.execute(db.q("tenant_by_name"), {"name": tenant}).fetchone():
            admin.add_tenant(conn, tenant)
        kw.setdefault("token", None if "user" in kw else TOKEN)
        if not kw.get("insecure"):
            kw.setdefault("fingerprint", fingerprint)
        return admin.add_server(conn, box, admin.ServerInput(name=name, url=url, tenant=tenant, **kw))
    return make


@pytest.fixture
def poller(pool, box, settings):
    """The worker's Poller on this test's database."""
    return Poller(pool, box, settings)


@pytest.fixture
def recorder(pool, settings):
    """The worker's Recorder on this test's database."""
    from worker.polling import Recorder

    return Recorder(pool, settings)


@pytest.fixture
def rawpve(_fakepve_pki):
    """A PVE peer over real TLS whose answers a test scripts byte by byte (tests/support/rawhttps.py),
    with fakepve's certificate (the `fingerprint` servers pin) and the seeded API token."""
    from tests.support.rawhttps import RawPve

    server = RawPve(*_fakepve_pki, TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook():
    """A real HTTP receiver for Apprise's json:// (tests/support/receivers.py)."""
    from tests.support.receivers import WebhookReceiver

    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd, with AUTH) for Apprise's mailto://."""
    from tests.support.receivers import SmtpReceiver

    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture
def alert_settings():
    """The alert settings of the tests: a 30 s window (the default) and a 10 s first retry."""
    from worker.settings import AlertSettings

    return AlertSettings(group_window_s=30, retry_min_s=10, retry_max_s=600, max_attempts=12, retention_days=90)


@pytest.fixture
def console_fleet(conn, secret_key, pve, fingerprint, pool, settings):
    """The console tests' fleet: team acme with server pve1 = the fake PVE (pinned certificate), its
    guests synced for real."""
    pve.add_vm(100, "web", status="running")
    pve.add_vm(101, "db", status="running")
    pve.add_vm(102, "old", status="stopped")
    f = seed_teams(conn, secret_key, servers={"pve1": ("acme", pve.url)}, fingerprint=fingerprint)
    result = inventory.sync_guests(Poller(pool, Box(secret_key), settings), f.servers["pve1"])
    assert result.error_message is None and result.guests == 3
    return f


@pytest.fixture
def gateway(db_url, secret_key):
    """The console gateway on this test's database, stopped afterwards."""
    gw = make_gateway(db_url, secret_key)
    yield gw
    gw.stop()
