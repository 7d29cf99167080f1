"""The command line under bad and hostile input, in process (typer's CliRunner) against a real
database: secrets come from standard input, files or the environment; passwords past bcrypt's 72
bytes are a sentence (and the stand-in's login answers them like any wrong password); two
`poll --once` in one second are two rows; and every command, given empty, huge, NUL, unicode or
negative arguments, ends with a sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
import typer
from typer.testing import CliRunner

from worker import polling
from worker.cli import app
from worker.crypto import Box
from worker.embedded.standin import StandIn

TOKEN = "root@pam!monitor=8f0c2b6e-1111-4222-8333-944455556666"
SECRET = TOKEN.split("=", 1)[1]
LONG = "ü" * 37                       # 37 characters, 74 bytes: past bcrypt's 72
SECRET_VARS = ("PROXWATCH_PVE_TOKEN", "PROXWATCH_PVE_PASSWORD", "PROXWATCH_USER_PASSWORD", "PROXWATCH_SSH_PASSWORD")


@pytest.fixture
def cli(db_url, redis_server, secret_key, tmp_path, monkeypatch):
    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_server.url, "PROXWATCH_SECRET_KEY": secret_key,
           "PROXWATCH_HOME": str(tmp_path), "COLUMNS": "200", "NO_COLOR": "1"}
    runner = CliRunner()

    def run(*args, ok=True, input=None, **extra_env):
        result = runner.invoke(app, list(args), input=input, env={**env, **extra_env}, catch_exceptions=True)
        # A traceback is a bug: the only exception allowed out of a command is the exit.
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return run


def count(conn, table: str) -> int:
    conn.commit()
    return conn.execute(f"select count(*) as n from {table}").fetchone()["n"]


def secret_of(conn, secret_key: str, server: str) -> str:
    conn.commit()
    row = conn.execute("select c.secret_ciphertext from public.server_credentials c join public.proxmox_servers s"
                       " on s.id = c.server_id where s.name = %s", (server,)).fetchone()
    return Box(secret_key).open(row["secret_ciphertext"])


# ------------------------------------------------------------------------------------ secrets
def test_the_token_comes_from_stdin_a_file_or_the_environment(cli, conn, secret_key, tmp_path):
    cli("tenants", "add", "acme")
    cli("servers", "add", "a", "https://a.example", "--token", "-", input=TOKEN + "\n")
    cli("servers", "add", "b", "https://b.example", "--token-stdin", input=TOKEN)
    (tmp_path / "token").write_text(TOKEN + "\n")
    cli("servers", "add", "c", "https://c.example", "--token-file", str(tmp_path / "token"))
    cli("servers", "add", "d", "https://d.example", PROXWATCH_PVE_TOKEN=TOKEN)
    cli("servers", "add", "e", "https://e.example", "--user", "root@pam", PROXWATCH_PVE_PASSWORD="pve pass ")
    assert [secret_of(conn, secret_key, s) for s in "abcd"] == [SECRET] * 4
    assert secret_of(conn, secret_key, "e") == "pve pass "          # spaces are part of a password


def test_servers_update_takes_new_credentials_from_stdin(cli, conn, secret_key):
    cli("tenants", "add", "acme")
    cli("servers", "add", "a", "https://a.example", "--token", "-", input=TOKEN)
    new = TOKEN.replace("8f0c", "9f0c")
    cli("servers", "update", "a", "--url", "https://[fd00::1]", "--token", "-", input=new)
    assert secret_of(conn, secret_key, "a") == new.split("=", 1)[1]
    conn.commit()
    assert conn.execute("select base_url from public.proxmox_servers").fetchone()["base_url"] == "https://[fd00::1]:8006"
    # The environment's token is not used for a change that keeps the server where it is.
    cli("servers", "update", "a", "--interval", "30", PROXWATCH_PVE_TOKEN=TOKEN)
    assert secret_of(conn, secret_key, "a") == new.split("=", 1)[1]


@pytest.mark.parametrize("args, stdin, words", [
    (["--token", TOKEN, "--token-file", "/nonexistent"], None, "in one way only"),
    (["--token-stdin", "--token-file", "/nonexistent"], TOKEN, "in one way only"),
    (["--token-file", "/nonexistent/token"], None, "cannot be read"),
    (["--token", "-"], "\n", "is empty"),
    (["--user", "root@pam", "--password", "-", "--token-stdin"], "x", "only one secret"),
    (["--token", "https://x?y"], None, "USER@REALM!TOKENID=SECRET"),
])
def test_a_bad_secret_source_is_a_sentence_and_writes_nothing(cli, conn, args, stdin, words):
    cli("tenants", "add", "acme")
    result = cli("servers", "add", "a", "https://a.example", *args, input=stdin, ok=False)
    assert result.exit_code == 2 and words in result.output, result.output
    assert count(conn, "proxmox_servers") == 0


def test_users_add_reads_the_password_from_stdin_or_the_environment(cli, conn):
    cli("tenants", "add", "acme")
    cli("users", "add", "a@acme.test", "--password", "-", "--tenant", "acme", input="correct horse\n")
    cli("users", "add", "b@acme.test", "--tenant", "acme", PROXWATCH_USER_PASSWORD="battery staple")
    result = cli("users", "add", "c@acme.test", "--tenant", "acme", ok=False)
    assert result.exit_code == 2 and "give the password" in result.output
    assert count(conn, "auth.users") == 2


def test_ssh_set_reads_the_password_from_a_file(cli, conn, tmp_path):
    import asyncssh

    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    cli("tenants", "add", "acme")
    cli("servers", "add", "a", "https://a.example", "--token", "-", input=TOKEN)
    (tmp_path / "pw").write_text("ssh secret\n")
    out = cli("ops", "ssh-set", "a", "--host", "10.0.0.5", "--host-key", host_key,
              "--password-file", str(tmp_path / "pw")).output
    assert "password login" in out
    assert count(conn, "server_ssh_credentials") == 1


# ------------------------------------------------------------------------ passwords and bcrypt
@pytest.mark.parametrize("password", [LONG, "x" * 73, "x" * 1000])
def test_a_password_past_72_bytes_is_a_sentence_and_writes_nothing(cli, conn, password):
    cli("tenants", "add", "acme")
    result = cli("users", "add", "a@acme.test", "--password", "-", "--tenant", "acme", input=password, ok=False)
    assert result.exit_code == 2 and "longer than 72 bytes" in result.output, result.output
    assert count(conn, "auth.users") == 0


@pytest.fixture
def standin(db_url, pw_secrets):
    server = StandIn(db_url, pw_secrets["jwt_secret"]).start()
    yield server
    server.stop()


def test_the_stand_in_answers_a_long_password_alike_for_known_and_unknown_e_mails(cli, standin):
    cli("tenants", "add", "acme")
    cli("users", "add", "known@acme.test", "--password", "correct horse", "--tenant", "acme")
    answers = set()
    for email in ("known@acme.test", "nobody@acme.test", "nul\x00@acme.test", "\ud800@x"):
        for password in ("wrong password", LONG, "x" * 73, "y" * 5000, "\ud800" * 3, "a\x00b"):
            body = httpx.post(f"{standin.url}/auth/v1/token?grant_type=password", timeout=10,
                              headers={"apikey": standin.anon_key, "X-Supabase-Api-Version": "2024-01-01",
                                       "Content-Type": "application/json"},
                              content=__import__("json").dumps({"email": email, "password": password}))
            answers.add((body.status_code, body.text))
    assert answers == {(400, '{"code": "invalid_credentials", "message": "Invalid login credentials", '
                             '"error": "invalid_grant", "error_description": "Invalid login credentials"}')}


# ------------------------------------------------------------------------------- poll --once
def test_two_polls_within_one_second_are_both_recorded(cli, conn, pve, monkeypatch):
    cli("tenants", "add", "acme")
    cli("servers", "add", "pve1", pve.url, "--token", TOKEN, "--insecure")
    pve.apitokens["root@pam!monitor"] = SECRET
    # Every clock reading falls in the same second, a few microseconds apart.
    ticks = iter(range(1, 10 ** 6))
    second = datetime.now(timezone.utc).replace(microsecond=0)
    monkeypatch.setattr(polling, "utcnow", lambda: second + timedelta(microseconds=next(ticks) * 10))
    assert "ok" in cli("poll", "--once", "pve1").output
    assert "ok" in cli("poll", "--once", "pve1").output
    assert count(conn, "connection_metrics") == 2


# ---------------------------------------------------------------------- every command, hostile
HOSTILE = ["", "\x00", "x" * 100_000, "💥\u202e[/x]**[a](http://e)", "-1", "-99999999999999999999"]


def _commands(group, prefix=()):
    """(path, command) of every command of the app (typer carries its own copy of click: duck-typed)."""
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def _hostile_args(command, value: str) -> list[str]:
    """Every argument and every option that takes a value set to `value` (flags left alone)."""
    args: list[str] = []
    for param in command.params:
        if param.param_type_name == "argument":
            args += [value] * (param.nargs if param.nargs > 0 else 1)
        elif param.param_type_name == "option" and not param.is_flag and not param.count and param.name != "help":
            args += [param.opts[0], value]
    return args or [value]        # a command without parameters gets an unexpected argument


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in COMMANDS])
def test_every_command_refuses_hostile_arguments_with_a_sentence(cli, conn, path):
    cli("tenants", "add", "acme")
    command = dict((" ".join(p), c) for p, c in COMMANDS)[path]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    runs = [_hostile_args(command, value) for value in HOSTILE]
    # One argument hostile at a time, the others plausible, so later checks are reached too.
    for i in range(len(arguments)):
        for value in HOSTILE:
            runs.append([value if j == i else ("https://pve.example" if a.name == "url" else "pve1")
                         for j, a in enumerate(arguments)])
    for args in runs:
        result = cli(*path.split(), *args, ok=False, input="")
        shown = [a[:40] for a in args]
        assert result.exit_code != 0, (path, shown, result.output[-500:])
        assert "Traceback" not in result.output
        assert result.output.strip(), (path, shown)         # a sentence, not silence
    assert count(conn, "proxmox_servers") == 0 and count(conn, "tenants") == 1


# ------------------------------------------------------------------------- servers add / update
@pytest.mark.parametrize("args, words", [
    (["servers", "add", "a", "https://host?x=1"], "has a query"),
    (["servers", "add", "a", "https://root:hunter2@host"], "user name or password"),
    (["servers", "add", "a", "https://host#x"], "has a fragment"),
    (["servers", "add", "n" * 101, "https://host"], "at most 100"),
    (["servers", "add", "[/bold]", "https://host/x"], "has a path"),
    (["tenants", "add", "t" * 101], "at most 100"),
    (["servers", "update", "a", "--url", "https://host?x=1"], "has a query"),
    (["servers", "update", "a", "--rename", "n" * 101], "at most 100"),
    (["servers", "update", "a", "--fallback-url", "https://[fd00::1"], "brackets"),
])
def test_a_bad_address_or_name_is_a_sentence_and_writes_nothing(cli, conn, args, words):
    cli("tenants", "add", "acme")
    cli("servers", "add", "a", "https://a.example", PROXWATCH_PVE_TOKEN=TOKEN)
    conn.commit()
    before = conn.execute("select name, base_url, fallback_url from public.proxmox_servers").fetchall()
    result = cli(*args, ok=False, PROXWATCH_PVE_TOKEN=TOKEN)
    assert result.exit_code == 2 and words in result.output, result.output
    assert "hunter2" not in result.output
    conn.commit()
    assert conn.execute("select name, base_url, fallback_url from public.proxmox_servers").fetchall() == before
    assert count(conn, "tenants") == 1


def test_an_ipv6_address_keeps_its_brackets_and_gets_the_pve_port(cli, conn):
    cli("tenants", "add", "acme")
    out = cli("servers", "add", "v6", "https://[FD00::1]", PROXWATCH_PVE_TOKEN=TOKEN).output
    assert "https://[fd00::1]:8006" in out
    conn.commit()
    assert conn.execute("select base_url from public.proxmox_servers").fetchone()["base_url"] == "https://[fd00::1]:8006"
