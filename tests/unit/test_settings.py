"""Settings: every variable declared once in worker/settings.py, read nowhere else, documented in
the README from the same declarations, and a bad value is one sentence naming the variable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from worker import settings
from worker.errors import ProxwatchError
from worker.settings import VARS, SettingsError, load, markdown_table

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for d in ("worker", "dashboard") for p in (ROOT / d).rglob("*.py")]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROXWATCH_HOME", str(tmp_path))
    return monkeypatch


def test_defaults_load_without_any_variable(clean_env, tmp_path):
    s = load()
    assert s.home == tmp_path and s.embedded
    assert (s.default_interval_s, s.offline_after, s.gateway.port, s.inventory.interval_s) == (10, 3, 8765, 30)
    assert s.gateway.url == "http://127.0.0.1:8765"


def test_each_section_reads_its_variables(clean_env):
    clean_env.setenv("PROXWATCH_OPERATION_STALE_S", "90")
    clean_env.setenv("PROXWATCH_GATEWAY_TRUST_PROXY", "yes")
    clean_env.setenv("PROXWATCH_GATEWAY_PORT", "9000")
    clean_env.setenv("PROXWATCH_GUEST_INTERVAL", "45")
    clean_env.setenv("PROXWATCH_SESSION_SWEEP_S", "12")
    clean_env.setenv("PROXWATCH_DASHBOARD_REFRESH", "20")
    clean_env.setenv("PROXWATCH_GATEWAY_URL", "https://consoles.example.org/")
    s = load()
    assert s.operations.stale_s == 90 and s.gateway.trust_proxy is True and s.gateway.port == 9000
    assert s.inventory.interval_s == 45 and s.sessions.sweep_s == 12 and s.dashboard.refresh_s == 20
    assert s.gateway.url == "https://consoles.example.org"


@pytest.mark.parametrize("name, raw, sentence", [
    ("PROXWATCH_POLL_INTERVAL", "ten", "Unexpected value PROXWATCH_POLL_INTERVAL='ten': use a whole number."),
    ("PROXWATCH_GATEWAY_PORT", "80", "Unexpected value PROXWATCH_GATEWAY_PORT='80': use a number between 1024 and 65535."),
    ("PROXWATCH_GATEWAY_TRUST_PROXY", "maybe", "Unexpected value PROXWATCH_GATEWAY_TRUST_PROXY='maybe': use 'true' or 'false'."),
    ("DATABASE_URL", "mysql://u:hunter2@h/db", "Unexpected value DATABASE_URL='mysql://u:***@h/db': use a postgresql:// URL."),
])
def test_a_bad_value_is_one_sentence_naming_the_variable(clean_env, name, raw, sentence):
    clean_env.setenv(name, raw)
    with pytest.raises(SettingsError) as info:
        load()
    assert str(info.value) == sentence
    assert isinstance(info.value, ProxwatchError)
    assert "hunter2" not in str(info.value)


def test_every_numeric_and_boolean_variable_is_checked_by_load(clean_env):
    """A variable declared but never read by load() would be documented and ignored."""
    for name, var in VARS.items():
        if var.parse in (settings._text, settings._path, settings._secret) or name in ("DATABASE_URL", "REDIS_URL"):
            continue
        clean_env.setenv(name, "not-a-valid-value")
        with pytest.raises(SettingsError, match=re.escape(name)):
            load()
        clean_env.delenv(name)


def test_the_readme_lists_every_variable_as_settings_declares_it():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings table")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end of settings table -->")
    assert readme[start:end] == markdown_table(), "run `python3 -m worker.settings` and paste its table into the README"


def _environ_reads(path: Path) -> list[int]:
    """Lines that read the environment (os.environ.get / [] / os.getenv); copying it for a child
    process or setting a default for children is not a read of configuration."""
    tree = ast.parse(path.read_text())
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "getenv" or (f.attr == "get" and ast.unparse(f.value) == "os.environ"):
                lines.append(node.lineno)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                and isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
    return lines


def test_no_module_but_settings_reads_the_environment():
    offenders = {str(p.relative_to(ROOT)): _environ_reads(p) for p in CODE
                 if p != ROOT / "worker" / "settings.py"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_variable_the_code_names_is_declared():
    named = set()
    for path in CODE:
        named |= set(re.findall(r"\bPROXWATCH_[A-Z_]+[A-Z]\b", path.read_text()))
    assert named - set(VARS) == set()


def test_every_declared_variable_sets_exactly_one_settings_field():
    from dataclasses import fields, is_dataclass

    from worker.settings import Settings

    def env_fields(cls) -> list[str]:
        out = []
        for f in fields(cls):
            if "env" in f.metadata:
                out.append(f.metadata["env"])
            elif is_dataclass(f.default_factory):
                out += env_fields(f.default_factory)
        return out

    read = env_fields(Settings)
    assert sorted(read) == sorted(VARS), "a variable declared in VARS but never read (or read twice)"


def test_settings_reads_no_variable_it_does_not_declare():
    """settings.py itself reads the environment only through Var.read (every variable a Var)."""
    path = ROOT / "worker" / "settings.py"
    assert len(_environ_reads(path)) == 1, "read a variable through a Var in VARS, not os.environ directly"


def test_the_home_defaults_under_xdg_data_home_for_a_normal_user(clean_env, tmp_path):
    clean_env.setattr(settings.os, "geteuid", lambda: 1000)
    clean_env.delenv("PROXWATCH_HOME")
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert load().home == tmp_path / "data" / "proxwatch"
