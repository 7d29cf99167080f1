"""The Streamlit dashboard through AppTest, against a real stand-in and a real, seeded database:
it reads only through the API with the signed-in user's JWT, so each user sees their tenant only."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

from tests.support.seed import ALICE, BOB
from tests.support.standin import running_standin
from tests.support.streamlit import APP, app_test, html_tables, sign_in_env


def run_as(monkeypatch, standin, who, url: str | None = None) -> AppTest:
    return app_test(monkeypatch, APP, sign_in_env(standin, who, url))


def fleet_table(app: AppTest):
    tables = html_tables(app)
    assert len(tables) == 1, [e.value for e in app.error]
    return tables[0]


def shown(markdown: str) -> str:
    """The text a Markdown source shows (names and messages come escaped: dashboard/text.py)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def metrics(app: AppTest) -> dict:
    return {m.label: m.value for m in app.metric}


def test_the_fleet_table_shows_the_servers_with_their_statuses(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, ALICE)
    assert app.title[0].value == "proxwatch"
    table = fleet_table(app)
    assert table["Server"].tolist() == ["pve-alpha", "pve-beta", "pve-delta"]
    assert table["Status"].tolist() == ["● online", "● offline", "● unknown"]
    alpha, beta, delta = (table.iloc[i] for i in range(3))
    assert alpha["24 h success"] == f"{100 * fleet.alpha_successes / fleet.alpha_attempts:.1f} %"
    assert alpha["Nodes"] == "3/3" and alpha["PVE"] == "9.1.4" and alpha["Last check"].endswith("s ago")
    assert "insecure TLS" in beta["Connection"] and "refused" in beta["Last error"]
    assert delta["24 h success"] == "no data" and delta["Last check"] == "never"
    # Uptime over the default 24 h: alpha's polls all lie in the last day, so the same figure; "–" unpolled
    assert alpha["Uptime 24 h"] == alpha["24 h success"] and delta["Uptime 24 h"] == "–"
    counts = metrics(app)
    assert (counts["Online"], counts["Offline"], counts["Unknown"], counts["Degraded"]) == ("1", "1", "1", "0")
    assert not app.error


def test_selecting_a_server_shows_its_summary_figures(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, ALICE)
    # The first server is shown by default.
    figures = metrics(app)
    assert figures["Attempts"] == str(fleet.alpha_attempts)
    assert figures["Success rate"] == f"{100 * fleet.alpha_successes / fleet.alpha_attempts:.1f} %"
    assert figures["Avg response"].endswith(" ms")
    assert any("pve-alpha" in shown(h.value) for h in app.subheader)
    # Choose pve-delta: never polled, so no figures rather than 100 %.
    app.selectbox(key="server").select(fleet.servers["pve-delta"]).run()
    assert not app.exception
    figures = metrics(app)
    assert (figures["Success rate"], figures["Avg response"], figures["Attempts"]) == ("no data", "no data", "0")
    assert any("No polls recorded" in i.value for i in app.info)
    # pve-beta carries its last error as a sentence.
    app.selectbox(key="server").select(fleet.servers["pve-beta"]).run()
    assert any("refused the connection" in w.value for w in app.warning)


def test_a_viewer_of_another_tenant_sees_none_of_acmes_servers(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, BOB)
    table = fleet_table(app)
    assert table["Server"].tolist() == ["pve-gamma"]
    assert table["Status"].tolist() == ["● degraded"]
    assert "via fallback address" in table.iloc[0]["Connection"]
    assert app.selectbox(key="server").options == ["pve-gamma"]
    assert metrics(app)["Attempts"] == "4"


def test_the_empty_state_tells_how_to_add_a_server(monkeypatch, standin, db_url):
    from worker import admin, db
    with db.connect(db_url) as conn:
        admin.add_tenant(conn, "acme")
        admin.add_user(conn, ALICE[0], ALICE[1], "acme", "admin")
    app = run_as(monkeypatch, standin, ALICE)
    assert not html_tables(app)
    assert any("proxwatch servers add" in i.value for i in app.info)


def test_a_wrong_password_is_a_sentence_not_a_traceback(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, (ALICE[0], "wrong-password"))
    assert [shown(e.value) for e in app.error] == ["Sign-in failed: Invalid login credentials."]
    assert not html_tables(app)


def test_without_embedded_credentials_a_sign_in_form_is_shown(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, None)
    assert not html_tables(app)
    app.text_input[0].input(BOB[0])
    app.text_input[1].input(BOB[1])
    app.button[0].click().run()
    assert not app.exception
    assert fleet_table(app)["Server"].tolist() == ["pve-gamma"]


def test_an_unreachable_api_is_a_sentence(monkeypatch, standin, fleet):
    url = standin.url
    standin.stop()  # nothing listens on its address any more
    app = run_as(monkeypatch, standin, ALICE, url=url)
    assert len(app.error) == 1 and "does not answer" in app.error[0].value


def test_signing_out_shows_the_sign_in_form_even_in_embedded_mode(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, ALICE)
    assert fleet_table(app)["Server"].tolist() == ["pve-alpha", "pve-beta", "pve-delta"]
    next(b for b in app.button if b.label == "Sign out").click().run()
    assert not app.exception
    # Not signed in again behind the user's back: the form, and a sentence saying why.
    assert not html_tables(app)
    assert [i.value for i in app.info] == ["You are signed out."]
    app.text_input[0].input(BOB[0])
    app.text_input[1].input(BOB[1])
    next(b for b in app.button if b.label == "Sign in").click().run()
    assert fleet_table(app)["Server"].tolist() == ["pve-gamma"]


def test_a_wrong_password_in_the_form_is_a_sentence(monkeypatch, standin, fleet):
    app = run_as(monkeypatch, standin, None)
    app.text_input[0].input(ALICE[0])
    app.text_input[1].input("not-the-password")
    app.button[0].click().run()
    assert [shown(e.value) for e in app.error] == ["Sign-in failed: Invalid login credentials."]
    assert not html_tables(app)


def test_an_expired_access_token_is_refreshed_without_signing_in_again(monkeypatch, db_url, pw_secrets, fleet):
    import time

    from dashboard import session

    with running_standin(db_url, pw_secrets["jwt_secret"], access_token_ttl_s=2) as short:
        app = run_as(monkeypatch, short, ALICE)
        first = app.session_state[session.SESSION_KEY].auth.get_session().access_token
        time.sleep(3)  # the first access token has expired by now
        app.run()
        assert not app.exception and not app.error, [e.value for e in app.error]
        assert fleet_table(app)["Server"].tolist() == ["pve-alpha", "pve-beta", "pve-delta"]
        assert app.session_state[session.SESSION_KEY].auth.get_session().access_token != first
