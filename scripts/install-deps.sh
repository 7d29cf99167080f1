#!/usr/bin/env bash
# Installs everything proxwatch needs on a fresh Debian 12 machine: Debian's packages (as root),
# the Python packages (pip, editable install with the test extra) and the supabase CLI (npm).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

debs=(postgresql redis-server chromium openssh-server)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "proxwatch needs these Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

echo "== pip install -e .[test]"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== npm install (supabase CLI)"
mkdir -p .home
HOME="$PWD/.home" npm install --no-audit --no-fund --loglevel=error >/dev/null
node_modules/.bin/supabase --version >/dev/null
