"""The embedded stand-in for the Supabase surfaces the dashboard uses, served on loopback.

In embedded mode there is no Supabase in front of the database, so this serves the same HTTP
contracts the official clients speak, and nothing more:

- PostgREST RPC, `POST /rest/v1/rpc/<fn>`: the JWT is verified, the function is looked up in
  pg_catalog (schema public only) and run in one transaction as the JWT's role with
  `request.jwt.claims` set, exactly as PostgREST does, so row-level security decides what the
  caller sees. Errors carry PostgREST's JSON shape and HTTP status per SQLSTATE.
- Supabase Auth (GoTrue) password login: `POST /auth/v1/token?grant_type=password|refresh_token`,
  `GET /auth/v1/user`, `POST /auth/v1/logout`. Users live in auth.users with GoTrue's bcrypt hash.
- Realtime `postgres_changes` over the Phoenix WebSocket protocol at `/realtime/v1/websocket`
  (worker/embedded/realtime.py: change capture, filters, row-level security per subscriber).

Keys are HS256 JWTs signed with the project's JWT secret, as Supabase issues them.

Run it with `StandIn(database_url, jwt_secret).start()` from code, or as its own process with
`python -m worker.embedded.standin` (DATABASE_URL, PROXWATCH_JWT_SECRET, PROXWATCH_SUPABASE_PORT).
"""

from __future__ import annotations

from worker.errors import ProxwatchError

import asyncio
import hashlib
import json
import logging
import os
import secrets
import signal
import threading
import time
import uuid
from datetime import datetime, timezone

import bcrypt
import jwt
import psycopg
from aiohttp import web
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker import db
from worker.embedded.standin.common import ROLES, JWTError, bearer, make_keys, verify_jwt
from worker.embedded.standin.realtime import Realtime

log = logging.getLogger("proxwatch.standin")

ACCESS_TOKEN_TTL_S = 3600
# Supabase's default statement timeouts for its API roles.
STATEMENT_TIMEOUT = {"anon": "3s", "authenticated": "8s", "service_role": "60s"}
API_VERSION = "2024-01-01"
# A real bcrypt hash compared against when the e-mail is unknown, so a wrong e-mail takes as long
# as a wrong password and does not reveal which addresses exist.
_DUMMY_HASH = bcrypt.hashpw(b"proxwatch-no-such-user", bcrypt.gensalt(rounds=10))


class StandInError(ProxwatchError):
    """The stand-in could not start."""


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


# ---------------------------------------------------------------------------------------------
# PostgREST: SQLSTATE → HTTP status (docs.postgrest.org, references/errors, "HTTP Status Codes")

_STATUS_EXACT = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "P0001": 400, "42883": 404,
                 "42P01": 404, "42P17": 500}
_STATUS_CLASS = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500,
                 "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500,
                 "F0": 500, "HV": 500, "P0": 500, "XX": 500}


def http_status(sqlstate: str | None, role: str) -> int:
    """PostgREST's mapping; `PTxyz` raises answer status xyz; everything else is 400."""
    code = sqlstate or ""
    if code == "42501":
        return 401 if role == "anon" else 403
    if code in _STATUS_EXACT:
        return _STATUS_EXACT[code]
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    return _STATUS_CLASS.get(code[:2], 400)


def _pgrst(status: int, code: str, message: str, details=None, hint=None, headers=None) -> web.Response:
    return web.json_response({"code": code, "details": details, "hint": hint, "message": message},
                             status=status, headers=headers)


def _jwt_failure(exc: JWTError) -> web.Response:
    # PostgREST: PGRST303 for an expired token, PGRST301 for any other bad token.
    code = "PGRST303" if exc.expired else "PGRST301"
    return _pgrst(401, code, str(exc),
                  headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc}"'})


def _input_args(fn: dict) -> list[tuple[str, str]]:
    """(name, type) of the function's input arguments, in order."""
    names, modes, types = fn["arg_names"], fn["arg_modes"], fn["in_types"]
    if modes:
        names = [n for n, m in zip(names, modes) if m in ("i", "b", "v")]
    names = list(names[:fn["nargs"]]) + [""] * (fn["nargs"] - len(names))
    return list(zip(names, types))


def _matches(fn: dict, given: set[str]) -> bool:
    args = _input_args(fn)
    names = {n for n, _ in args}
    required = {n for n, _ in args[:len(args) - fn["ndefaults"]]}
    return given <= names and required <= given


def _single_json_arg(fn: dict) -> bool:
    args = _input_args(fn)
    return len(args) == 1 and args[0][0] == "" and args[0][1] in ("json", "jsonb")


