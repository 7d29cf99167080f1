"""The demo's simulated history (worker/embedded/demo.py backfill_history): 30 days that read like
each simulated server's character, marked as simulated, written once however often the demo starts."""

from __future__ import annotations

import time

from worker.embedded import demo


def test_the_demo_backfills_30_days_in_character_once_and_marks_them_simulated(add_server, conn):
    # Given the simulated fleet registered in tenant "demo" (addresses do not matter here)
    for i, name in enumerate(demo.HISTORY):
        add_server(name, f"https://127.0.0.1:{9000 + i}", tenant="demo", insecure=True)
    # When the demo starts: every server gets its history
    started = time.monotonic()
    assert demo.backfill_history(conn) == sorted(demo.HISTORY)
    print(f"backfill: {time.monotonic() - started:.2f} s")   # a figure for the report, not an assertion
    rows = {r["name"]: r for r in conn.execute("select * from fleet_overview()")}
    # Then the charts are full for 30 days (a day bucket per day, each with polls) ...
    sid = rows["pve-lab"]["id"]
    month = conn.execute("select connection_history(%s, 720) as h", (sid,)).fetchone()["h"]
    assert month["bucket"] == "day" and all(d["attempts"] > 0 for d in month["hourly"][-30:])
    hour = conn.execute("select connection_history(%s, 1) as h", (sid,)).fetchone()["h"]
    assert hour["bucket"] == "minute" and sum(m["attempts"] for m in hour["hourly"]) > 0
    # ... and each server reads like itself: the flaky branch loses ~40 %, the colo is slow, the
    # lab answers everything, the old one is down now after an outage last week
    assert 50 <= rows["pve-branch"]["uptime_7d"] <= 70
    assert rows["pve-lab"]["uptime_30d"] == 100
    colo = conn.execute("select connection_history(%s, 168) as h", (rows["pve-colo"]["id"],)).fetchone()["h"]
    assert 150 <= colo["summary"]["avgResponseTime"] <= 210
    assert rows["pve-old"]["uptime_24h"] < 95 and rows["pve-old"]["uptime_30d"] < 100
    incidents = conn.execute("select started_at, ended_at, error_kind from incidents i join proxmox_servers s"
                             " on s.id = i.server_id where s.name = 'pve-old' order by started_at").fetchall()
    assert len(incidents) == 2 and incidents[0]["ended_at"] is not None and incidents[1]["ended_at"] is None
    assert (incidents[1]["started_at"] - incidents[0]["started_at"]).days in (6, 7)
    assert all(r["history_simulated_until"] is not None for r in rows.values())
    # When the demo starts again, nothing is backfilled twice
    counts = conn.execute("select (select count(*) from connection_metrics) as raw,"
                          " (select sum(attempts) from connection_metrics_daily) as daily,"
                          " (select count(*) from incidents) as incidents").fetchone()
    assert demo.backfill_history(conn) == []
    assert conn.execute("select (select count(*) from connection_metrics) as raw,"
                        " (select sum(attempts) from connection_metrics_daily) as daily,"
                        " (select count(*) from incidents) as incidents").fetchone() == counts
