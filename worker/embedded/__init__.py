"""Embedded mode: Postgres, Redis and the Supabase stand-in started by proxwatch itself."""
