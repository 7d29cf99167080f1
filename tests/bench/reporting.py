"""How the benchmarks print what they measured (no benchmark here): percentiles and plain tables.
The stand-in as a process, the seeding and the waiting they share with the tests are in tests/support."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pct(values, p: float) -> float:
    """The p-th percentile (0-100) of values, nearest rank; nan when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def table(title, header, rows):
    """Print rows under a title as right-aligned columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("{:>%d}" % w for w in widths)
    print(f"\n{title}")
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def baseline_tree(revision: str, into: Path) -> Path:
    """worker/ and sql/ of a git revision, extracted under `into` (what its worker needs to run), for a
    benchmark that runs an older revision side by side with the current one."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "worker", "sql"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into
