"""Supabase Realtime's per-project limits, counted the way the real server counts them.

- `RateCounter` mirrors supabase/realtime `lib/realtime/rate_counter/rate_counter.ex`: events are
  added to a running count; every tick (5 s) the count is closed into a bucket that keeps the
  last 12 ticks, and the average is sum(buckets) / len(buckets) / tick seconds — a one-minute
  average once a minute has passed, the average of fewer ticks before. The limit triggers at a
  tick when the average reaches it and releases at the first tick the average is below it: never
  in between, so a burst passes whole until the next tick.
- The quotas and their defaults come from `config/runtime.exs` (TENANT_MAX_EVENTS_PER_SECOND,
  TENANT_MAX_JOINS_PER_SECOND, TENANT_MAX_CHANNELS_PER_CLIENT: 100 each) and `lib/realtime/tenants.ex`
  (`db_events_per_second_rate`, `joins_per_second_rate`: tick 5 s, 12 buckets, measured on :avg).

Ticks are counted lazily (when the counter is read or added to), so no timer runs.

What one socket or one user may cost the stand-in (the README's Realtime section lists them). The
real server bounds a frame (`lib/realtime_web/endpoint.ex`, max_frame_size 5,000,000) and the
memory of each channel process (`config/runtime.exs` WEBSOCKET_MAX_HEAP_SIZE, 50 MB: a process
over it is killed); in Python the equivalent is counted in bytes per socket:

- a frame from the client: at most MAX_FRAME_BYTES (bigger: closed with 1009, read no further);
- a topic: at most MAX_TOPIC_BYTES, since every reply echoes it (longer: closed with 1008);
- what waits to be sent to one socket: at most MAX_QUEUED_BYTES; past it the client is not
  reading, and the connection is dropped at once (its queue freed), never waited for;
- postgres_changes bindings: MAX_BINDINGS_PER_CHANNEL in one join and MAX_BINDINGS_PER_USER over
  every socket of one user (the JWT's `sub`; tokens without one count per role), so one user's
  filters cannot slow the delivery to another. Over either, the join is refused with an error
  reply and the socket stays open.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

MAX_EVENTS_PER_SECOND = 100        # Free plan and the server's default
MAX_JOINS_PER_SECOND = 100
MAX_CHANNELS_PER_CLIENT = 100
TICK_S = 5.0
MAX_FRAME_BYTES = 1 << 20          # 1 MiB (Supabase: 5 MB, for broadcast payloads the stand-in does not serve)
MAX_TOPIC_BYTES = 1024
MAX_QUEUED_BYTES = 8 << 20         # 8 MiB per socket
MAX_BINDINGS_PER_CHANNEL = 100
MAX_BINDINGS_PER_USER = 1000
MAX_BUCKETS = 12


class RateCounter:
    """A count of events averaged per second over the last `buckets` ticks, with a limit."""

    def __init__(self, limit: float, tick_s: float = TICK_S, buckets: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.tick_s = tick_s
        self.clock = clock
        self.count = 0
        self.bucket: deque[int] = deque(maxlen=buckets)
        self.avg = 0.0
        self.triggered = False
        self._next_tick = clock() + tick_s

    def _roll(self) -> None:
        now = self.clock()
        while now >= self._next_tick:
            # rate_counter.ex handle_info(:tick): close the count into the bucket, average, check.
            self.bucket.appendleft(self.count)
            self.count = 0
            self.avg = sum(self.bucket) / len(self.bucket) / self.tick_s
            self.triggered = self.avg >= self.limit
            self._next_tick += self.tick_s
            if len(self.bucket) == self.bucket.maxlen and not any(self.bucket) and now >= self._next_tick:
                # A whole window of nothing: more idle ticks change nothing, skip them.
                self._next_tick += ((now - self._next_tick) // self.tick_s + 1) * self.tick_s

    def add(self, n: int = 1) -> None:
        self._roll()
        self.count += n

    def is_triggered(self) -> bool:
        self._roll()
        return self.triggered
