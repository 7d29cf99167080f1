"""This browser session and the chrome every page shares: the configuration, the signed-in supabase
client, sign-in and sign-out, the page header, the pages in the sidebar and links between them, and
the guard that turns an unexpected error into a sentence.

One client per Streamlit session (kept in st.session_state), never a global: each browser session
has its own user and JWT. Sessions live in that client's memory only; no token is written anywhere.
"""

from __future__ import annotations

import functools
import html
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import streamlit as st
from supabase import Client, ClientOptions, create_client
from supabase_auth.errors import AuthApiError, AuthError

from dashboard import alerts_ui, live, tables
from dashboard.data import DataError, unreachable
from dashboard.text import plain
from worker import settings
from worker.settings import SettingsError

log = logging.getLogger("proxwatch.dashboard")

SESSION_KEY = live.CLIENT_KEY
SIGNED_OUT_KEY = "proxwatch_signed_out"

# The pages in the sidebar, in order: script (relative to dashboard/) → title. The first is the
# home page, at the app's root URL; the others at /<title> (/Guests, /Connections?filter=all, …).
# Not in dashboard/pages/: Streamlit would list that folder itself, with the entry script as "app".
PAGES = {
    "views/0_Fleet.py": "Fleet",
    "views/1_Guests.py": "Guests",
    "views/2_Connections.py": "Connections",
    "views/3_Operations.py": "Operations",
    "views/4_Alerts.py": "Alerts",
}
FLEET_PAGE, GUESTS_PAGE, CONNECTIONS_PAGE, OPERATIONS_PAGE, ALERTS_PAGE = PAGES

BASE_CSS = ".block-container { padding-top: 2.2rem; max-width: 1500px; }" + tables.TABLE_CSS


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Config:
    url: str                    # SUPABASE_URL: the API (Supabase, or the embedded stand-in)
    anon_key: str               # SUPABASE_ANON_KEY
    email: str | None           # PROXWATCH_DASHBOARD_EMAIL / _PASSWORD: embedded mode's local admin,
    password: str | None        # signed in automatically while the dashboard listens on loopback only
    gateway_url: str            # the console gateway as the browser reaches it
    refresh_s: int              # how often a page rereads while the live connection is down
    address: str | None = None  # what Streamlit listens on (--server.address; unset: every interface)

    @property
    def auto_sign_in(self) -> bool:
        """Sign browsers in as the local admin: only when whoever reaches the dashboard is on this
        machine already (it listens on a loopback address), whatever the environment says."""
        return bool(self.email and self.password) and settings.is_loopback(self.address)

    def check(self) -> None:
        """DataError with a sentence when the API is not configured."""
        if not self.url or not self.anon_key:
            raise DataError("SUPABASE_URL and SUPABASE_ANON_KEY are not set: start the dashboard with"
                            " `proxwatch up` (embedded mode sets them) or set them to your Supabase project.")


def config() -> Config:
    """The dashboard's settings, from worker/settings.py (where every variable is read and checked);
    a bad value is a DataError with the settings' sentence."""
    try:
        s = settings.load()
    except SettingsError as exc:
        raise DataError(str(exc)) from None
    return Config(url=s.supabase_url or "", anon_key=s.supabase_anon_key or "", email=s.dashboard.email,
                  password=s.dashboard.password, gateway_url=s.gateway.url, refresh_s=s.dashboard.refresh_s,
                  address=st.get_option("server.address"))


# ------------------------------------------------------------------------------- the client
API_TIMEOUT_S = 15


@functools.cache
def _tls_context():
    """One TLS context (the CA bundle read once) for every session's HTTP client: left to itself,
    the supabase client builds one per client it makes, ~30-100 ms each, before a page's first read."""
    return httpx.create_ssl_context()


def new_client(cfg: Config) -> Client:
    """A supabase client for one browser session, with an HTTP client of its own (the session's
    headers and JWT are never another session's); only the TLS context is shared."""
    http = httpx.Client(verify=_tls_context(), timeout=API_TIMEOUT_S, follow_redirects=True)
    return create_client(cfg.url, cfg.anon_key,
                         ClientOptions(persist_session=False, auto_refresh_token=True, httpx_client=http))


