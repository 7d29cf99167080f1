"""PostgREST RPC for the stand-in: `POST /rest/v1/rpc/<fn>`, as PostgREST serves it on Supabase.

The dashboard reads only through SQL functions, with the user's JWT, so that row-level security
decides what anyone sees. Here as on Supabase: the JWT is verified, the function is looked up in
pg_catalog (schema public only; named arguments, or one unnamed json/jsonb argument that receives
the whole body) and run in one transaction as the JWT's role with `request.jwt.claims` set and the
role's statement timeout. Errors carry PostgREST's JSON shape and HTTP status per SQLSTATE.
"""

from __future__ import annotations

import json

import psycopg
from aiohttp import web
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from worker import db
from worker.embedded.standin.common import ROLES, JWTError, bearer, verify_jwt

# Supabase's default statement timeouts for its API roles.
STATEMENT_TIMEOUT = {"anon": "3s", "authenticated": "8s", "service_role": "60s"}

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


class Rpc:
    """The RPC route; `pool` is set by the server once the database pool is open."""

    def __init__(self, jwt_secret: str):
        self.secret = jwt_secret
        self.pool: AsyncConnectionPool | None = None

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

