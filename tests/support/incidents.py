"""Seeding incidents as the fold records them (`record_incidents`, migration status_fold)."""

from __future__ import annotations

PROBLEM = ("offline", "degraded")


def incident_arrays(changes: list[tuple]) -> dict:
    """The parameters of `record_incidents` for (server id, new status, poll time) changes: an
    offline server's incident carries the poll's error kind and message, a degraded one its reasons."""
    return {
        "server_id": [sid for sid, _, _ in changes],
        "status": [status["connection_status"] for _, status, _ in changes],
        "at": [at for _, _, at in changes],
        "error_kind": [status["health_check_error_kind"] if status["connection_status"] == "offline" else None
                       for _, status, _ in changes],
        "error_message": [status["health_check_error"] if status["connection_status"] in PROBLEM else None
                          for _, status, _ in changes],
    }
