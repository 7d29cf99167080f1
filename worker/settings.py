"""Environment → typed settings: every variable proxwatch reads is declared here, once.

Two modes, one code path:
- Supabase mode: DATABASE_URL (+ REDIS_URL, SUPABASE_URL, SUPABASE_ANON_KEY) point at real services.
- Embedded mode (DATABASE_URL unset): the project starts its own Postgres, Redis and the Supabase
  stand-in, keeping their data under PROXWATCH_HOME.

Each variable is a `Var` in `VARS` with its default and a line saying what it does; `load()` builds
one frozen `Settings` (with a section per concern: operations, gateway, inventory, sessions,
dashboard, realtime, retention, metrics, alerts) from them. A bad value fails loudly with one sentence naming the variable
(`Unexpected value PROXWATCH_POLL_INTERVAL='ten': use a whole number.`). The README's configuration
table is `markdown_table()` (`python3 -m worker.settings` prints it; a test keeps the two equal), so
the documentation cannot drift from the code. No other module reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from worker.errors import ProxwatchError


class SettingsError(ProxwatchError):
    """The environment holds a value proxwatch cannot use."""


# ---------------------------------------------------------------------------------- parsers
def _text(name: str, raw: str) -> str:
    return raw.strip()


def _secret(name: str, raw: str) -> str:
    """A secret exactly as given (spaces can be part of a password), without a trailing line break."""
    return raw.rstrip("\r\n")


def _integer(minimum: int, maximum: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"Unexpected value {name}={raw!r}: use a whole number.") from None
        if not minimum <= value <= maximum:
            raise SettingsError(f"Unexpected value {name}={raw!r}: use a number between {minimum} and {maximum}.")
        return value
    parse.range = (minimum, maximum)  # type: ignore[attr-defined]
    return parse


def _boolean(name: str, raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"Unexpected value {name}={raw!r}: use 'true' or 'false'.")


def _url(*schemes: str, what: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if not value.startswith(tuple(s + "://" for s in schemes)):
            raise SettingsError(f"Unexpected value {name}={_redact(value)!r}: use {what}.")
        return value.rstrip("/") if schemes[0].startswith("http") else value
    return parse


def _networks(name: str, raw: str) -> tuple:
    """A comma-separated list of addresses or CIDR networks (`10.0.0.0/8, fd00::/8, 192.0.2.1`)."""
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"Unexpected value {name}={raw!r}: {item!r} is not an address or a network; "
                                "use addresses or CIDR networks separated by commas.") from None
    return tuple(out)


def _path(name: str, raw: str) -> Path:
    path = Path(raw.strip()).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


# ------------------------------------------------------------------------------- variables
@dataclass(frozen=True)
class Var:
    """One environment variable: its default (None: unset), what it does, how it is parsed."""
    name: str
    default: object
    help: str
    parse: Callable[[str, str], object] = _text
    shown_default: str | None = None   # how the README shows a default that depends on the machine

    def read(self):
        raw = os.environ.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default
        return self.parse(self.name, raw)

    @property
    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


_PORT = _integer(1024, 65535)
VARS: dict[str, Var] = {v.name: v for v in (
    # -- where the services are
    Var("PROXWATCH_HOME", None, "Embedded mode keeps Postgres, Redis and its generated secrets here.", _path,
        shown_default="`~/.local/share/proxwatch` (root: `/var/lib/proxwatch`)"),
    Var("XDG_DATA_HOME", None, "Without PROXWATCH_HOME, a normal user's embedded data goes to "
        "`$XDG_DATA_HOME/proxwatch`.", _path, shown_default="`~/.local/share`"),
    Var("DATABASE_URL", None, "Supabase mode: the Postgres the workers write to (direct or session pooler). "
        "Unset: embedded mode.", _url("postgres", "postgresql", what="a postgresql:// URL")),
    Var("REDIS_URL", None, "The Dramatiq broker. With DATABASE_URL: needed by the worker, the scheduler and "
        "commands that hand work to them (`ops request`); listings and `db migrate` do without.",
        _url("redis", "rediss", "unix", what="a redis:// URL")),
    Var("SUPABASE_URL", None, "The dashboard's Supabase project (REST RPC, Auth, Realtime).",
        _url("http", "https", what="an http(s):// URL")),
    Var("SUPABASE_ANON_KEY", None, "The project's anon key (the dashboard signs users in with it)."),
    Var("SUPABASE_SERVICE_ROLE_KEY", None, "Lets `users add` create users through the Supabase Auth admin API."),
    Var("PROXWATCH_SECRET_KEY", None, "Fernet key that encrypts stored credentials. With DATABASE_URL: needed by "
        "whatever stores or uses them (worker, gateway, `servers add`, `poll --once`); embedded mode generates one."),
    Var("PROXWATCH_JWT_SECRET", None, "The stand-in's JWT signing secret (set by `proxwatch up` for its child)."),
    # -- embedded mode's ports (loopback)
    Var("PROXWATCH_PG_PORT", 54329, "Embedded Postgres port.", _PORT),
    Var("PROXWATCH_REDIS_PORT", 6389, "Embedded Redis port.", _PORT),
    Var("PROXWATCH_SUPABASE_PORT", 54321, "Embedded Supabase stand-in port (REST RPC, Auth, Realtime).", _PORT),
    Var("PROXWATCH_WEB_PORT", 8501, "The dashboard's port under `proxwatch up` / `demo`.", _PORT),
    Var("PROXWATCH_WEB_HOST", "127.0.0.1", "The address the dashboard listens on under `proxwatch up` / `demo`. "
        "Embedded mode signs browsers in as the local admin only on a loopback address; on any other, "
        "everyone signs in."),
    # -- polling
    Var("PROXWATCH_POLL_INTERVAL", 10, "Seconds between polls of a new server (each server keeps its own).",
        _integer(2, 3600)),
    Var("PROXWATCH_OFFLINE_AFTER", 3, "Consecutive failed polls that make a server offline.", _integer(1, 100)),
    Var("PROXWATCH_STATUS_REFRESH", 300, "Seconds between rewrites of a server's \"last checked\" when nothing "
        "visible changed (a Realtime message each).", _integer(10, 3600)),
    Var("PROXWATCH_TIMEOUT_MIN_MS", 1000, "Lower bound of the learned per-server timeout.", _integer(100, 60000)),
    Var("PROXWATCH_TIMEOUT_MAX_MS", 10000, "Upper bound of the learned per-server timeout.", _integer(100, 120000)),
    Var("PROXWATCH_WORKER_PROCESSES", 2, "Worker processes under `proxwatch up` (the Procfile passes it too).",
        _integer(1, 64)),
    Var("PROXWATCH_WORKER_THREADS", 16, "Threads per worker process; also the polls one worker process runs at "
        "once.", _integer(1, 256)),
    Var("PROXWATCH_WORKER_DB_POOL", 8, "Most Postgres connections one worker process keeps (metric writer, "
        "target reads, operations share them); count machines × processes × this against the database's "
        "connection limit.", _integer(2, 100)),
    Var("PROXWATCH_POLL_BATCH", 32, "Most polls the scheduler puts in one message (servers due in the same "
        "scheduler step); the worker polls them concurrently, each with its own timeout, and writes them in one "
        "transaction. 1: one message per poll.", _integer(1, 500)),
    Var("PROXWATCH_PVE_CA_FILE", None, "Extra CA bundle for servers whose TLS mode is `verify`.", _text),
    # -- guests and sessions
    Var("PROXWATCH_GUEST_INTERVAL", 30, "Seconds between guest syncs of one server.", _integer(5, 3600)),
    Var("PROXWATCH_SESSION_SWEEP_S", 30, "Seconds between sweeps that expire sessions without heartbeats.",
        _integer(5, 3600)),
    Var("PROXWATCH_SESSION_HEARTBEAT_S", 30, "Seconds between the gateway's heartbeats of open sessions.",
        _integer(1, 300)),
    # -- operations
    Var("PROXWATCH_OPERATION_STALE_S", 60, "An operation whose worker sent no heartbeat for this long is failed.",
        _integer(3, 86400)),
    Var("PROXWATCH_OPERATION_PENDING_TIMEOUT_S", 600, "An operation no worker took within this is failed, never "
        "started late.", _integer(10, 86400)),
    Var("PROXWATCH_OPERATION_POLL_MS", 1000, "How often a running PVE task's status and log are read.",
        _integer(50, 30000)),
    Var("PROXWATCH_OPERATION_DEADLINE_S", 1800, "A PVE task running longer than this is given up on.",
        _integer(10, 86400)),
    Var("PROXWATCH_SSH_TIMEOUT_S", 15, "Timeout of the SSH test's connection and command.", _integer(1, 300)),
    # -- console gateway
    Var("PROXWATCH_GATEWAY_HOST", "127.0.0.1", "Address the console gateway listens on."),
    Var("PROXWATCH_GATEWAY_PORT", 8765, "Port of the console gateway.", _PORT),
    Var("PROXWATCH_GATEWAY_PING_S", 30, "WebSocket ping to the browser; no pong within half of it ends the console.",
        _integer(2, 600)),
    Var("PROXWATCH_GATEWAY_TRUST_PROXY", False, "Take the client address from X-Forwarded-For (only behind a proxy).",
        _boolean),
    Var("PROXWATCH_GATEWAY_TRUSTED_PROXIES", (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        "With PROXWATCH_GATEWAY_TRUST_PROXY: the proxies (addresses or CIDR networks, comma-separated) whose "
        "X-Forwarded-For entries are believed; the client is the right-most address that is not one of them.",
        _networks, shown_default="`127.0.0.0/8, ::1/128`"),
    Var("PROXWATCH_GATEWAY_URL", None, "The gateway as browsers reach it (the dashboard's console links).",
        _url("http", "https", what="an http(s):// URL"),
        shown_default="`http://127.0.0.1:$PROXWATCH_GATEWAY_PORT`"),
    # -- dashboard
    Var("PROXWATCH_DASHBOARD_EMAIL", None, "Embedded mode: the local admin the dashboard signs in as by itself "
        "(only while it listens on a loopback address; `proxwatch up` sets it then)."),
    Var("PROXWATCH_DASHBOARD_PASSWORD", None, "Embedded mode: that admin's password."),
    Var("PROXWATCH_DASHBOARD_REFRESH", 60, "Seconds between the dashboard's re-reads while Realtime is down.",
        _integer(5, 3600)),
    Var("PROXWATCH_DASHBOARD_RECONCILE", 30, "Seconds between the dashboard's cheap \"did anything change\" "
        "checks while Realtime is live (corrects changes Realtime dropped over its quota).", _integer(5, 3600)),
    # -- retention
    Var("PROXWATCH_AUDIT_RETENTION_DAYS", 400, "Days the audit log is kept; older rows are deleted by the hourly "
        "purge job.", _integer(1, 36500)),
    Var("PROXWATCH_OPERATIONS_RETENTION_DAYS", 90, "Days completed and failed operations are kept after they "
        "finished; pending and running ones are never deleted.", _integer(1, 36500)),
    Var("PROXWATCH_RAW_RETENTION_DAYS", 7, "Days each poll (connection_metrics, partitioned by UTC day) is kept; "
        "a day's partition is dropped whole once all of it is older.", _integer(1, 3650)),
    Var("PROXWATCH_HOURLY_RETENTION_DAYS", 400, "Days the hourly rollup (connection_metrics_hourly) is kept.",
        _integer(1, 36500)),
    Var("PROXWATCH_DAILY_RETENTION_DAYS", 0, "Days the daily rollup (connection_metrics_daily) is kept; 0: as long "
        "as the server exists.", _integer(0, 36500)),
    # -- Prometheus metrics
    Var("PROXWATCH_METRICS_HOST", "127.0.0.1", "Address the metrics endpoints listen on (the fleet exporter and "
        "each worker group's)."),
    Var("PROXWATCH_METRICS_PORT", 9464, "Port of the fleet exporter (`python3 -m worker.metrics`; `proxwatch up` "
        "starts it): per-server gauges read from the database at each scrape.", _PORT),
    Var("PROXWATCH_WORKER_METRICS_PORT", 9465, "Port of a worker group's own metrics (messages, failures, "
        "durations, queue depth, poll and database-write latency); 0: not served. Two worker groups on one "
        "machine need two ports.", _integer(0, 65535)),
    Var("PROXWATCH_WORKER_METRICS_DIR", None, "Where a worker group's processes keep their metric files "
        "(Prometheus multiprocess mode); unset: a new temporary directory per group.", _path),
    # -- the embedded Realtime (Supabase's own limits apply in Supabase mode)
    Var("PROXWATCH_REALTIME_EVENTS_PER_S", 100, "Embedded mode: the Realtime events quota per second (one-minute "
        "average, as Supabase's Free plan); over it changes are skipped silently.", _integer(1, 100000)),
    Var("PROXWATCH_REALTIME_JOINS_PER_S", 100, "Embedded mode: Realtime channel joins per second (as Supabase).",
        _integer(1, 100000)),
    # -- secrets for the command line (kept out of the process list and shell history)
    Var("PROXWATCH_ALERT_GROUP_WINDOW_S", 30, "Seconds a tenant's alerts are gathered into one message per channel "
        "(a problem that starts and ends inside it sends nothing).", _integer(0, 3600)),
    Var("PROXWATCH_ALERT_RETRY_MIN_S", 10, "First wait before an alert is sent again after its channel failed; it "
        "doubles with each failure.", _integer(1, 3600)),
    Var("PROXWATCH_ALERT_RETRY_MAX_S", 600, "Longest wait between two tries of one alert.", _integer(1, 86400)),
    Var("PROXWATCH_ALERT_MAX_ATTEMPTS", 12, "Tries of one alert before it is given up; a channel failing this many "
        "times in a row is shown as failing and its alerts get one try each.", _integer(1, 100)),
    Var("PROXWATCH_ALERT_RETENTION_DAYS", 90, "Days decided alert events, finished deliveries and the delivery log "
        "are kept (the hourly `purge_alerts`).", _integer(1, 3650)),
    Var("PROXWATCH_PVE_TOKEN", None, "`servers add` and `servers update`: the API token "
        "`USER@REALM!TOKENID=SECRET` when no `--token`/`--token-file`/`--token-stdin` and no `--user` is given.",
        _secret),
    Var("PROXWATCH_PVE_PASSWORD", None, "`servers add` and `servers update` with `--user`: the PVE password when "
        "no `--password` option is given.", _secret),
    Var("PROXWATCH_USER_PASSWORD", None, "`users add`: the new user's password when no `--password` option is "
        "given.", _secret),
    Var("PROXWATCH_SSH_PASSWORD", None, "`ops ssh-set`: the SSH password when neither `--password` options nor "
        "`--key-file` is given.", _secret),
)}


def env(name: str, repr: bool = True):
    """A settings field read from the variable `name`, with the variable's default (repr=False for
    secrets, so printing the settings never shows them)."""
    return field(default=VARS[name].default, metadata={"env": name}, repr=repr)


# -------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class OperationSettings:
    stale_s: int = env("PROXWATCH_OPERATION_STALE_S")
    pending_timeout_s: int = env("PROXWATCH_OPERATION_PENDING_TIMEOUT_S")
    task_poll_ms: int = env("PROXWATCH_OPERATION_POLL_MS")
    deadline_s: int = env("PROXWATCH_OPERATION_DEADLINE_S")
    ssh_timeout_s: int = env("PROXWATCH_SSH_TIMEOUT_S")


@dataclass(frozen=True)
class GatewaySettings:
    host: str = env("PROXWATCH_GATEWAY_HOST")
    port: int = env("PROXWATCH_GATEWAY_PORT")
    ping_s: int = env("PROXWATCH_GATEWAY_PING_S")
    heartbeat_s: int = env("PROXWATCH_SESSION_HEARTBEAT_S")
    trust_proxy: bool = env("PROXWATCH_GATEWAY_TRUST_PROXY")
    trusted_proxies: tuple = env("PROXWATCH_GATEWAY_TRUSTED_PROXIES")
    public_url: str | None = env("PROXWATCH_GATEWAY_URL")

    @property
    def url(self) -> str:
        """The gateway as a browser on this machine reaches it, unless PROXWATCH_GATEWAY_URL says otherwise."""
        return self.public_url or f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class InventorySettings:
    interval_s: int = env("PROXWATCH_GUEST_INTERVAL")


@dataclass(frozen=True)
class SessionSettings:
    sweep_s: int = env("PROXWATCH_SESSION_SWEEP_S")


@dataclass(frozen=True)
class DashboardSettings:
    email: str | None = env("PROXWATCH_DASHBOARD_EMAIL")
    password: str | None = env("PROXWATCH_DASHBOARD_PASSWORD")
    refresh_s: int = env("PROXWATCH_DASHBOARD_REFRESH")
    reconcile_s: int = env("PROXWATCH_DASHBOARD_RECONCILE")


@dataclass(frozen=True)
class RealtimeSettings:
    events_per_s: int = env("PROXWATCH_REALTIME_EVENTS_PER_S")
    joins_per_s: int = env("PROXWATCH_REALTIME_JOINS_PER_S")


@dataclass(frozen=True)
class CliSecrets:
    """Secrets the command line takes from the environment instead of its arguments (never shown)."""
    pve_token: str | None = env("PROXWATCH_PVE_TOKEN", repr=False)
    pve_password: str | None = env("PROXWATCH_PVE_PASSWORD", repr=False)
    user_password: str | None = env("PROXWATCH_USER_PASSWORD", repr=False)
    ssh_password: str | None = env("PROXWATCH_SSH_PASSWORD", repr=False)


@dataclass(frozen=True)
class AlertSettings:
    group_window_s: int = env("PROXWATCH_ALERT_GROUP_WINDOW_S")
    retry_min_s: int = env("PROXWATCH_ALERT_RETRY_MIN_S")
    retry_max_s: int = env("PROXWATCH_ALERT_RETRY_MAX_S")
    max_attempts: int = env("PROXWATCH_ALERT_MAX_ATTEMPTS")
    retention_days: int = env("PROXWATCH_ALERT_RETENTION_DAYS")


@dataclass(frozen=True)
class RetentionSettings:
    audit_days: int = env("PROXWATCH_AUDIT_RETENTION_DAYS")
    operations_days: int = env("PROXWATCH_OPERATIONS_RETENTION_DAYS")
    raw_days: int = env("PROXWATCH_RAW_RETENTION_DAYS")
    hourly_days: int = env("PROXWATCH_HOURLY_RETENTION_DAYS")
    daily_days: int = env("PROXWATCH_DAILY_RETENTION_DAYS")


@dataclass(frozen=True)
class MetricsSettings:
    host: str = env("PROXWATCH_METRICS_HOST")
    port: int = env("PROXWATCH_METRICS_PORT")
    worker_port: int = env("PROXWATCH_WORKER_METRICS_PORT")
    worker_dir: Path | None = env("PROXWATCH_WORKER_METRICS_DIR")

    @property
    def url(self) -> str:
        """The fleet exporter's endpoint as a scraper on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"


