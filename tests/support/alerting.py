"""Driving statuses through the real worker path for the alert tests: polls of real (fake PVE or
refused) servers written by the worker's Recorder, so incidents — and the outbox rows their trigger
writes — come from the same transaction as in production."""

from __future__ import annotations

from datetime import datetime, timedelta

from worker.polling import PollResult, utcnow

STEP = timedelta(seconds=10)


class Polls:
    """Polls of some servers, all at t0, t0 + 10 s, … (each round's scheduled_at is the next step)."""

    def __init__(self, poller, recorder, server_ids):
        self.poller, self.recorder = poller, recorder
        self.server_ids = [str(s) for s in server_ids]
        self.at = utcnow().replace(microsecond=0) - timedelta(hours=1)

    def round(self, n: int = 1) -> list[PollResult]:
        """n rounds: every server polled once per round, each round written as one batch (as a cycle)."""
        done = []
        for _ in range(n):
            self.at += STEP
            results = [r for r in (self.poller.poll(sid, self.at) for sid in self.server_ids) if r is not None]
            self.recorder.write(results)
            done += results
        return done


def later(seconds: float) -> datetime:
    """A moment `seconds` from now (the drain's and the sender's clock in a test)."""
    return utcnow() + timedelta(seconds=seconds)
