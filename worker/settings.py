"""Environment → typed settings. Every bad value fails loudly with one sentence.

Two modes, one code path (see DESIGN.md):
- Supabase mode: DATABASE_URL (+ REDIS_URL, SUPABASE_URL, SUPABASE_ANON_KEY) point at real services.
- Embedded mode (DATABASE_URL unset): the project starts its own Postgres, Redis and the Supabase
  stand-in, keeping their data under PROXWATCH_HOME.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import os
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ProxwatchError):
    """The environment holds a value proxwatch cannot use."""


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"Unexpected value {name}={raw!r}: use a whole number.") from None
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise SettingsError(f"Unexpected value {name}={raw!r}: use a number between {minimum} and {maximum}.")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"Unexpected value {name}={raw!r}: use 'true' or 'false'.")


def default_home() -> Path:
    """Where embedded mode keeps its data when PROXWATCH_HOME is unset.

    A normal user gets ~/.local/share/proxwatch. Root gets /var/lib/proxwatch: Postgres refuses to
    run as root, so the embedded server runs as the 'postgres' user, which cannot enter /root.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/proxwatch")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "proxwatch"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None
    redis_url: str | None
    supabase_url: str | None
    supabase_anon_key: str | None
    supabase_service_key: str | None
    secret_key: str | None
    # Ports of the embedded services (loopback only).
    pg_port: int = 54329
    redis_port: int = 6389
    standin_port: int = 54321
    web_port: int = 8501
    # Polling.
    default_interval_s: int = 10
    offline_after: int = 3
    status_refresh_s: int = 300
    timeout_min_ms: int = 1000
    timeout_max_ms: int = 10000
    timeout_default_ms: int = 5000
    worker_processes: int = 2
    worker_threads: int = 16
    extra: dict = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when proxwatch must start its own Postgres (DATABASE_URL unset)."""
        return not self.database_url


def load() -> Settings:
    home_raw = os.environ.get("PROXWATCH_HOME")
    home = Path(home_raw).expanduser() if home_raw else default_home()
    if not home.is_absolute():
        home = Path.cwd() / home
    database_url = os.environ.get("DATABASE_URL") or None
    if database_url and not database_url.startswith(("postgres://", "postgresql://")):
        raise SettingsError(f"Unexpected value DATABASE_URL={_redact(database_url)!r}: use a postgresql:// URL.")
    redis_url = os.environ.get("REDIS_URL") or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"Unexpected value REDIS_URL={_redact(redis_url)!r}: use a redis:// URL.")
    return Settings(
        home=home,
        database_url=database_url,
        redis_url=redis_url,
        supabase_url=os.environ.get("SUPABASE_URL") or None,
        supabase_anon_key=os.environ.get("SUPABASE_ANON_KEY") or None,
        supabase_service_key=os.environ.get("SUPABASE_SERVICE_ROLE_KEY") or None,
        secret_key=os.environ.get("PROXWATCH_SECRET_KEY") or None,
        pg_port=env_int("PROXWATCH_PG_PORT", 54329, 1024, 65535),
        redis_port=env_int("PROXWATCH_REDIS_PORT", 6389, 1024, 65535),
        standin_port=env_int("PROXWATCH_SUPABASE_PORT", 54321, 1024, 65535),
        web_port=env_int("PROXWATCH_WEB_PORT", 8501, 1024, 65535),
        default_interval_s=env_int("PROXWATCH_POLL_INTERVAL", 10, 2, 3600),
        offline_after=env_int("PROXWATCH_OFFLINE_AFTER", 3, 1, 100),
        status_refresh_s=env_int("PROXWATCH_STATUS_REFRESH", 300, 10, 3600),
        timeout_min_ms=env_int("PROXWATCH_TIMEOUT_MIN_MS", 1000, 100, 60000),
        timeout_max_ms=env_int("PROXWATCH_TIMEOUT_MAX_MS", 10000, 100, 120000),
        worker_processes=env_int("PROXWATCH_WORKER_PROCESSES", 2, 1, 64),
        worker_threads=env_int("PROXWATCH_WORKER_THREADS", 16, 1, 256),
    )


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
