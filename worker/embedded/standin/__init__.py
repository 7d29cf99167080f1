"""The embedded stand-in for the Supabase surfaces the dashboard uses (see server.py)."""

from worker.embedded.standin.server import JWTError, StandIn, StandInError, make_keys, verify_jwt

__all__ = ["JWTError", "StandIn", "StandInError", "make_keys", "verify_jwt"]
