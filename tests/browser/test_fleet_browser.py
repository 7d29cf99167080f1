"""The fleet page with a realistic fleet, in Chromium: 120 servers over three tenants (seed_large_fleet),
searched by name, filtered by status and tenant, sorted by a column, paged, each row with its
heartbeat strip; then one server's chart over the last hour (every poll) and its CSV download; then a
server with the demo's simulated history: the uptime column over 30 d (marked), its 30 d and 1 y charts
in day buckets under the "simulated" note. Leaves fleet-controls.png, chart-1h.png, fleet-uptime.png,
chart-30d.png and chart-1y.png in tests/browser/screenshots/."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.support.browser import SHOTS
from dashboard.timefmt import local_datetime
from tests.support.seed import OPS, backfill_simulated, large_fleet_status, seed_large_fleet
from tests.support.streamlit import streamlit_server

SERVERS = 120
POLLS = 300  # one every 10 s: the last 50 minutes (clear of the hour's edge while the test runs)


@pytest.fixture
def fleet(db_url):
    return seed_large_fleet(db_url, SERVERS, polls=POLLS)


@pytest.fixture
def dashboard(standin, fleet):
    with streamlit_server(standin, OPS, "browser-fleet") as url:
        yield url


def _column(table, title: str) -> list[str]:
    """A column of the table on screen, top to bottom."""
    header = table.locator("thead th").all_inner_texts()
    column = [h.strip() for h in header].index(title)
    return [row.locator("td, th").nth(column).inner_text().strip() for row in table.locator("tbody tr").all()]


def _names(table) -> list[str]:
    """The Server column of the table on screen, top to bottom."""
    return _column(table, "Server")


def _choose(page, label: str, option: str) -> None:
    """Pick an option of a Streamlit selectbox or multiselect by its label: type it, then Enter."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.fill(option)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def test_a_large_fleet_is_searched_filtered_sorted_and_paged_in_chromium(dashboard, browser, fleet):
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    page.goto(dashboard)
    table = page.locator('table.pw-fleet').first
    expect(table).to_be_visible(timeout=45_000)
    caption = page.get_by_text("Servers 1–50 of 120")
    expect(caption).to_be_visible(timeout=30_000)
    # Given the first page, by tenant then name: 50 rows, each with its heartbeat strip
    assert len(_names(table)) == 50
    expect(table.get_by_text("last 30: 0 ok, 30 failed · latest failed").first).to_be_attached()

    # When the second page and then the last one are asked for
    page.get_by_label("Page", exact=True).fill("3")
    page.get_by_label("Page", exact=True).press("Enter")
    expect(page.get_by_text("Servers 101–120 of 120 · page 3 of 3")).to_be_visible(timeout=20_000)
    assert len(_names(table)) == 20

    # When searching by name: only the matching servers, from page 1 again
    page.get_by_label("Search", exact=True).fill("nyc-")
    page.get_by_label("Search", exact=True).press("Enter")
    expect(page.get_by_text("Servers 1–30 of 30 matching (120 in all)")).to_be_visible(timeout=20_000)
    assert all(name.startswith("nyc-") for name in _names(table))

    # When filtering by status offline as well: every tenth server, of those (nyc-0020, nyc-0040, …)
    _choose(page, "Status", "offline")
    offline_nyc = sorted(n for n in fleet if n.startswith("nyc-") and large_fleet_status(int(n[-4:])) == "offline")
    expect(page.get_by_text(f"Servers 1–{len(offline_nyc)} of {len(offline_nyc)} matching")).to_be_visible(
        timeout=20_000)
    assert sorted(_names(table)) == offline_nyc
    expect(table.get_by_text("● online")).to_have_count(0)

    # When the search is cleared and the tenant filter added: offline servers of tenant "south" only
    page.get_by_label("Search", exact=True).fill("")
    page.get_by_label("Search", exact=True).press("Enter")
    _choose(page, "Tenant", "south")
    south_offline = sorted(n for i, n in enumerate(sorted(fleet, key=lambda n: int(n[-4:])), start=1)
                           if i % 3 == 2 and large_fleet_status(i) == "offline")
    expect(page.get_by_text(f"Servers 1–{len(south_offline)} of {len(south_offline)} matching")).to_be_visible(
        timeout=20_000)
    assert sorted(_names(table)) == south_offline

    # When the filters go and the table is sorted by name, descending: the last names first
    page.get_by_role("button", name="Clear all").first.click()
    page.get_by_role("button", name="Clear all").first.click()
    expect(page.get_by_text("Servers 1–50 of 120 ·")).to_be_visible(timeout=20_000)
    _choose(page, "Sort by", "Server")
    page.get_by_text("Descending", exact=True).click()
    expected = sorted(fleet, key=str.lower, reverse=True)[:50]
    page.wait_for_function("""(first) => {
        const cells = [...document.querySelectorAll('table.pw-fleet tbody tr')];
        return cells.length === 50 && cells[0].innerText.includes(first); }""", arg=expected[0], timeout=20_000)
    assert _names(table) == expected
    page.screenshot(path=str(SHOTS / "fleet-controls.png"), full_page=False)

    # When sorting by average latency, ascending: the fastest first, servers without a figure last
    page.get_by_text("Descending", exact=True).click()
    _choose(page, "Sort by", "Avg latency")
    page.wait_for_function("""() => {
        const rows = [...document.querySelectorAll('table.pw-fleet tbody tr')];
        const ms = rows.map(r => [...r.querySelectorAll('td')].map(c => c.innerText))
                       .map(cells => cells.find(c => / ms$/.test(c))).filter(Boolean).map(c => parseInt(c));
        return ms.length === 50 && ms.every((v, i) => i === 0 || ms[i - 1] <= v); }""", timeout=20_000)