# ------------------------------------------------------------ the next session's sign-in, ahead
# Embedded mode signs every browser on this machine in as the local admin, and a password sign-in
# is a bcrypt check (~70 ms; several hundred on a busy machine) before a page can read anything. So
# one client is signed in ahead, in the background, for the next browser session to take: a sign-in
# of its own with tokens of its own (nothing of one session is handed to another), and only ever
# for that configured identity (Config.auto_sign_in).
_ahead_lock = threading.Lock()
_ahead: dict[tuple, Future] = {}


def _sign_in_ahead(cfg: Config) -> Future:
    future: Future = Future()

    def run() -> None:
        try:
            client = new_client(cfg)
            sign_in(client, cfg.email, cfg.password)
            future.set_result(client)
        except BaseException as exc:  # noqa: BLE001 - the session that takes it signs in itself
            future.set_exception(exc)

    threading.Thread(target=run, name="proxwatch-sign-in-ahead", daemon=True).start()
    return future


def signed_in_ahead(cfg: Config) -> Client | None:
    """A client signed in as the local admin ahead of time, or None (the caller signs in); either
    way the next one is started."""
    key = (cfg.url, cfg.anon_key, cfg.email, cfg.password)
    with _ahead_lock:
        ready = _ahead.get(key)
        if ready is not None and not ready.done():
            return None   # still signing in: this session signs in by itself
        _ahead[key] = _sign_in_ahead(cfg)
    if ready is None or ready.exception() is not None:
        return None
    return ready.result()


def session_client(state, cfg: Config) -> Client:
    """This Streamlit session's client (created on first use)."""
    client = state.get(SESSION_KEY)
    if client is None:
        client = new_client(cfg)
        state[SESSION_KEY] = client
    return client


def signed_in_email(client: Client) -> str | None:
    try:
        found = client.auth.get_session()
    except AuthError:
        return None
    return found.user.email if found else None


def sign_in(client: Client, email: str, password: str) -> str:
    """Sign in with e-mail and password; returns the user's e-mail (DataError with a sentence otherwise)."""
    try:
        response = client.auth.sign_in_with_password({"email": email.strip(), "password": password})
    except AuthApiError as exc:
        raise DataError(f"Sign-in failed: {exc.message}.") from None
    except (AuthError, httpx.HTTPError) as exc:
        raise unreachable(exc) from None
    return response.user.email


def sign_out(client: Client) -> None:
    try:
        client.auth.sign_out({"scope": "local"})
    except (AuthError, httpx.HTTPError):
        pass  # signed out locally either way


# ------------------------------------------------------------------------------- the chrome
def navigation():
    """The pages in the sidebar, titled for what they show (app.py runs the chosen one)."""
    return st.navigation([st.Page(path, title=title, default=True) if path == FLEET_PAGE
                          else st.Page(path, title=title, url_path=title) for path, title in PAGES.items()])


def page_header(title: str, *, tab_title: str | None = None, icon: str = ":material/dns:",
                sidebar: str = "auto", css: str = "") -> None:
    st.set_page_config(page_title=tab_title or f"{title} · proxwatch", page_icon=icon, layout="wide",
                       initial_sidebar_state=sidebar)
    # The style sheet through st.html (a style-only body takes no room): its first use starts the
    # browser loading st.html's code while the page's data is read, so the fleet table (st.html) is
    # laid out as soon as it arrives.
    st.html(f"<style>{BASE_CSS}{css}</style>")
    st.title(title)


def page_link(where, page: str, label: str, icon: str | None = None, query: dict | None = None) -> None:
    """st.page_link (navigation inside the app, the session kept); a plain link when the page is not
    known to this run (a page run on its own, as in tests)."""
    from streamlit.errors import StreamlitAPIException

    try:
        where.page_link(page, label=label, icon=icon, query_params=query)
    except StreamlitAPIException:
        url = "/" + ("" if page == FLEET_PAGE else PAGES[page]) + ("?" + urlencode(query) if query else "")
        where.markdown(f"<a href='{html.escape(url)}' target='_self'>{html.escape(label)}</a>", unsafe_allow_html=True)


