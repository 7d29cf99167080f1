"""How `proxwatch up` launches the dashboard: on the address PROXWATCH_WEB_HOST names, with the
local admin's credentials (automatic sign-in) only when that address is a loopback one."""

from __future__ import annotations

import pytest

from worker.embedded import system
from worker.runtime import Endpoints
from worker.settings import Settings, is_loopback

EP = Endpoints(database_url="postgresql://postgres:pw@127.0.0.1:5432/postgres", redis="redis://:pw@127.0.0.1:6379/0",
               key="k" * 44, supabase_url="http://127.0.0.1:54321", anon_key="anon", service_key="service",
               jwt_secret="jwt", admin_email="admin@proxwatch.local", admin_password="admin-password")


def web_address(s: Settings) -> str:
    cmd = system.processes(s)["web"]
    return cmd[cmd.index("--server.address") + 1]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_on_a_loopback_address_the_dashboard_gets_the_local_admin(tmp_path, host):
    s = Settings(home=tmp_path, web_host=host)
    env = system.child_env(s, EP)
    assert web_address(s) == host
    assert (env["PROXWATCH_DASHBOARD_EMAIL"], env["PROXWATCH_DASHBOARD_PASSWORD"]) == \
        ("admin@proxwatch.local", "admin-password")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "pve-monitor.example", "fd00::1"])
def test_on_any_other_address_the_dashboard_gets_no_credentials(tmp_path, monkeypatch, host):
    # Not even ones the environment of `up` carries.
    monkeypatch.setenv("PROXWATCH_DASHBOARD_EMAIL", "someone@example.org")
    monkeypatch.setenv("PROXWATCH_DASHBOARD_PASSWORD", "their-password")
    s = Settings(home=tmp_path, web_host=host)
    env = system.child_env(s, EP)
    assert web_address(s) == host
    assert "PROXWATCH_DASHBOARD_EMAIL" not in env and "PROXWATCH_DASHBOARD_PASSWORD" not in env


def test_the_dashboard_listens_on_loopback_unless_told_otherwise(tmp_path):
    assert web_address(Settings(home=tmp_path)) == "127.0.0.1"


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), (None, False), ("10.0.0.1", False), ("example.org", False),
    ("::ffff:127.0.0.1", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
