"""Supabase Auth (GoTrue) for the stand-in: password login and the session endpoints the
official client calls.

- `POST /auth/v1/token?grant_type=password|refresh_token`: a user of auth.users (GoTrue's bcrypt
  hash, confirmed e-mail) gets an access token (an HS256 JWT with role `authenticated`, signed
  with the project's JWT secret) and a refresh token; refresh tokens are stored hashed and used
  once, as GoTrue does.
- `GET /auth/v1/user`, `POST /auth/v1/logout?scope=global|local|others`, `GET /auth/v1/health`.

Error bodies follow the client's `X-Supabase-Api-Version`, so the official client raises the same
errors it raises against Supabase.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from datetime import datetime, timezone

import bcrypt
import jwt
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from worker import db
from worker.embedded.standin.common import JWTError, bearer, verify_jwt

ACCESS_TOKEN_TTL_S = 3600
API_VERSION = "2024-01-01"
# A real bcrypt hash compared against when the e-mail is unknown, so a wrong e-mail takes as long
# as a wrong password and does not reveal which addresses exist.
_DUMMY_HASH = bcrypt.hashpw(b"proxwatch-no-such-user", bcrypt.gensalt(rounds=10))


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


class Auth:
    """The /auth/v1 routes; `pool` is set by the server once the database pool is open."""

    def __init__(self, jwt_secret: str, access_token_ttl_s: int = ACCESS_TOKEN_TTL_S):
        self.secret = jwt_secret
        self.access_token_ttl_s = access_token_ttl_s
        self.pool: AsyncConnectionPool | None = None

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
        user = None
        if _storable(email):   # an e-mail the database cannot hold (NUL, not UTF-8) belongs to nobody
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


BCRYPT_MAX_BYTES = 72


def _storable(text: str) -> bool:
    if len(text) > 1024 or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_password(password: str, stored: str) -> bool:
    """bcrypt check; the same work and the same "no" whether the e-mail is known or not, whatever
    the password: without a stored hash a dummy one is checked; a password longer than bcrypt's 72
    bytes (GoTrue refuses those as invalid credentials) or one that is not valid UTF-8 is checked
    against the dummy too and is never right."""
    secret = password.encode("utf-8", "surrogatepass")
    if not stored or len(secret) > BCRYPT_MAX_BYTES or secret != password.encode("utf-8", "replace"):
        bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], _DUMMY_HASH)
        return False
    try:
        return bcrypt.checkpw(secret, stored.encode())
    except ValueError:  # not a bcrypt hash
        return False

