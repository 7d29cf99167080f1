"""proxwatch dashboard: the entry point. Runs the page chosen in the sidebar — Fleet (the home page),
Guests, Connections, Operations, Alerts — each titled for what it shows (dashboard/session.py lists them;
the scripts are in dashboard/views/).

Run: `streamlit run dashboard/app.py` with SUPABASE_URL and SUPABASE_ANON_KEY set (`proxwatch up`
does it, and signs the local admin in through PROXWATCH_DASHBOARD_EMAIL / _PASSWORD).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project root.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboard import session  # noqa: E402

session.navigation().run()
