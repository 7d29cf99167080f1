"""The dashboard for the tests: through Streamlit's AppTest in the test's process (app_test), or
`streamlit run` as its own process for a real browser (streamlit_server)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd
from streamlit import config
from streamlit.testing.v1 import AppTest

from tests.support.processes import ROOT
from tests.support.waiting import free_port, wait_for_http

DASHBOARD = ROOT / "dashboard"
APP = DASHBOARD / "app.py"


def app_test(monkeypatch, script, env: dict[str, str | None], query: dict | None = None,
             address: str | None = "127.0.0.1") -> AppTest:
    """The script run once in AppTest with env set (None: unset) and the page's query parameters,
    checked to raise nothing. `address` is what Streamlit listens on, as `--server.address` sets it
    (embedded mode signs in by itself only on loopback)."""
    config.set_option("server.address", address)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    app = AppTest.from_file(str(script), default_timeout=30)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, app.exception
    return app


def sign_in_env(standin, who: tuple[str, str] | None, url: str | None = None) -> dict[str, str | None]:
    """The dashboard's environment for the stand-in, signed in automatically as who (None: nobody)."""
    return {"SUPABASE_URL": url or standin.url, "SUPABASE_ANON_KEY": standin.anon_key,
            "PROXWATCH_DASHBOARD_EMAIL": who[0] if who else None,
            "PROXWATCH_DASHBOARD_PASSWORD": who[1] if who else None}


@contextlib.contextmanager
def streamlit_server(standin, who: tuple[str, str], name: str, app=APP):
    """`streamlit run dashboard/app.py` (or another `app` script: a benchmark's baseline) on a free
    port, signed in as who, with its own HOME under .home/<name> (its log: streamlit.log there).
    Yields the dashboard's URL once it answers."""
    home = ROOT / ".home" / name
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home / "tmp"), "PYTHONPATH": str(ROOT),
           "SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": standin.anon_key,
           "PROXWATCH_DASHBOARD_EMAIL": who[0], "PROXWATCH_DASHBOARD_PASSWORD": who[1],
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(home / "streamlit.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--client.toolbarMode", "minimal"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/_stcore/health", 60, proc=proc, log=home / "streamlit.log", name="streamlit")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _TableText(HTMLParser):
    """The header and body cells' text of each <table> in an HTML body, and each cell's style."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"head": [], "rows": [], "styles": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
            self.tables[-1]["styles"].append([])
        elif tag in ("th", "td") and self.tables:
            self._cell = []
            if tag == "td":
                self.tables[-1]["styles"][-1].append(dict(attrs).get("style") or "")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None and self.tables:
            text, table = "".join(self._cell), self.tables[-1]
            (table["head"] if tag == "th" else table["rows"][-1]).append(text)
            self._cell = None


def html_tables(app: AppTest) -> list[pd.DataFrame]:
    """The tables the page drew as HTML (st.html), each as a frame of its cells' text as a person
    reads it (entities decoded); `frame.attrs["styles"]` holds each body cell's inline style."""
    frames = []
    for element in app.get("html"):
        parser = _TableText()
        parser.feed(element.proto.body)
        for table in parser.tables:
            rows = [r for r in table["rows"] if r]
            frame = pd.DataFrame(rows, columns=table["head"])
            frame.attrs["styles"] = [s for s in table["styles"] if s]
            frames.append(frame)
    return frames
