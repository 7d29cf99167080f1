"""The embedded stand-in for the Supabase surfaces the dashboard uses: PostgREST RPC (rest.py),
password login (auth.py) and Realtime postgres_changes (realtime.py), served by one aiohttp app
(server.py); `python -m worker.embedded.standin` runs it as its own process (__main__.py)."""

from worker.embedded.standin.common import JWTError, make_keys, verify_jwt
from worker.embedded.standin.server import StandIn, StandInError

__all__ = ["JWTError", "StandIn", "StandInError", "make_keys", "verify_jwt"]
