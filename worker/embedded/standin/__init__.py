"""The embedded stand-in for the Supabase surfaces the dashboard uses (see server.py)."""

from worker.embedded.standin.common import JWTError, make_keys, verify_jwt
from worker.embedded.standin.server import StandIn, StandInError

__all__ = ["JWTError", "StandIn", "StandInError", "make_keys", "verify_jwt"]
