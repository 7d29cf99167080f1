"""The real worker (dramatiq's own CLI, same arguments), optionally with measuring probes and/or
ONE proposed product fix applied in memory — for bench_fleet_cycle.py. The product code is not
changed by this file.

    PYTHONPATH=. python3 tests/bench/patched_worker.py worker.broker worker.actors --processes 2 --threads 16

(The shared-SSL-context fix this file once applied in memory has landed in worker/pve.py.)

BENCH_PHASES_DIR=DIR — time the phases of each poll (poll_target query, PVE probe, group-commit
wait in Recorder.record, Recorder.write per batch) and dump the running totals of each worker
process to DIR/phases.<pid>.json every 0.25 s.
"""

import json
import os
import sys
import threading
import time

from worker import polling, pve

PHASES_DIR = os.environ.get("BENCH_PHASES_DIR")
if PHASES_DIR:
    _stats: dict = {}
    _lock = threading.Lock()
    _dumper = {"pid": None}

    def _dump_loop():
        path = os.path.join(PHASES_DIR, f"phases.{os.getpid()}.json")
        while True:
            with _lock:
                text = json.dumps(_stats)
            with open(path + ".tmp", "w") as fh:
                fh.write(text)
            os.replace(path + ".tmp", path)
            time.sleep(0.25)

    def _add(name, seconds, size=None):
        with _lock:
            if _dumper["pid"] != os.getpid():
                _dumper["pid"] = os.getpid()
                threading.Thread(target=_dump_loop, daemon=True).start()
            s = _stats.setdefault(name, {"n": 0, "s": 0.0, "max": 0.0, "rows": 0})
            s["n"] += 1
            s["s"] += seconds
            s["max"] = max(s["max"], seconds)
            if size is not None:
                s["rows"] += size

    def _timed(cls, attr, name, size_of=None):
        original = getattr(cls, attr)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _add(name, time.perf_counter() - start, size_of(args) if size_of else None)
        setattr(cls, attr, wrapper)

    _timed(polling.Poller, "poll", "poll (target+client+probe)")
    _timed(polling.Poller, "target", "  poll_target query (incl. pool wait)")
    _timed(polling.Poller, "_client", "  client lookup/creation")
    _timed(pve.PveClient, "probe", "  PVE probe (2 HTTPS calls)")
    _timed(polling.Recorder, "record", "record (group-commit wait)")
    _timed(polling.Recorder, "write", "Recorder.write (writer thread, per batch)", lambda a: len(a[1]))

if __name__ == "__main__":
    from dramatiq.cli import main

    sys.exit(main())
