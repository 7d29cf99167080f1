"""The pure parts of alerts: which certificate pveproxy serves, how a group of events reads, which
rule applies, and that a channel URL's secrets never reach the stored answer."""

from __future__ import annotations

import pytest

from worker import alerts
from worker.certificates import served_certificate

CA = {"filename": "pve-root-ca.pem", "notafter": 2_000_000_000, "subject": "CN=Proxmox Virtual Environment"}
SELF = {"filename": "pve-ssl.pem", "notafter": 1_900_000_000, "san": ["DNS:pve1.lan"]}
ACME = {"filename": "pveproxy-ssl.pem", "notafter": 1_800_000_000, "san": ["DNS:pve1.example.org"]}


def test_the_served_certificate_is_pveproxys_own_else_the_self_signed_one():
    assert served_certificate([CA, SELF, ACME]) == ACME
    assert served_certificate([ACME, CA, SELF]) == ACME
    assert served_certificate([CA, SELF]) == SELF
    assert served_certificate([CA]) is None and served_certificate(None) is None


def event(kind, subject, problem=True, detail=None):
    return {"kind": kind, "subject": subject, "problem": problem, "detail": detail}


def test_twelve_servers_offline_read_as_one_line_naming_eight():
    title, body, kind = alerts.compose([event("offline", f"pve-{c}") for c in "abcdefghijkl"])
    assert body == "12 servers went offline: pve-a, pve-b, pve-c, pve-d, pve-e, pve-f, pve-g, pve-h, … and 4 more"
    assert title == "proxwatch: 12 servers went offline" and kind == "failure"


def test_one_server_gets_its_error_and_mixed_groups_say_each_kind():
    title, body, kind = alerts.compose([event("offline", "pve1", detail="connection refused"),
                                        event("recovered", "pve2", problem=False)])
    assert body.splitlines() == ["1 server went offline: pve1", "  connection refused", "1 server is back online: pve2"]
    assert title.endswith("(+1 more kinds)")
    assert alerts.compose([event("recovered", "pve2", problem=False)])[2] == "success"


def test_the_most_specific_rule_wins():
    team = {"server_id": None, "tag": None, "offline": True, "degraded": True}
    tagged = {"server_id": None, "tag": "lab", "offline": False, "degraded": False}
    own = {"server_id": "s1", "tag": None, "offline": True, "degraded": False}
    rules = [team, tagged, own]
    assert alerts.rule_for(rules, "s1", ["lab"]) is own
    assert alerts.rule_for(rules, "s2", ["lab"]) is tagged
    assert alerts.rule_for(rules, "s2", []) is team
    assert alerts.rule_for([], "s2", []) == alerts.DEFAULTS and not alerts.DEFAULTS["degraded"]


@pytest.mark.parametrize("url, secret", [
    ("json://user:pa55-Word@hooks.example.test/path", "pa55-Word"),
    ("mailto://alerts:smtp-Secret@mail.example.test?to=ops@example.test", "smtp-Secret"),
    ("ntfy://user:ntfy-Secret@ntfy.example.test/topic", "ntfy-Secret"),
])
def test_a_channel_url_is_shown_and_answered_masked(url, secret):
    kind, masked = alerts.parse_channel_url(url)
    assert secret not in masked and "****" in masked and kind == url.split("://")[0]
    said = f"Failed to send to {url}: 401 for {secret}"
    assert secret not in alerts.mask(said, alerts._secrets_of(url, masked))


def test_a_url_apprise_cannot_use_is_one_sentence():
    with pytest.raises(alerts.ChannelUrlError, match="does not understand this nosuch:// URL"):
        alerts.parse_channel_url("nosuch://x")


def test_a_silence_covers_its_server_its_tag_or_the_whole_team():
    server = {"server_id": "s1", "tag": None}
    tag = {"server_id": None, "tag": "lab"}
    team = {"server_id": None, "tag": None}
    assert alerts.silenced([server], "s1", []) and not alerts.silenced([server], "s2", ["lab"])
    assert alerts.silenced([tag], "s2", ["edge", "lab"]) and not alerts.silenced([tag], "s2", ["edge"])
    assert alerts.silenced([team], "s9", []) and not alerts.silenced([], "s1", ["lab"])
