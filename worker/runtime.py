"""Where the services are: from the environment (Supabase mode) or from the embedded system's
PROXWATCH_HOME (embedded mode). Every process (CLI, worker, scheduler, dashboard launcher) asks here."""

from __future__ import annotations

from dataclasses import dataclass

from worker.settings import Settings, SettingsError


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str
    secret_key: str
    supabase_url: str | None
    anon_key: str | None
    service_key: str | None
    jwt_secret: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None


def endpoints(settings: Settings) -> Endpoints:
    if not settings.embedded:
        if not settings.redis_url:
            raise SettingsError("DATABASE_URL is set but REDIS_URL is not: set both, or neither for embedded mode")
        if not settings.secret_key:
            raise SettingsError("PROXWATCH_SECRET_KEY is not set: it encrypts the servers' credentials")
        return Endpoints(settings.database_url, settings.redis_url, settings.secret_key, settings.supabase_url,
                         settings.supabase_anon_key, settings.supabase_service_key)
    from worker.embedded.services import load_secrets

    from worker.embedded.standin import make_keys

    s = load_secrets(settings.home)
    keys = make_keys(s["jwt_secret"])
    return Endpoints(
        database_url=f"postgresql://postgres:{s['pg_password']}@127.0.0.1:{settings.pg_port}/postgres",
        redis_url=settings.redis_url or f"redis://:{s['redis_password']}@127.0.0.1:{settings.redis_port}/0",
        secret_key=settings.secret_key or s["secret_key"],
        supabase_url=f"http://127.0.0.1:{settings.standin_port}",
        anon_key=keys["anon_key"], service_key=keys["service_key"], jwt_secret=s["jwt_secret"],
        admin_email=s["admin_email"], admin_password=s["admin_password"])