def _sign_in_form(client: Client) -> None:
    with st.form("sign-in", width=420):
        st.subheader("Sign in")
        email = st.text_input("E-mail")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                sign_in(client, email, password)
            except DataError as exc:
                st.error(plain(exc))
            else:
                st.session_state.pop(SIGNED_OUT_KEY, None)
                st.rerun()


def _account_bar(client: Client, email: str, cfg: Config) -> None:
    left, right = st.columns([5, 1], vertical_alignment="center")
    if cfg.auto_sign_in and email == cfg.email.strip().lower():
        left.caption(f"Signed in automatically as {plain(email)} because the dashboard only listens on this "
                     f"machine ({plain(cfg.address)}).")
    else:
        left.caption(f"Signed in as {plain(email)}")
    if right.button("Sign out", width="stretch"):
        live.forget(st.session_state)
        sign_out(client)
        # Nothing of this user stays in the session: not the client, nor the last data shown.
        for key in list(st.session_state):
            del st.session_state[key]
        st.session_state[SIGNED_OUT_KEY] = True
        st.rerun()


def signed_in(*, home: bool = False) -> Client | None:
    """This session's client, signed in — embedded mode signs the local admin in by itself, unless
    they just signed out — or None after saying how to sign in. The home page (Fleet) has the
    sign-in form and the "Signed in as … / Sign out" bar; the other pages link to it."""
    try:
        cfg = config()
        cfg.check()
    except DataError as exc:
        st.error(plain(exc))
        return None
    if SESSION_KEY not in st.session_state and cfg.auto_sign_in and not st.session_state.get(SIGNED_OUT_KEY):
        ahead = signed_in_ahead(cfg)
        if ahead is not None:
            st.session_state[SESSION_KEY] = ahead
    client = session_client(st.session_state, cfg)
    email = signed_in_email(client)
    if email is None and cfg.auto_sign_in and not st.session_state.get(SIGNED_OUT_KEY):
        try:
            email = sign_in(client, cfg.email, cfg.password)
        except DataError as exc:
            st.error(plain(exc))
            return None
    if email is None:
        if not home:
            st.info("Sign in on the Fleet page first.")
            page_link(st, FLEET_PAGE, "Go to sign-in", ":material/login:")
            return None
        if st.session_state.get(SIGNED_OUT_KEY):
            st.info("You are signed out.")
        elif cfg.email and cfg.password and not cfg.auto_sign_in:
            st.info(f"Nobody is signed in automatically: the dashboard listens on {plain(cfg.address or 'every address')}, "
                    "not only on this machine. Sign in (the local admin's password is in secrets.json).")
        _sign_in_form(client)
        return None
    if home:
        _account_bar(client, email, cfg)
    return client


def run_page(body, *, what: str = "page", home: bool = False) -> None:
    """Sign in (signed_in), then body(client). An unexpected error is a sentence on the page; the
    traceback goes to the server log."""
    try:
        client = signed_in(home=home)
        if client is not None:
            banner = st.container()       # open problems, at the top of every page: drawn after
            body(client)                  # the page's own data, so that it never holds it up
            with banner:
                alerts_ui.banner(client)
    except Exception as exc:  # shown, and logged with its traceback
        log.exception("%s failed", what)
        st.error(f"The {what} hit an unexpected error: {plain(exc)}")


def silenced_marker(client) -> None:
    """The fleet page's line of silenced servers (dashboard/alerts_ui.py)."""
    alerts_ui.silenced_marker(client)


def read_or_explain(feed: live.LiveFeed, *reads):
    """Each read's answer, in order — or, when the API refuses one, its sentence on the page and None
    (the page stops there; the feed still reruns it when the data moves)."""
    try:
        return [read() for read in reads]
    except DataError as exc:
        st.error(plain(exc))
        live.rerun_on_change(feed)
        return None
