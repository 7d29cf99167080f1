#!/usr/bin/env bash
# Runs the test suite. pytest's exit code 5 (no test collected) is a failure here: a suite that
# collects nothing tests nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .home/tmp
export HOME="$PWD/.home" TMPDIR="$PWD/.home/tmp"
python3 -m pytest "$@"
code=$?
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$code"
