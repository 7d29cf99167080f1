"""What every surface of the stand-in shares: the project's keys and JWTs, and the API roles.

Supabase signs the anon and service_role API keys and every user's access token with the
project's JWT secret (HS256); the stand-in does the same, and each surface (the API key gateway,
RPC, Auth, Realtime) verifies a token with `verify_jwt`, so all of them refuse the same tokens
with the same sentences.
"""

from __future__ import annotations

import time

import jwt
from aiohttp import web

from worker.errors import ProxwatchError

# The roles the API runs as (Supabase's API roles); any other role in a JWT is refused.
ROLES = ("anon", "authenticated", "service_role")
TEN_YEARS_S = 10 * 365 * 24 * 3600


class JWTError(ProxwatchError):
    """The JWT is missing, malformed, badly signed, expired or has no role."""

    def __init__(self, message: str | None = None, expired: bool = False):
        super().__init__(message)
        self.expired = expired


class JoinError(ProxwatchError):
    """Realtime refused to join the channel."""


def make_keys(jwt_secret: str, now: int | None = None) -> dict:
    """The anon and service_role API keys: HS256 JWTs as Supabase issues them, valid ~10 years."""
    iat = int(now if now is not None else time.time())

    def key(role: str) -> str:
        return jwt.encode({"iss": "supabase", "role": role, "iat": iat, "exp": iat + TEN_YEARS_S},
                          jwt_secret, algorithm="HS256")

    return {"anon_key": key("anon"), "service_key": key("service_role")}


def verify_jwt(token: str, secret: str) -> dict:
    """The claims of a token signed by the secret; exp and role are required (JWTError otherwise)."""
    if not token:
        raise JWTError("No JWT was given")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"],
                            options={"require": ["exp"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise JWTError("JWT expired", expired=True) from None
    except jwt.InvalidSignatureError:
        raise JWTError("JWT cannot be verified: the signature does not match") from None
    except jwt.MissingRequiredClaimError:
        raise JWTError("JWT has no exp claim") from None
    except jwt.InvalidTokenError as exc:
        raise JWTError(f"JWT is invalid: {exc}") from None
    if not isinstance(claims.get("role"), str) or not claims["role"]:
        raise JWTError("JWT has no role claim")
    return claims


def bearer(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <jwt>` header, if there is one."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
