"""One base for proxwatch's errors: every exception class in worker/ and dashboard/ derives from
worker.errors.ProxwatchError (so the CLI's `guarded`, the gateway and the actors catch one type
and show its sentence), and the CLI turns any of them into a sentence and exit code 2."""

from __future__ import annotations

import ast
from pathlib import Path

import typer
from typer.testing import CliRunner

from worker.cli_common import guarded
from worker.errors import ProxwatchError

ROOT = Path(__file__).resolve().parents[2]


def _exception_classes() -> dict[str, list[str]]:
    """'path:Class' → the names of its bases, for every class of the project that looks like an error."""
    found = {}
    for path in sorted(list((ROOT / "worker").rglob("*.py")) + list((ROOT / "dashboard").rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                found[f"{path.relative_to(ROOT)}:{node.name}"] = bases
    return found


def test_every_error_class_derives_from_proxwatch_error():
    classes = _exception_classes()
    by_name = {key.split(":")[1]: bases for key, bases in classes.items()}

    def is_error(name: str, seen=()) -> bool:
        return name.endswith(("Error", "Exception")) or any(
            is_error(b, seen + (name,)) for b in by_name.get(name, []) if b not in seen)

    def reaches_base(name: str, seen=()) -> bool:
        return name == "ProxwatchError" or any(
            reaches_base(b, seen + (name,)) for b in by_name.get(name, []) if b not in seen and b != name)

    errors = {key: bases for key, bases in classes.items()
              if any(is_error(b) for b in bases) and not key.endswith(":ProxwatchError")}
    assert len(errors) >= 15                       # the walk sees the project
    outside = {key for key, bases in errors.items() if not any(reaches_base(b) for b in bases)}
    assert outside == set()


def test_guarded_turns_any_proxwatch_error_into_a_sentence_and_exit_code_2():
    class Odd(ProxwatchError):
        """Something [red]odd[/red] happened."""

    app = typer.Typer()

    @app.command()
    @guarded
    def boom() -> None:
        raise Odd()

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2 and "Something [red]odd[/red] happened." in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
