"""Fixtures and collection for the benchmarks (tests/bench is never part of `make test`).

The fixtures pg_server, template_db, db_url, redis_server, secret_key and pw_home come from
tests/conftest.py (a parent conftest, so pytest already loads it for this directory).

The benchmark files are named bench_*.py; pytest collects them when they are named on the
command line, and this hook also collects them for `pytest tests/bench` (make bench).
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
