"""Free ports and waiting: a condition, a listening port, an HTTP answer. Every wait polls what it
waits for and ends as soon as it holds; none is a fixed sleep standing in for synchronisation."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.2) -> T | None:
    """The predicate's first truthy value within timeout seconds, or None (for `assert wait_for(…), why`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """The predicate's first truthy value within timeout seconds; AssertionError naming `what` if none."""
    value = wait_for(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"not within {timeout} s: {what}")
    return value


def _log_tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


def _alive(proc: subprocess.Popen | None, name: str, log: Path | None) -> None:
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"{name} exited with {proc.returncode}: {_log_tail(log)}")


def wait_for_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None, log: Path | None = None,
                  name: str = "the server") -> None:
    """Until 127.0.0.1:port accepts a connection; fails at once if proc exits (with its log's tail)."""
    def listening() -> bool:
        _alive(proc, name, log)
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0
    if not wait_for(listening, timeout, 0.05):
        raise AssertionError(f"{name} did not listen on port {port} within {timeout} s: {_log_tail(log)}")


def wait_for_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None, log: Path | None = None,
                  name: str = "the server") -> None:
    """Until GET url answers 200; fails at once if proc exits (with its log's tail)."""
    def answers() -> bool:
        _alive(proc, name, log)
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    if not wait_for(answers, timeout, 0.2):
        raise AssertionError(f"{name} did not answer {url} within {timeout} s: {_log_tail(log)}")
