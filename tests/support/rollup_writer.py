"""A worker's metric writer that dies between its commit and its fold.

`python -m tests.support.rollup_writer SERVER_ID…` (DATABASE_URL from the environment) writes one
poll per server and hour for the last three hours as the writer thread does (Recorder.write without
the fold), prints "committed", and then waits on standard input until the test kills it: its
rollup deltas stay pending, for the periodic fold_rollup job."""

from __future__ import annotations

import sys
from datetime import timedelta

from worker import db
from worker.polling import PollResult, Recorder, utcnow
from worker.settings import load


def results(server_ids: list[str]) -> list[PollResult]:
    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    return [PollResult(server_id=sid, scheduled_at=hour - timedelta(hours=h), created_at=hour - timedelta(hours=h),
                       success=(i + h) % 3 != 0, response_time_ms=40 + 7 * i + h if (i + h) % 3 != 0 else None,
                       error_kind=None if (i + h) % 3 != 0 else "timeout",
                       error_message=None if (i + h) % 3 != 0 else "The server did not answer in time.")
            for h in range(3) for i, sid in enumerate(server_ids)]


def main() -> None:
    settings = load()
    pool = db.make_pool(settings.database_url, min_size=1, max_size=2)
    Recorder(pool, settings).write(results(sys.argv[1:]), fold=False)
    print("committed", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