def test_a_servers_last_hour_shows_every_poll_and_downloads_as_csv(dashboard, browser, fleet):
    page = browser.new_page(viewport={"width": 1440, "height": 2000})
    page.goto(dashboard)
    expect(page.locator('table.pw-fleet').first).to_be_visible(timeout=45_000)
    # Given a degraded server (its every third poll failed)
    name = "ams-0021"
    assert large_fleet_status(21) == "degraded"
    page.get_by_label("Search", exact=True).fill(name)  # the server picker offers the page's servers
    page.get_by_label("Search", exact=True).press("Enter")
    expect(page.get_by_text("Servers 1–1 of 1 matching")).to_be_visible(timeout=20_000)
    _choose(page, "Server", f"{name} · west")
    expect(page.get_by_text(f"{name} — last 24 hours")).to_be_visible(timeout=20_000)
    # When the 1 h range is chosen
    page.get_by_role("radio", name="1 h", exact=True).click()
    expect(page.get_by_text(f"{name} — last hour")).to_be_visible(timeout=20_000)
    # Then each poll is there: all of the hour, two in three answered
    expect(page.get_by_text("Each poll of the last hour")).to_be_visible(timeout=20_000)
    metrics = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
    assert f"{POLLS:,}" in metrics and "66.7 %" in metrics, metrics
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    expect(chart.locator("canvas, svg").first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(800)  # let vega finish drawing before the picture
    page.screenshot(path=str(SHOTS / "chart-1h.png"), full_page=True)
    # And the CSV holds the polls shown, one line each
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    lines = open(download.value.path()).read().splitlines()
    assert lines[0] == "scheduled_at_local,success,response_time_ms,error_kind"
    assert len(lines) == POLLS + 1 and sum(",False," in line for line in lines) == POLLS // 3


def _percent(cell: str) -> float | None:
    return None if cell == "–" else float(cell.split(" %")[0])


def _download(page) -> list[str]:
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    return open(download.value.path()).read().splitlines()


def test_uptime_and_the_30_day_and_year_charts_read_the_demos_backfill_in_day_buckets(dashboard, browser, fleet,
                                                                                       db_url):
    # Given a server with 30 days of the demo's simulated history beside 119 with real polls only
    name = "ams-0001"
    until = backfill_simulated(db_url, [fleet[name]], days=30, ok=0.97)
    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    page.goto(dashboard)
    table = page.locator('table.pw-fleet').first
    expect(table).to_be_visible(timeout=45_000)
    expect(page.get_by_text("Servers 1–50 of 120")).to_be_visible(timeout=30_000)
    # Then the uptime column shows the last 24 h: a figure for each polled server, "–" for the rest
    cells = _column(table, "Uptime 24 h")
    assert len(cells) == 50 and all(c == "–" or c.endswith("%") or c.endswith("†") for c in cells), cells
    assert any(c.startswith("100.0 %") for c in cells) and any(c.startswith("0.0 %") for c in cells), cells

    # When the uptime range is 30 d and the table is sorted by it: worst first, no figure last
    _choose(page, "Uptime over", "30 d")
    expect(table.locator("thead th").filter(has_text="Uptime 30 d")).to_have_count(1, timeout=20_000)
    _choose(page, "Sort by", "Uptime")
    page.wait_for_function("""() => {
        const head = [...document.querySelectorAll('table.pw-fleet thead th')].map(h => h.innerText.trim());
        const i = head.indexOf('Uptime 30 d');
        const rows = [...document.querySelectorAll('table.pw-fleet tbody tr')];
        const v = rows.map(r => r.querySelectorAll('td, th')[i].innerText.trim());
        const n = v.filter(c => c !== '–').map(c => parseFloat(c));
        return rows.length === 50 && n.length > 0 && v.slice(n.length).every(c => c === '–')
               && n.every((x, j) => j === 0 || n[j - 1] <= x); }""", timeout=20_000)
    values = [_percent(c) for c in _column(table, "Uptime 30 d")]
    assert values[0] == 0.0  # an offline server: none of its polls answered

    # And the backfilled server's figure is marked as counting simulated history
    page.get_by_label("Search", exact=True).fill(name)
    page.get_by_label("Search", exact=True).press("Enter")
    expect(page.get_by_text("Servers 1–1 of 1 matching")).to_be_visible(timeout=20_000)
    [cell] = _column(table, "Uptime 30 d")
    assert cell.endswith(" %  †") or cell.endswith(" % †"), cell
    assert 90 <= _percent(cell) < 100, cell
    expect(page.get_by_text("† The uptime over 30 d counts simulated history")).to_be_visible()
    page.screenshot(path=str(SHOTS / "fleet-uptime.png"), full_page=False)

    # When its 30 d chart is opened
    _choose(page, "Server", f"{name} · north")
    page.get_by_role("radio", name="30 d", exact=True).click()
    expect(page.get_by_text(f"{name} — last 30 days")).to_be_visible(timeout=20_000)
    # Then it is drawn in day buckets, under the note that it is simulated before the backfill's end
    expect(page.get_by_text("Per UTC day")).to_be_visible(timeout=20_000)
    note = f"Simulated history before {local_datetime(until)}, from the demo's backfill."
    expect(page.get_by_text(note)).to_be_visible()
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    expect(chart.locator("canvas, svg").first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(800)  # let vega finish drawing before the picture
    chart.screenshot(path=str(SHOTS / "chart-30d.png"))
    page.screenshot(path=str(SHOTS / "chart-30d-page.png"), full_page=True)
    # And its CSV holds the 30 days, each a day bucket with polls
    lines = _download(page)
    assert lines[0] == "bucket,start_local,start_utc,success_rate_pct,avg_response_ms,attempts"
    assert len(lines) == 31 and all(line.startswith("day,") for line in lines[1:])
    assert all(not line.endswith(",0") for line in lines[2:]), lines  # the first day may start at midnight

    # When the year is chosen: 366 day buckets, those before the backfill empty (no data, not 100 %)
    page.get_by_role("radio", name="1 y", exact=True).click()
    expect(page.get_by_text(f"{name} — last year")).to_be_visible(timeout=20_000)
    expect(page.get_by_text("Per UTC day")).to_be_visible(timeout=20_000)
    expect(page.get_by_text(note)).to_be_visible()
    page.wait_for_timeout(800)
    page.locator('[data-testid="stVegaLiteChart"]').first.screenshot(path=str(SHOTS / "chart-1y.png"))
    lines = _download(page)
    assert len(lines) == 367 and all(line.startswith("day,") for line in lines[1:])
    assert sum(line.endswith(",,,0") for line in lines[1:]) >= 366 - 31
    expect(page.locator('[data-testid="stAlertContentError"]')).to_have_count(0)