def build_call(name: str, args: list[tuple[str, str]], returns_set: bool, returns_void: bool,
               whole_body: str | None = None) -> sql.Composed:
    """The RPC statement: named arguments read from the JSON body with their declared types
    (json_to_record, as PostgREST does), the result as JSON text. Identifiers are quoted by
    psycopg.sql; types come from pg_catalog; values are a bound parameter."""
    fn = sql.Identifier("public", name)
    if whole_body:  # one unnamed json/jsonb parameter receives the whole body
        source = sql.SQL("{}(%(body)s::{}) as _r").format(fn, sql.SQL(whole_body))
    elif args:
        call_args = sql.SQL(", ").join(sql.SQL("{} := _a.{}").format(sql.Identifier(n), sql.Identifier(n))
                                       for n, _ in args)
        columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in args)
        source = sql.SQL("json_to_record(%(body)s::json) as _a({}), lateral {}({}) as _r").format(
            columns, fn, call_args)
    else:
        source = sql.SQL("{}() as _r").format(fn)
    if returns_void:
        result = sql.SQL("null::text")
    elif returns_set:
        result = sql.SQL("coalesce(json_agg(_r), '[]')::text")
    else:
        result = sql.SQL("to_json(_r)::text")
    return sql.SQL("select {} as body from {}").format(result, source)


# ---------------------------------------------------------------------------------------------
# The app


