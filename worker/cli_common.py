"""What every `proxwatch` command group shares: the database of the current mode, and expected
errors turned into one sentence on stderr with a non-zero exit (a traceback is a bug)."""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import psycopg
import typer
from rich.console import Console

from worker import db, runtime, settings as settings_mod
from worker.errors import ProxwatchError

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
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
                fail(f"the database is unreachable: {str(exc).strip().splitlines()[0]}", 1)
        return wrapper
    return decorate


guarded = guarded_by()
