"""The schema every migration adds up to, applied by the real supabase CLI (the session's template
database), compared with the committed snapshot tests/snapshots/schema.txt: tables and columns,
constraints, indexes, row-level security and policies, grants per API role, function signatures,
the Realtime publication and replica identity. A change to the contract shows as a diff in review.

After an intended change, rewrite the snapshot and commit it with the migration:

    PROXWATCH_UPDATE_SNAPSHOT=1 python3 -m pytest tests/integration/test_schema.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from tests.support.schema import dump_schema

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "schema.txt"
REFRESH = "PROXWATCH_UPDATE_SNAPSHOT=1 python3 -m pytest tests/integration/test_schema.py"


def test_the_migrated_schema_matches_the_committed_snapshot(db_url):
    # Given every migration applied by the supabase CLI (db_url is a copy of the template database)
    # When its contract is read from the catalog
    actual = dump_schema(db_url)
    if os.environ.get("PROXWATCH_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(actual)
    # Then it is the committed one, line for line
    expected = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                            "tests/snapshots/schema.txt (committed)", "the migrated database"))
        raise AssertionError(f"the migrated schema differs from the snapshot; if the change is intended, "
                             f"rewrite it with `{REFRESH}` and commit it:\n{diff}")


def test_the_snapshot_leaves_out_what_the_stand_in_installs_at_runtime(db_url, pw_secrets):
    # Given the stand-in's own objects (auth sessions, the Realtime capture triggers) installed
    from tests.support.standin import running_standin

    before = dump_schema(db_url)
    with running_standin(db_url, pw_secrets["jwt_secret"]):
        pass
    # Then the dump does not change
    assert dump_schema(db_url) == before
