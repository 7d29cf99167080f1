"""The Alerts page, the open-problems banner and the fleet's silenced line in Streamlit's AppTest,
against a real stand-in and a real, seeded database (reads and writes with the user's JWT)."""

from __future__ import annotations

from tests.support.alerting import DASH_PASSWORD as PASSWORD, seed_alerts
from tests.support.seed import ALICE, BOB
from tests.support.streamlit import APP, DASHBOARD, app_test, sign_in_env
from worker import db
from worker.crypto import Box

PAGE = str(DASHBOARD / "views" / "4_Alerts.py")


def shown(text: str) -> str:
    """Text as the page shows it (dashboard.text.plain escapes Markdown)."""
    return text.replace("\\", "")


def frames(app) -> dict:
    return {tuple(d.value.columns)[:2]: d.value for d in app.dataframe if hasattr(d.value, "columns")}


def test_the_alerts_page_shows_channels_masked_certificates_silences_and_the_log(monkeypatch, standin, fleet, db_url,
                                                                                secret_key):
    seed_alerts(db_url, secret_key, fleet)
    app = app_test(monkeypatch, PAGE, {**sign_in_env(standin, ALICE), "PROXWATCH_SECRET_KEY": None})
    assert not app.error, [e.value for e in app.error]
    # The banner names the open problems, the silenced one marked
    [banner] = [shown(w.value) for w in app.warning]
    assert banner.startswith("2 open problems:")
    assert "pve-beta offline" in banner and "pve-delta/pve1 certificate expiring" in banner
    tables = frames(app)
    channels = tables[("Team", "Name")]
    assert channels["Name"].tolist() == ["ops-hook"] and "****" in channels["URL"].iloc[0]
    assert all(PASSWORD not in str(v) for v in channels.to_numpy().ravel())
    certs = tables[("Server", "Node")]
    assert certs[["Server", "Days left", "Alert"]].values.tolist() == [["pve-delta", 5, "expiring"]]
    log = tables[("When", "Team")]
    assert log["Outcome"].tolist() == ["test-failed"] and "Connection error" in log["Answer"].iloc[0]
    assert any("no PROXWATCH_SECRET_KEY" in c.value for c in app.caption)
    # An admin queues a test message (the worker sends it; the dashboard never holds the URL)
    next(b for b in app.button if b.label == "Send a test").click().run()
    assert any("Test queued" in shown(s.value) for s in app.success)
    with db.connect(db_url) as conn:
        assert conn.execute("select title, state from public.alert_deliveries").fetchone() == \
            {"title": "proxwatch: test message", "state": "pending"}


def test_an_admin_adds_a_channel_from_the_page_encrypted_before_it_leaves(monkeypatch, standin, fleet, db_url,
                                                                         secret_key):
    app = app_test(monkeypatch, PAGE, {**sign_in_env(standin, ALICE), "PROXWATCH_SECRET_KEY": secret_key})
    app.text_input[0].input("team-mail")
    app.text_input[1].input(f"mailtos://alerts:{PASSWORD}@smtp.example.test?to=ops@acme.test")
    next(b for b in app.button if b.label == "Add channel").click().run()
    assert not app.error, [e.value for e in app.error]
    assert any("Added channel team-mail" in shown(s.value) and PASSWORD not in s.value for s in app.success)
    with db.connect(db_url) as conn:
        row = conn.execute("select kind, url_ciphertext, url_masked from public.alert_channels").fetchone()
    assert row["kind"] == "mailtos" and PASSWORD not in row["url_ciphertext"] + row["url_masked"]
    assert PASSWORD in Box(secret_key).open(row["url_ciphertext"])
    # A URL Apprise cannot use is a sentence, and nothing is written
    app.text_input[0].input("bad")
    app.text_input[1].input("nosuchservice://x")
    next(b for b in app.button if b.label == "Add channel").click().run()
    assert any("does not understand" in shown(e.value) for e in app.error)


def test_the_fleet_marks_silenced_servers_and_another_team_sees_none_of_it(monkeypatch, standin, fleet, db_url,
                                                                          secret_key):
    seed_alerts(db_url, secret_key, fleet)
    app = app_test(monkeypatch, APP, sign_in_env(standin, ALICE))
    assert any(shown(c.value).startswith(":material/notifications_off: Silenced: pve-alpha until") for c in app.caption)
    assert any("open problems" in w.value for w in app.warning)
    # bob (globex) sees no banner, no silence, no channel
    app = app_test(monkeypatch, APP, sign_in_env(standin, BOB))
    assert not any("open problem" in w.value for w in app.warning)
    assert not any("Silenced" in c.value for c in app.caption)
    page = app_test(monkeypatch, PAGE, sign_in_env(standin, BOB))
    assert ("Team", "Name") not in frames(page)
    assert not [b for b in page.button if b.label in ("Send a test", "Add channel", "Save rule", "Silence")]
