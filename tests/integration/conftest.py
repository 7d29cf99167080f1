"""Helpers for the integration tests: a migrated database (db_url, from tests/conftest.py), a
fake PVE over real HTTPS (fakepve's fixtures), and servers registered through worker.admin."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from worker import admin, db
from worker.crypto import Box
from worker.settings import load

TOKEN = "root@pam!monitor=8f0c2b6e-1111-4222-8333-944455556666"


@pytest.fixture
def settings(monkeypatch):
    return load()


@pytest.fixture
def box(secret_key):
    return Box(secret_key)


@pytest.fixture
def conn(db_url):
    with db.connect(db_url) as c:
        yield c


@pytest.fixture
def pool(db_url):
    p = db.make_pool(db_url, min_size=1, max_size=8)
    yield p
    p.close()


@pytest.fixture
def fingerprint(fakepve_cafile):
    with open(fakepve_cafile, "rb") as fh:
        der = x509.load_pem_x509_certificate(fh.read()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
def pve(fakepve):
    """A fake PVE over HTTPS that also knows the API token TOKEN."""
    user, rest = TOKEN.split("!", 1)
    tokenid, secret = rest.split("=", 1)
    fakepve.apitokens[f"{user}!{tokenid}"] = secret
    return fakepve


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