class _App:
    def __init__(self, database_url: str, jwt_secret: str, access_token_ttl_s: int = ACCESS_TOKEN_TTL_S):
        self.database_url = database_url
        self.secret = jwt_secret
        self.access_token_ttl_s = access_token_ttl_s
        self.pool: AsyncConnectionPool | None = None
        self.realtime = Realtime(database_url, lambda token: verify_jwt(token, jwt_secret))

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self.apikey_middleware], client_max_size=1024 * 1024)
        app.router.add_post("/rest/v1/rpc/{fn}", self.rpc)
        app.router.add_post("/auth/v1/token", self.token)
        app.router.add_get("/auth/v1/user", self.user)
        app.router.add_post("/auth/v1/logout", self.logout)
        app.router.add_get("/auth/v1/health", self.health)
        app.router.add_get("/realtime/v1/websocket", self.realtime.handle)
        app.on_startup.append(self.open_pool)
        app.on_shutdown.append(self.close_sockets)
        app.on_cleanup.append(self.close_pool)
        return app

    async def open_pool(self, _app) -> None:
        # Connections are checked when taken, so a database restart costs no request an error.
        self.pool = AsyncConnectionPool(self.database_url, min_size=2, max_size=10, open=False,
                                        kwargs={"row_factory": dict_row, "autocommit": False},
                                        check=AsyncConnectionPool.check_connection)
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            await conn.execute(db.q("standin_schema"))
        await self.realtime.start(self.pool)

    async def close_sockets(self, _app) -> None:
        await self.realtime.shutdown()

    async def close_pool(self, _app) -> None:
        await self.realtime.stop()
        if self.pool:
            await self.pool.close()

    @web.middleware
    async def apikey_middleware(self, request: web.Request, handler):
        """Supabase's gateway: every request carries a project API key (header or ?apikey=)."""
        if request.path == "/auth/v1/health":
            return await handler(request)
        key = request.headers.get("apikey") or request.query.get("apikey")
        if not key:
            return web.json_response({"message": "No API key found in request",
                                      "hint": "No `apikey` request header or url param was found."}, status=401)
        try:
            claims = verify_jwt(key, self.secret)
        except JWTError:
            return web.json_response({"message": "Invalid API key",
                                      "hint": "Double check your Supabase `anon` or `service_role` API key."},
                                     status=401)
        if claims["role"] not in ("anon", "service_role"):
            return web.json_response({"message": "Invalid API key"}, status=401)
        request["apikey"] = key
        return await handler(request)

    # -- PostgREST RPC ------------------------------------------------------------------------

    async def rpc(self, request: web.Request) -> web.Response:
        """POST /rest/v1/rpc/<fn>: verify the JWT, find the function, run it as the JWT's role."""
        token = bearer(request) or request["apikey"]
        try:
            claims = verify_jwt(token, self.secret)
        except JWTError as exc:
            return _jwt_failure(exc)
        role = claims["role"]
        if role not in ROLES:
            return _pgrst(401, "PGRST301", f"JWT role {role!r} is not one of {', '.join(ROLES)}")
        profile = request.headers.get("Content-Profile")
        if profile and profile != "public":
            return _pgrst(406, "PGRST106", "The schema must be one of the following: public")

        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _pgrst(400, "PGRST102", "Empty or invalid json")
        if not isinstance(body, dict):
            return _pgrst(400, "PGRST102", "The body must be a JSON object of named arguments")

        name = request.match_info["fn"]
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction():
                    found = await (await conn.execute(db.q("standin_functions"), {"name": name})).fetchall()
                    whole_body = False
                    candidates = [f for f in found if _matches(f, set(body))]
                    if not candidates:
                        candidates = [f for f in found if _single_json_arg(f)]
                        whole_body = bool(candidates)
                    if not candidates:
                        return self._not_found(name, body, found)
                    if len(candidates) > 1:
                        return _pgrst(300, "PGRST203", f"Could not choose the best candidate function between:"
                                      f" {', '.join(self._signature(name, f) for f in candidates)}",
                                      hint="Try renaming the parameters or the function itself in the database"
                                      " so function overloading can be resolved")
                    fn = candidates[0]
                    args = [(n, t) for n, t in _input_args(fn) if n in body]
                    statement = build_call(name, args, fn["returns_set"], fn["returns_void"],
                                           fn["in_types"][0] if whole_body else None)
                    await conn.execute(db.q("standin_request_context"), {
                        "timeout": STATEMENT_TIMEOUT[role], "method": "POST", "path": request.path,
                        "claims": json.dumps(claims), "role": role})
                    row = await (await conn.execute(statement, {"body": raw.decode() if raw.strip() else "{}"})).fetchone()
            except psycopg.Error as exc:
                diag = exc.diag
                status = http_status(exc.sqlstate, role)
                return _pgrst(status, exc.sqlstate or "XX000", diag.message_primary or str(exc).strip(),
                              details=diag.message_detail, hint=diag.message_hint)
        if fn["returns_void"]:
            return web.Response(status=204)
        return web.Response(text=row["body"] if row and row["body"] is not None else "null",
                            content_type="application/json")

    @staticmethod
    def _signature(name: str, fn: dict) -> str:
        return f"public.{name}({', '.join(f'{n} => {t}' for n, t in _input_args(fn))})"

    @staticmethod
    def _not_found(name: str, body: dict, found: list[dict]) -> web.Response:
        keys = sorted(body)
        shown = f"public.{name}({', '.join(keys)})" if keys else f"public.{name} without parameters"
        details = (f"Searched for the function public.{name}"
                   + (f" with parameters {', '.join(keys)}" if keys else " without parameters")
                   + " or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.")
        hint = None
        if found:
            options = ", ".join(f"public.{name}({', '.join(n for n, _ in _input_args(f))})" for f in found)
            hint = f"Perhaps you meant to call the function {options}"
        return _pgrst(404, "PGRST202", f"Could not find the function {shown} in the schema cache", details, hint)

    # -- Supabase Auth ------------------------------------------------------------------------

    @staticmethod
    def _auth_error(request: web.Request, status: int, code: str, message: str, grant: bool = False) -> web.Response:
        """GoTrue's error body: {code, message} for API version 2024-01-01 clients (the official
        ones send the header), the older {code: <status>, error_code, msg} otherwise; token grant
        failures also carry the OAuth2 {error: invalid_grant, error_description}."""
        if request.headers.get("X-Supabase-Api-Version", "") >= API_VERSION:
            body: dict = {"code": code, "message": message}
        else:
            body = {"code": status, "error_code": code, "msg": message}
        if grant:
            body.update({"error": "invalid_grant", "error_description": message})
        return web.json_response(body, status=status, headers={"X-Supabase-Api-Version": API_VERSION})

    @staticmethod
    def _user_json(user: dict) -> dict:
        app_meta = user["raw_app_meta_data"] or {}
        return {
            "id": str(user["id"]), "aud": user["aud"] or "authenticated", "role": user["role"] or "authenticated",
            "email": user["email"], "email_confirmed_at": _iso(user["email_confirmed_at"]), "phone": "",
            "confirmed_at": _iso(user["email_confirmed_at"]), "last_sign_in_at": _iso(user["last_sign_in_at"]),
            "app_metadata": app_meta, "user_metadata": user["raw_user_meta_data"] or {},
            "identities": [], "created_at": _iso(user["created_at"]), "updated_at": _iso(user["updated_at"]),
            "is_anonymous": False,
        }

    def _session(self, request: web.Request, user: dict, session_id: str, refresh_token: str) -> dict:
        now = int(time.time())
        ttl = self.access_token_ttl_s
        user_json = self._user_json(user)
        claims = {
            "iss": f"{request.scheme}://{request.host}/auth/v1", "sub": str(user["id"]), "aud": "authenticated",
            "exp": now + ttl, "iat": now, "email": user["email"], "phone": "",
            "app_metadata": user_json["app_metadata"], "user_metadata": user_json["user_metadata"],
            "role": "authenticated", "aal": "aal1", "amr": [{"method": "password", "timestamp": now}],
            "session_id": session_id, "is_anonymous": False,
        }
        return {
            "access_token": jwt.encode(claims, self.secret, algorithm="HS256"), "token_type": "bearer",
            "expires_in": ttl, "expires_at": now + ttl,
            "refresh_token": refresh_token, "user": user_json,
        }

    @staticmethod
    def _hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    async def token(self, request: web.Request) -> web.Response:
        """POST /auth/v1/token?grant_type=password|refresh_token."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._auth_error(request, 400, "bad_json", "Could not parse request body as JSON")
        grant = request.query.get("grant_type")
        if grant == "password":
            return await self._password_grant(request, body)
        if grant == "refresh_token":
            return await self._refresh_grant(request, body)
        return self._auth_error(request, 400, "validation_failed",
                                "unsupported_grant_type: use grant_type=password or grant_type=refresh_token")

    async def _password_grant(self, request: web.Request, body: dict) -> web.Response:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not email or not isinstance(password, str) or not password:
            return self._auth_error(request, 400, "validation_failed", "An email and a password are required")
        async with self.pool.connection() as conn:
            user = await (await conn.execute(db.q("standin_user_by_email"), {"email": email})).fetchone()
            await conn.rollback()
        stored = (user or {}).get("encrypted_password") or ""
        ok = await asyncio.get_running_loop().run_in_executor(None, _check_password, password, stored)
        if not user or not ok:
            return self._auth_error(request, 400, "invalid_credentials", "Invalid login credentials", grant=True)
        if not user["email_confirmed_at"]:
            return self._auth_error(request, 400, "email_not_confirmed", "Email not confirmed", grant=True)
        session_id = str(uuid.uuid4())
        refresh = secrets.token_urlsafe(24)
        async with self.pool.connection() as conn:
            async with conn.transaction():
                await conn.execute(db.q("standin_insert_session"), {"session_id": session_id, "user_id": user["id"]})
                await conn.execute(db.q("standin_insert_refresh_token"), {
                    "token": self._hash(refresh), "user_id": user["id"], "session_id": session_id, "parent": None})
                marked = await (await conn.execute(db.q("standin_mark_sign_in"), {"user_id": user["id"]})).fetchone()
        user["last_sign_in_at"] = marked["last_sign_in_at"]
        return web.json_response(self._session(request, user, session_id, refresh),
                                 headers={"X-Supabase-Api-Version": API_VERSION})

    async def _refresh_grant(self, request: web.Request, body: dict) -> web.Response:
        refresh = body.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            return self._auth_error(request, 400, "validation_failed", "A refresh_token is required")
        digest = self._hash(refresh)
        async with self.pool.connection() as conn:
            async with conn.transaction():
                taken = await (await conn.execute(db.q("standin_take_refresh_token"), {"token": digest})).fetchone()
                if not taken:
                    known = await (await conn.execute(db.q("standin_refresh_token_revoked"), {"token": digest})).fetchone()
                    user = None
                else:
                    user = await (await conn.execute(db.q("standin_user_by_id"), {"user_id": taken["user_id"]})).fetchone()
                    new_refresh = secrets.token_urlsafe(24)
                    await conn.execute(db.q("standin_insert_refresh_token"), {
                        "token": self._hash(new_refresh), "user_id": taken["user_id"],
                        "session_id": taken["session_id"], "parent": digest})
                    await conn.execute(db.q("standin_touch_session"), {"session_id": taken["session_id"]})
        if not taken:
            if known["known"]:
                return self._auth_error(request, 400, "refresh_token_already_used",
                                        "Invalid Refresh Token: Already Used", grant=True)
            return self._auth_error(request, 400, "refresh_token_not_found",
                                    "Invalid Refresh Token: Refresh Token Not Found", grant=True)
        return web.json_response(self._session(request, user, str(taken["session_id"]), new_refresh),
                                 headers={"X-Supabase-Api-Version": API_VERSION})

    def _user_claims(self, request: web.Request) -> dict | web.Response:
        try:
            claims = verify_jwt(bearer(request) or "", self.secret)
        except JWTError as exc:
            return self._auth_error(request, 403, "bad_jwt", f"invalid JWT: {exc}")
        if not claims.get("sub") or not claims.get("session_id"):
            return self._auth_error(request, 403, "bad_jwt", "invalid JWT: it is not a user's access token")
        return claims

    async def user(self, request: web.Request) -> web.Response:
        """GET /auth/v1/user: the signed-in user of the bearer token."""
        claims = self._user_claims(request)
        if isinstance(claims, web.Response):
            return claims
        async with self.pool.connection() as conn:
            user = await (await conn.execute(db.q("standin_user_by_id"), {"user_id": claims["sub"]})).fetchone()
            session = await (await conn.execute(db.q("standin_session_exists"),
                                                {"session_id": claims["session_id"]})).fetchone()
        if not user:
            return self._auth_error(request, 403, "user_not_found", "User from sub claim in JWT does not exist")
        if not session["found"]:
            return self._auth_error(request, 403, "session_not_found",
                                    "Session from session_id claim in JWT does not exist")
        return web.json_response(self._user_json(user), headers={"X-Supabase-Api-Version": API_VERSION})

    async def logout(self, request: web.Request) -> web.Response:
        """POST /auth/v1/logout?scope=global|local|others: revoke sessions and their refresh tokens."""
        claims = self._user_claims(request)
        if isinstance(claims, web.Response):
            return claims
        scope = request.query.get("scope", "global")
        if scope not in ("global", "local", "others"):
            return self._auth_error(request, 400, "validation_failed",
                                    f"Unsupported logout scope {scope!r}: use global, local or others")
        async with self.pool.connection() as conn:
            async with conn.transaction():
                await conn.execute(db.q("standin_logout"), {"user_id": claims["sub"], "scope": scope,
                                                            "session_id": claims["session_id"]})
        return web.Response(status=204)

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"name": "proxwatch stand-in (GoTrue API)", "version": "embedded",
                                  "description": "password login for the embedded dashboard"})


def _check_password(password: str, stored: str) -> bool:
    """bcrypt check; without a stored hash the work is done anyway and the answer is no."""
    if not stored:
        bcrypt.checkpw(password.encode(), _DUMMY_HASH)
        return False
    try:
        return bcrypt.checkpw(password.encode(), stored.encode())
    except ValueError:  # not a bcrypt hash
        return False


# ---------------------------------------------------------------------------------------------
# Running it


class StandIn:
    """The stand-in on its own event loop in a daemon thread.

    >>> standin = StandIn(database_url, jwt_secret).start()
    >>> standin.url, standin.anon_key
    ... standin.stop()
    """

    def __init__(self, database_url: str, jwt_secret: str, host: str = "127.0.0.1", port: int = 0,
                 access_token_ttl_s: int = ACCESS_TOKEN_TTL_S):
        self.database_url = database_url
        self.jwt_secret = jwt_secret
        self.access_token_ttl_s = access_token_ttl_s
        self.host = host
        self.port = port
        keys = make_keys(jwt_secret)
        self.anon_key = keys["anon_key"]
        self.service_key = keys["service_key"]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> "StandIn":
        """Start serving; returns once the port is listening (StandInError if it cannot)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="proxwatch-standin", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise StandInError(f"the Supabase stand-in did not start within {timeout:.0f} s")
        if failure:
            raise StandInError(f"the Supabase stand-in could not start on {self.host}:{self.port}: {failure[0]}") \
                from failure[0]
        return self

    async def _serve(self) -> None:
        self._runner = web.AppRunner(_App(self.database_url, self.jwt_secret, self.access_token_ttl_s).build(),
                                     access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
        self._thread = None

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    """`python -m worker.embedded.standin`: serve until SIGINT/SIGTERM."""
    from worker.settings import SettingsError, env_int

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    database_url = os.environ.get("DATABASE_URL")
    secret = os.environ.get("PROXWATCH_JWT_SECRET")
    try:
        port = env_int("PROXWATCH_SUPABASE_PORT", 54321, 1024, 65535)
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    if not database_url or not secret:
        raise SystemExit("Set DATABASE_URL and PROXWATCH_JWT_SECRET to run the Supabase stand-in"
                         " (`proxwatch up` starts it for you in embedded mode).")
    standin = StandIn(database_url, secret, port=port)
    try:
        standin.start()
    except StandInError as exc:
        raise SystemExit(str(exc)) from None
    log.info("Supabase stand-in listening on %s", standin.url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    standin.stop()
