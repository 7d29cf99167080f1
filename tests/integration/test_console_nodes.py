"""Node shells open only on nodes the server reported — in /cluster/status (operation_nodes) or as
the node of one of its guests — whatever node name a request carries, on every path: the link
(request_console), the gateway's use of it (console_token) and the dashboard's list (console_nodes)."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.seed import add_guest, add_ssh_access, call

REQUEST = "select public.request_console(%s, %s, null, %s) as r"
TAKE = "select public.console_token(%s, true) as info"


@pytest.fixture
def fleet(conn, teams):
    """pve1 reported node pve1 (a guest runs there) and node pve1b (/cluster/status); pve2 nothing yet."""
    add_guest(conn, teams.servers["pve1"], 100, "web")
    conn.execute("insert into public.operation_nodes (server_id, node, is_local, online) values (%s, 'pve1b', false,"
                 " true)", (teams.servers["pve1"],))
    conn.commit()
    return teams


def request(uconn, fleet, protocol, node, server="pve1"):
    return call(uconn, fleet.users["olga"], REQUEST, (fleet.servers[server], protocol, node), many=False)["r"]


def tokens(conn) -> int:
    conn.commit()
    return conn.execute("select count(*) as n from public.console_tokens").fetchone()["n"]


@pytest.mark.parametrize("node", ["pve1", "pve1b"])
def test_a_shell_opens_on_a_node_the_server_reported(conn, uconn, fleet, node):
    link = request(uconn, fleet, "term", node)
    assert link["target"] == f"node {node}"
    assert conn.execute(TAKE, (link["token"],)).fetchone()["info"]["node"] == node


@pytest.mark.parametrize("protocol, node, server, sentence", [
    ("term", "pve9", "pve1", "pve1 has no node pve9: a node shell opens only on a node the server reported "
                             "(pve1, pve1b)"),
    ("term", "localhost", "pve1", "pve1 has no node localhost"),
    ("term", "pve1", "pve2", "pve2 has reported no nodes yet"),
])
def test_a_shell_on_a_node_the_server_did_not_report_is_refused_and_nothing_written(conn, uconn, fleet, protocol,
                                                                                    node, server, sentence):
    with pytest.raises(psycopg.errors.NoDataFound) as info:
        request(uconn, fleet, protocol, node, server)
    assert info.value.diag.message_primary.startswith(sentence)
    assert tokens(conn) == 0


def test_ssh_access_alone_does_not_make_a_node_known(conn, uconn, fleet, secret_key, sshd):
    # SSH access for node "pve1" of pve2, which reported no node at all.
    add_ssh_access(conn, secret_key, fleet.servers["pve2"], sshd, sshd["host_key"])
    with pytest.raises(psycopg.errors.NoDataFound, match="pve2 has reported no nodes yet"):
        request(uconn, fleet, "ssh", "pve1", "pve2")
    assert tokens(conn) == 0
    assert [r["server_name"] for r in call(uconn, fleet.users["olga"], "select * from public.console_nodes()")] \
        == ["pve1", "pve1"]


def test_a_link_to_a_node_the_server_no_longer_reports_is_refused_when_used(conn, uconn, fleet):
    link = request(uconn, fleet, "term", "pve1b")
    conn.execute("delete from public.operation_nodes where node = 'pve1b'")
    conn.commit()
    with pytest.raises(psycopg.Error) as info:
        conn.execute(TAKE, (link["token"],))
    assert info.value.sqlstate == "PT410" and "pve1 has no node pve1b" in info.value.diag.message_primary


def test_the_dashboard_offers_exactly_the_reported_nodes(uconn, fleet):
    nodes = call(uconn, fleet.users["olga"], "select * from public.console_nodes()")
    assert [(r["server_name"], r["node"]) for r in nodes] == [("pve1", "pve1"), ("pve1", "pve1b")]
