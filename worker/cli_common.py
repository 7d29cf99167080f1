"""What every `proxwatch` command group shares: the database of the current mode, secrets read from
standard input, a file or the environment (never only the command line), and expected errors
turned into one sentence on stderr with a non-zero exit (a traceback is a bug)."""

from __future__ import annotations

import contextlib
import functools
import getpass
import sys
from pathlib import Path
from typing import Iterator

import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from worker import db, runtime, settings as settings_mod
from worker.errors import ProxwatchError

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    # The message may carry what someone typed ("[/x]" would be Rich markup): printed as it is.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def database(*, default_tenant: bool = True) -> Iterator[tuple[runtime.Endpoints, psycopg.Connection]]:
    """A connection to DATABASE_URL, or to the embedded database (attached to when `proxwatch up`
    runs, else started for this command; bootstrapped either way: see system.attached)."""
    from worker.embedded import system

    s = settings_mod.load()
    ep = runtime.endpoints(s)
    with system.attached(s, default_tenant=default_tenant) if s.embedded else contextlib.nullcontext():
        with db.connect(ep.database_url) as conn:
            yield ep, conn


def guarded_by(*refusals: type[BaseException]):
    """A decorator: proxwatch's own errors (ProxwatchError), and these other refusals, become one
    sentence on stderr and exit code 2; an unreachable database exits 1."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (ProxwatchError, *refusals) as exc:
                fail(str(exc))
            except psycopg.OperationalError as exc:
                fail(f"the database is unreachable: {_first_line(exc)}", 1)
            except psycopg.DataError as exc:
                # Input the checks before the database missed (they should not): still a sentence.
                fail(f"the database refused the input: {_first_line(exc)}")
        return wrapper
    return decorate


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------------------- secrets
class SecretError(ProxwatchError):
    """The secret could not be read."""


STDIN = "-"   # `--token -`: read the secret from standard input


def read_secret(what: str, value: str | None, *, from_stdin: bool = False, file: Path | None = None,
                env_name: str | None = None, env_value: str | None = None) -> str | None:
    """A secret from exactly one place: standard input (`--token -` or `--token-stdin`; a prompt
    without echo on a terminal), a file (`--token-file`, its first line), the command line (visible
    to every local user in the process list and kept in shell history: the last resort), or — when
    none of those is given — the environment variable env_name (its value env_value, read by
    worker.settings). None when there is none. A trailing line break is not part of the secret."""
    sources = [name for name, given in (("the command line", value not in (None, STDIN)),
                                        ("standard input", from_stdin or value == STDIN),
                                        ("a file", file is not None)) if given]
    if len(sources) > 1:
        raise SecretError(f"give the {what} in one way only, not from {' and '.join(sources)}")
    if from_stdin or value == STDIN:
        if sys.stdin is None or sys.stdin.closed:
            raise SecretError(f"the {what} was to come from standard input, but there is none")
        if sys.stdin.isatty():
            secret = getpass.getpass(f"{what}: ")
        else:
            secret = sys.stdin.readline(65536).rstrip("\r\n")
        source = "standard input"
    elif file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                secret = fh.readline(65536).rstrip("\r\n")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SecretError(f"the {what} file {str(file)[:200]!r} cannot be read: {reason}") from None
        source = f"the file {str(file)[:200]!r}"
    elif value is not None:
        secret, source = value, "the command line"
    elif env_value:
        secret, source = env_value, f"${env_name}"
    else:
        return None
    if not secret.strip():
        raise SecretError(f"the {what} from {source} is empty")
    if "\x00" in secret:
        raise SecretError(f"the {what} from {source} contains a NUL character")
    return secret


guarded = guarded_by()
