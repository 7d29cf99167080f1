"""Where the services are: from the environment (Supabase mode) or from the embedded system's
PROXWATCH_HOME (embedded mode). Every process (CLI, worker, scheduler, dashboard launcher) asks here.

Each command needs only what it uses: in Supabase mode Redis (REDIS_URL) and the encryption key
(PROXWATCH_SECRET_KEY) are asked for when a command reaches for them (`ep.redis_url`,
`ep.secret_key`), not before — listing servers or applying migrations needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.settings import Settings, SettingsError


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis: str | None                   # REDIS_URL (or the embedded Redis); read it as redis_url
    key: str | None                     # PROXWATCH_SECRET_KEY (or embedded mode's); read it as secret_key
    supabase_url: str | None
    anon_key: str | None
    service_key: str | None
    jwt_secret: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None

    @property
    def redis_url(self) -> str:
        """The broker's URL; SettingsError with a sentence when this command needs it and it is not set."""
        if not self.redis:
            raise SettingsError("REDIS_URL is not set: this command hands work to the workers through Redis "
                                "(DATABASE_URL is set, so proxwatch starts no Redis of its own)")
        return self.redis

    @property
    def secret_key(self) -> str:
        """The key that encrypts stored credentials; SettingsError with a sentence when it is not set."""
        if not self.key:
            raise SettingsError("PROXWATCH_SECRET_KEY is not set: this command reads or stores the servers' "
                                "credentials, which it encrypts (generate a key with `python3 -c \"from "
                                "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"`)")
        return self.key


def endpoints(settings: Settings) -> Endpoints:
    if not settings.embedded:
        return Endpoints(settings.database_url, settings.redis_url, settings.secret_key, settings.supabase_url,
                         settings.supabase_anon_key, settings.supabase_service_key)
    from worker.embedded.services import load_secrets

    from worker.embedded.standin import make_keys

    s = load_secrets(settings.home)
    keys = make_keys(s["jwt_secret"])
    return Endpoints(
        database_url=f"postgresql://postgres:{s['pg_password']}@127.0.0.1:{settings.pg_port}/postgres",
        redis=settings.redis_url or f"redis://:{s['redis_password']}@127.0.0.1:{settings.redis_port}/0",
        key=settings.secret_key or s["secret_key"],
        supabase_url=f"http://127.0.0.1:{settings.standin_port}",
        anon_key=keys["anon_key"], service_key=keys["service_key"], jwt_secret=s["jwt_secret"],
        admin_email=s["admin_email"], admin_password=s["admin_password"])