@dataclass(frozen=True)
class Settings:
    home: Path = env("PROXWATCH_HOME")
    xdg_data_home: Path | None = env("XDG_DATA_HOME")
    database_url: str | None = env("DATABASE_URL")
    redis_url: str | None = env("REDIS_URL")
    supabase_url: str | None = env("SUPABASE_URL")
    supabase_anon_key: str | None = env("SUPABASE_ANON_KEY")
    supabase_service_key: str | None = env("SUPABASE_SERVICE_ROLE_KEY")
    secret_key: str | None = env("PROXWATCH_SECRET_KEY")
    jwt_secret: str | None = env("PROXWATCH_JWT_SECRET")
    pg_port: int = env("PROXWATCH_PG_PORT")
    redis_port: int = env("PROXWATCH_REDIS_PORT")
    standin_port: int = env("PROXWATCH_SUPABASE_PORT")
    web_port: int = env("PROXWATCH_WEB_PORT")
    web_host: str = env("PROXWATCH_WEB_HOST")
    default_interval_s: int = env("PROXWATCH_POLL_INTERVAL")
    offline_after: int = env("PROXWATCH_OFFLINE_AFTER")
    status_refresh_s: int = env("PROXWATCH_STATUS_REFRESH")
    timeout_min_ms: int = env("PROXWATCH_TIMEOUT_MIN_MS")
    timeout_max_ms: int = env("PROXWATCH_TIMEOUT_MAX_MS")
    timeout_default_ms: int = 5000
    worker_processes: int = env("PROXWATCH_WORKER_PROCESSES")
    worker_threads: int = env("PROXWATCH_WORKER_THREADS")
    worker_db_pool: int = env("PROXWATCH_WORKER_DB_POOL")
    poll_batch: int = env("PROXWATCH_POLL_BATCH")
    pve_ca_file: str | None = env("PROXWATCH_PVE_CA_FILE")
    operations: OperationSettings = field(default_factory=OperationSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    inventory: InventorySettings = field(default_factory=InventorySettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    cli_secrets: CliSecrets = field(default_factory=CliSecrets, repr=False)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)

    @property
    def embedded(self) -> bool:
        """True when proxwatch must start its own Postgres (DATABASE_URL unset)."""
        return not self.database_url


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost); False for any
    other, for 0.0.0.0 / :: (every interface) and for none (a server's default: every interface)."""
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_home(xdg_data_home: Path | None = None) -> Path:
    """Where embedded mode keeps its data when PROXWATCH_HOME is unset.

    A normal user gets ~/.local/share/proxwatch ($XDG_DATA_HOME/proxwatch). Root gets
    /var/lib/proxwatch: Postgres refuses to run as root, so the embedded server runs as the
    'postgres' user, which cannot enter /root.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/proxwatch")
    return (xdg_data_home or Path(os.path.expanduser("~")) / ".local" / "share") / "proxwatch"


def load() -> Settings:
    """Every variable read and checked now; SettingsError with one sentence for the first bad one."""
    s = _build(Settings)
    return s if s.home else replace(s, home=default_home(s.xdg_data_home))


def _build(cls):
    """A settings dataclass from the environment: env() fields read their variable, sections recurse."""
    values = {}
    for f in fields(cls):
        if "env" in f.metadata:
            values[f.name] = VARS[f.metadata["env"]].read()
        elif f.default_factory is not MISSING and is_dataclass(f.default_factory):
            values[f.name] = _build(f.default_factory)
    return cls(**values)


def child_environment(**values: str) -> dict[str, str]:
    """The environment of a process proxwatch starts: this one's, with `values` set. The one place
    besides the variables above that touches os.environ (a copy, never a read of configuration)."""
    return {**os.environ, **values}


def export(name: str, value: str, default_only: bool = False) -> None:
    """Set a variable for this process and the ones it starts — for libraries that read their own
    (PYTHONUNBUFFERED, prometheus-client's PROMETHEUS_MULTIPROC_DIR)."""
    if default_only:
        os.environ.setdefault(name, value)
    else:
        os.environ[name] = value


def markdown_table() -> str:
    """The README's configuration table: every variable, its default, what it does."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for v in VARS.values():
        default = v.default_text if v.default_text.startswith("`") or v.default_text == "unset" \
            else f"`{v.default_text}`"
        rng = getattr(v.parse, "range", None)
        extra = f" ({rng[0]}–{rng[1]})" if rng and v.parse is not _PORT else ""
        rows.append(f"| `{v.name}` | {default} | {v.help}{extra} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
