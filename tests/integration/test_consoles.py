"""Console links and PVE tickets: request_console() under RLS (who may open what), tokens stored
hashed and used once, tickets from a fake PVE over real HTTPS with their audit entry, and the PVE
web UI fallback link. Also request_console through the Supabase stand-in with the official client."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from postgrest.exceptions import APIError
from supabase import create_client

from tests.support.seed import PASSWORD, USERS, add_guest, call
from worker import consoles, db
from worker.consoles import ConsoleTarget
from worker.crypto import Box
from worker.polling import Poller
from worker.pve import PveError

REQUEST = "select public.request_console(%s, %s, %s, %s) as r"
TAKE = "select public.console_token(%s, %s) as info"


@pytest.fixture
def fleet(conn, teams):
    f = teams
    add_guest(conn, f.servers["pve1"], 100, "web")
    add_guest(conn, f.servers["pve1"], 101, "old", status="stopped")
    add_guest(conn, f.servers["pve1"], 200, "dns", guest_type="lxc")
    return f


def request(uconn, fleet, user, protocol="vnc", vmid=100, node=None, server="pve1"):
    return call(uconn, fleet.users[user], REQUEST, (fleet.servers[server], protocol, vmid, node), many=False)["r"]


def test_an_operator_gets_a_60_second_link_stored_only_as_a_hash(conn, uconn, fleet):
    link = request(uconn, fleet, "olga")
    assert link["protocol"] == "vnc" and link["target"] == "web (qemu/100)" and link["server_name"] == "pve1"
    assert len(link["token"]) == 64
    row = conn.execute("select *, extract(epoch from expires_at - created_at) as ttl from public.console_tokens"
                       ).fetchone()
    assert bytes(row["token_hash"]) == hashlib.sha256(link["token"].encode()).digest()
    assert link["token"] not in str(row) and 59 <= row["ttl"] <= 61
    assert str(row["user_id"]) == fleet.users["olga"] and row["vmid"] == 100 and row["node"] == "pve1"


@pytest.mark.parametrize("user,protocol,vmid,node,error,sentence", [
    ("victor", "vnc", 100, None, psycopg.errors.InsufficientPrivilege, "needs the operator or admin role"),
    ("bob", "vnc", 100, None, psycopg.errors.NoDataFound, "not found"),
    ("olga", "vnc", 101, None, psycopg.errors.InvalidParameterValue, r"guest old \(101\) is stopped: start it first"),
    ("olga", "vnc", 999, None, psycopg.errors.NoDataFound, "guest 999 is not known on pve1"),
    ("olga", "vnc", 200, None, psycopg.errors.InvalidParameterValue, "containers have no VNC display"),
    ("olga", "ssh", 100, None, psycopg.errors.InvalidParameterValue, "SSH goes to nodes, not guests"),
    ("olga", "rdp", 100, None, psycopg.errors.InvalidParameterValue, "unknown console protocol rdp"),
    ("olga", "vnc", None, "pve1", psycopg.errors.InvalidParameterValue, "a node shell is a terminal"),
    ("olga", "term", None, "bad node!", psycopg.errors.InvalidParameterValue, "is not a node name"),
    ("olga", "ssh", None, "pve1", psycopg.errors.InvalidParameterValue, "no SSH access is configured for node pve1"),
])
def test_request_console_refuses_with_a_sentence_and_writes_nothing(conn, uconn, fleet, user, protocol, vmid, node,
                                                                      error, sentence):
    with pytest.raises(error, match=sentence):
        request(uconn, fleet, user, protocol, vmid, node)
    assert conn.execute("select count(*) as n from public.console_tokens").fetchone()["n"] == 0


def test_a_link_is_checked_without_being_used_then_used_once(conn, fleet, uconn):
    token = request(uconn, fleet, "olga", "term", 200)["token"]
    peek = conn.execute(TAKE, (token, False)).fetchone()["info"]
    assert (peek["protocol"], peek["guest_type"], peek["vmid"], peek["user_email"]) == ("term", "lxc", 200,
                                                                                        "olga@acme.test")
    taken = conn.execute(TAKE, (token, True)).fetchone()["info"]
    conn.commit()
    assert taken["target"] == "dns (lxc/200)" and taken["server_name"] == "pve1"
    with pytest.raises(psycopg.Error, match="used already"):
        conn.execute(TAKE, (token, True))
    conn.rollback()
    with pytest.raises(psycopg.Error, match="not valid"):
        conn.execute(TAKE, ("x" * 64, False))
    conn.rollback()


def test_an_expired_link_or_a_lost_role_is_refused(conn, fleet, uconn):
    expired = request(uconn, fleet, "olga")["token"]
    conn.execute("update public.console_tokens set expires_at = now() - interval '1 second'")
    conn.commit()
    with pytest.raises(psycopg.Error, match="expired \\(links last 60 s\\)"):
        conn.execute(TAKE, (expired, True))
    conn.rollback()
    demoted = request(uconn, fleet, "olga")["token"]
    conn.execute("update public.tenant_members set role = 'viewer' where user_id = %s", (fleet.users["olga"],))
    conn.commit()
    with pytest.raises(psycopg.Error, match="no longer have the operator role"):
        conn.execute(TAKE, (demoted, True))
    conn.rollback()


def test_tickets_come_from_pve_with_the_stored_credentials_and_are_audited(conn, pool, secret_key, settings, pve,
                                                                           add_server):
    pve.add_vm(100, "web", status="running")
    server = add_server("pve1", pve.url)
    client = Poller(pool, Box(secret_key), settings).client(str(server["id"]))[1]
    row = conn.execute("select tenant_id from public.proxmox_servers").fetchone()
    target = ConsoleTarget(server_id=str(server["id"]), tenant_id=str(row["tenant_id"]), server_name="pve1",
                           protocol="vnc", node="pve1", guest_type="qemu", vmid=100, target="web (qemu/100)")
    ticket = consoles.issue_ticket(conn, client, target, None)
    assert ticket.ticket.startswith("PVEVNC:") and ticket.port == "5900" and ticket.user == "root@pam!monitor"
    assert ("POST", "/api2/json/nodes/pve1/qemu/100/vncproxy") in [(m, p) for m, p, _ in pve.requests]
    term = consoles.request_ticket(client, ConsoleTarget(**{**target.__dict__, "protocol": "term"}))
    assert term.upid and "termproxy" in term.upid
    entry = conn.execute("select * from public.audit_log").fetchone()
    assert entry["action"] == "console.ticket.issue" and entry["target_id"] == "qemu/100"
    assert entry["details"]["upid"] == ticket.upid and ticket.ticket not in str(entry["details"])
    # A guest PVE does not know: a PveError with PVE's own sentence.
    with pytest.raises(PveError, match="does not exist"):
        consoles.request_ticket(client, ConsoleTarget(**{**target.__dict__, "vmid": 404}))


def test_the_pve_web_ui_fallback_links():
    assert consoles.pve_console_url("https://pve1.lan:8006", "pve1", 100, "qemu", "web") == \
        "https://pve1.lan:8006/?console=kvm&novnc=1&vmid=100&vmname=web&node=pve1&resize=off&cmd="
    assert consoles.pve_console_url("https://pve1.lan:8006/", "n2", 200, "lxc", "ct", xterm=True) == \
        "https://pve1.lan:8006/?console=lxc&xtermjs=1&vmid=200&vmname=ct&node=n2&resize=off&cmd="
    assert consoles.pve_console_url("https://pve1.lan:8006", "pve1") == \
        "https://pve1.lan:8006/?console=shell&novnc=1&node=pve1&resize=off&cmd="


def test_request_console_through_the_stand_in_with_the_official_client(db_url, pw_secrets, fleet):
    from tests.support.standin import running_standin

    with running_standin(db_url, pw_secrets["jwt_secret"]) as standin:
        client = create_client(standin.url, standin.anon_key)
        client.auth.sign_in_with_password({"email": USERS["olga"][0], "password": PASSWORD})
        link = client.rpc("request_console", {"p_server_id": fleet.servers["pve1"], "p_protocol": "vnc",
                                              "p_vmid": 100}).execute().data
        assert len(link["token"]) == 64
        viewer = create_client(standin.url, standin.anon_key)
        viewer.auth.sign_in_with_password({"email": USERS["victor"][0], "password": PASSWORD})
        with pytest.raises(APIError) as refused:
            viewer.rpc("request_console", {"p_server_id": fleet.servers["pve1"], "p_protocol": "vnc",
                                           "p_vmid": 100}).execute()
        assert "operator or admin role" in refused.value.message
        rows = client.rpc("active_connections", {"p_team_id": "personal"}).execute().data
        assert rows == []
        assert db.q("console_token")
