"""Tables are not an API: what PostgREST could reach with a user's JWT, as Supabase sets it up
(default privileges grant everything in public to anon and authenticated; sql/compat.sql does the
same here). One test per class of hole:

- every table, sequence and function in public is walked: the API roles write nothing directly;
- an admin cannot point a server elsewhere or forge its status through the table;
- update_server() drops credentials and the pinned fingerprint when the address or TLS changes;
- a JWT without `sub` is not the service role;
- the session registry shows e-mail to the team and the client IP to admins, on every path;
- the audit log's read policy checks the role once per query, not once per row.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.support.seed import add_guest, call, open_session, seed_teams as seed
from worker import admin, db
from worker.crypto import Box
from worker.pve import CONFIG, PveError
from worker.pve_clients import PveClients

API_ROLES = ("anon", "authenticated")
# Never readable by the API roles, whatever policies they get.
SECRET_TABLES = {"server_credentials", "server_ssh_credentials", "console_tokens", "operation_leases"}
FINGERPRINT = ":".join(["AB"] * 32)

# Every relation of public that is not an extension's, with its kind and whether RLS is on.
RELATIONS = """
select c.oid::regclass::text as name, c.relname, c.relkind, c.relrowsecurity as rls
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                                              and d.deptype = 'e')
order by c.relname
"""


@pytest.fixture
def fleet(teams):
    return teams


def as_claims(conn, claims: dict | None, role: str):
    """The next statements of this transaction run as PostgREST would run them for these claims."""
    conn.execute("select set_config('request.jwt.claims', %s, true), set_config('role', %s, true)",
                 (json.dumps(claims) if claims is not None else "", role))


def table_privileges(conn, role: str, rel: str) -> set[str]:
    """The privileges `role` holds on a table, counting column-level grants."""
    held = set()
    for priv in ("SELECT", "INSERT", "UPDATE", "REFERENCES"):
        if conn.execute("select has_any_column_privilege(%s, %s::regclass, %s) as ok", (role, rel, priv)).fetchone()["ok"]:
            held.add(priv)
    for priv in ("DELETE", "TRUNCATE", "TRIGGER"):
        if conn.execute("select has_table_privilege(%s, %s::regclass, %s) as ok", (role, rel, priv)).fetchone()["ok"]:
            held.add(priv)
    return held


def sequence_privileges(conn, role: str, rel: str) -> set[str]:
    return {p for p in ("USAGE", "SELECT", "UPDATE")
            if conn.execute("select has_sequence_privilege(%s, %s::regclass, %s) as ok", (role, rel, p)).fetchone()["ok"]}


def readable_by_policy(conn, relname: str) -> bool:
    """Whether a permissive SELECT policy lets authenticated see some rows of the table."""
    return conn.execute(
        "select exists (select 1 from pg_policies where schemaname = 'public' and tablename = %s"
        " and permissive = 'PERMISSIVE' and cmd in ('SELECT', 'ALL')"
        " and ('authenticated' = any (roles) or 'public' = any (roles))) as ok", (relname,)).fetchone()["ok"]


# ------------------------------------------------------------------------------ 1. the grants walk

def test_every_table_sequence_and_function_of_public_is_closed_to_direct_writes(conn):
    relations = conn.execute(RELATIONS).fetchall()
    tables = [r for r in relations if r["relkind"] != "S"]
    sequences = [r for r in relations if r["relkind"] == "S"]
    assert len(tables) >= 19 and sequences  # the walk sees the schema, not an empty database
    problems = []
    for t in tables:
        if not t["rls"]:
            problems.append(f"{t['name']}: row-level security is off")
        if held := table_privileges(conn, "anon", t["name"]):
            problems.append(f"{t['name']}: anon holds {sorted(held)}")
        held = table_privileges(conn, "authenticated", t["name"])
        if writes := held - {"SELECT"}:
            problems.append(f"{t['name']}: authenticated holds {sorted(writes)}")
        if "SELECT" in held and (t["relname"] in SECRET_TABLES or not readable_by_policy(conn, t["relname"])):
            problems.append(f"{t['name']}: authenticated may select it, but no policy means it to")
    for s in sequences:
        for role in API_ROLES:
            if held := sequence_privileges(conn, role, s["name"]):
                problems.append(f"{s['name']}: {role} holds {sorted(held)}")
    for f in conn.execute(
            "select p.oid::regprocedure::text as fn from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and has_function_privilege('anon', p.oid, 'execute')"
            " and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid"
            " and d.deptype = 'e')").fetchall():
        problems.append(f"{f['fn']}: anon may execute it")
    assert problems == []
    # The client IP is the one column of the session registry members may not select.
    assert not conn.execute("select has_column_privilege('authenticated', 'public.connection_sessions', 'client_ip',"
                            " 'SELECT') as ok").fetchone()["ok"]


def test_a_new_table_of_a_later_migration_does_not_arrive_writable(conn):
    # What the next migration would do: Supabase's default privileges apply to it.
    conn.execute("create table public.zz_new_table (id bigint generated always as identity primary key, note text)")
    assert table_privileges(conn, "anon", "public.zz_new_table") == set()
    assert table_privileges(conn, "authenticated", "public.zz_new_table") <= {"SELECT"}
    for role in API_ROLES:
        assert sequence_privileges(conn, role, "public.zz_new_table_id_seq") == set()
    conn.rollback()


def test_a_user_cannot_move_the_audit_sequence(conn, uconn, fleet):
    before = conn.execute("select last_value from public.audit_log_id_seq").fetchone()["last_value"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, fleet.users["alice"], "select setval('public.audit_log_id_seq', 1)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, fleet.users["alice"], "select nextval('public.audit_log_id_seq')")
    assert conn.execute("select last_value from public.audit_log_id_seq").fetchone()["last_value"] == before


# ------------------------------------------------------------- 2. servers are not written through the table

@pytest.mark.parametrize("statement", [
    ("update public.proxmox_servers set base_url = 'https://listener.example:8006', tls_mode = 'insecure',"
     " tls_fingerprint = null"),
    "update public.proxmox_servers set connection_status = 'online', health_check_error = null",
    "delete from public.proxmox_servers",
    ("insert into public.proxmox_servers (tenant_id, name, base_url, auth_kind)"
     " select tenant_id, 'x', 'https://listener.example:8006', 'token' from public.tenant_members limit 1"),
    "truncate public.connection_metrics",
    "insert into public.audit_log (tenant_id, action) select tenant_id, 'forged.entry' from public.tenant_members",
    "update public.tenant_members set role = 'admin'",
])
def test_an_admin_writes_no_table_directly(conn, uconn, fleet, statement):
    before = conn.execute("select base_url, tls_mode, connection_status from public.proxmox_servers"
                          " where id = %s", (fleet.servers["pve1"],)).fetchone()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, fleet.users["alice"], statement)
    after = conn.execute("select base_url, tls_mode, connection_status from public.proxmox_servers"
                         " where id = %s", (fleet.servers["pve1"],)).fetchone()
    assert after == before


# ------------------------------------------------------------------- 3. update_server and credentials

def credentials(conn, server_id):
    return conn.execute("select * from public.server_credentials where server_id = %s", (server_id,)).fetchone()


def update(uconn, user_id, server_id, **params):
    names = ", ".join(f"p_{k} => %({k})s" for k in params)
    return call(uconn, user_id, f"select public.update_server(%(id)s{', ' if names else ''}{names}) as r",
                {"id": server_id, **params}, many=False)["r"]


def test_a_new_address_drops_the_credentials_and_the_pinned_fingerprint(conn, uconn, secret_key):
    fleet = seed(conn, secret_key, fingerprint=FINGERPRINT)
    sid, alice = fleet.servers["pve1"], fleet.users["alice"]
    conn.execute("update public.proxmox_servers set connection_status = 'online' where id = %s", (sid,))
    conn.commit()
    # Name and interval are not where the server is reached: the secret stays.
    r = update(uconn, alice, sid, name="pve-one", poll_interval_s=30)
    assert (r["name"], r["poll_interval_s"], r["credentials_dropped"], r["has_credentials"]) == ("pve-one", 30, False, True)
    assert credentials(conn, sid) is not None
    # A new address without new credentials: the secret is not sent there, the pin is gone.
    r = update(uconn, alice, sid, base_url="https://listener.example")
    assert r["base_url"] == "https://listener.example:8006"
    assert (r["credentials_dropped"], r["trust_dropped"], r["has_credentials"]) == (True, True, False)
    assert (r["tls_mode"], r["tls_fingerprint"]) == ("verify", None)
    assert credentials(conn, sid) is None
    row = conn.execute("select * from public.proxmox_servers where id = %s", (sid,)).fetchone()
    assert (row["base_url"], row["tls_mode"], row["tls_fingerprint"]) == ("https://listener.example:8006", "verify", None)
    assert row["connection_status"] == "online"  # status is the workers' to write
    audit = conn.execute("select user_id, actor, details from public.audit_log where action = 'server.update'"
                         " order by id").fetchall()
    assert len(audit) == 2 and str(audit[1]["user_id"]) == alice and audit[1]["actor"] == "user"
    assert audit[1]["details"]["credentials_dropped"] is True
    assert audit[1]["details"]["changed"]["base_url"] == "https://listener.example:8006"
    # The workers see a server without credentials and fail the poll as a configuration error.
    target = conn.execute(db.q("poll_target"), {"server_id": sid}).fetchone()
    assert target is not None and target["secret_ciphertext"] is None
    with pytest.raises(PveError) as err:
        PveClients(Box(secret_key)).get(target)
    assert err.value.kind == CONFIG and "no credentials" in err.value.message


@pytest.mark.parametrize("change", [
    {"fallback_url": "https://other.example:8006"},
    {"tls_mode": "insecure"},
    {"tls_fingerprint": "cd" * 32},
])
def test_any_change_of_reach_drops_the_credentials(conn, uconn, secret_key, change):
    fleet = seed(conn, secret_key, fingerprint=FINGERPRINT)
    sid = fleet.servers["pve1"]
    r = update(uconn, fleet.users["alice"], sid, **change)
    assert r["credentials_dropped"] is True and credentials(conn, sid) is None
    if "tls_fingerprint" in change:
        assert (r["tls_mode"], r["tls_fingerprint"], r["trust_dropped"]) == ("pinned", ":".join(["CD"] * 32), False)


def test_new_credentials_in_the_same_call_are_kept(conn, secret_key):
    fleet = seed(conn, secret_key, fingerprint=FINGERPRINT)
    box = Box(secret_key)
    old = credentials(conn, fleet.servers["pve1"])
    r = admin.update_server(conn, box, "pve1", "acme", url="https://pve-new.example:8006",
                            fingerprint="cd" * 32, token="root@pam!new=11111111-2222-4333-8444-555566667777")
    assert (r["credentials_replaced"], r["credentials_dropped"], r["trust_dropped"]) == (True, False, False)
    new = credentials(conn, fleet.servers["pve1"])
    assert new["token_id"] == "new" and new["secret_ciphertext"] != old["secret_ciphertext"]
    assert box.open(new["secret_ciphertext"]) == "11111111-2222-4333-8444-555566667777"
    # The CLI path without credentials drops them like the API does.
    r = admin.update_server(conn, box, "pve1", "acme", url="https://pve-other.example:8006")
    assert r["credentials_dropped"] is True and credentials(conn, fleet.servers["pve1"]) is None


def test_update_server_checks_the_role_and_the_input(conn, uconn, fleet):
    sid, u = fleet.servers["pve1"], fleet.users
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only an admin"):
        update(uconn, u["olga"], sid, base_url="https://x.example")
    with pytest.raises(psycopg.Error, match="not found") as err:
        update(uconn, u["bob"], sid, base_url="https://x.example")        # another team's admin
    assert err.value.sqlstate == "PT404"  # PostgREST: HTTP 404, as for a server that does not exist
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="service role only"):
        update(uconn, u["alice"], sid, credentials=json.dumps(
            {"username": "root@pam", "token_id": "x", "secret_ciphertext": "forged"}))
    for bad, message in [({"base_url": "http://x.example"}, "must start with https://"),
                         ({"base_url": "https://x.example/evil"}, "has a path"),
                         ({"fallback_url": "https://x.example:99999"}, "outside 1-65535"),
                         ({"tls_mode": "none"}, "unknown TLS mode"),
                         ({"tls_fingerprint": "12:34"}, "not a SHA-256 fingerprint"),
                         ({"poll_interval_s": 1}, "between 2 and 3600"),
                         ({"name": "pve2"}, "has a server named 'pve2' already")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            update(uconn, u["alice"], sid, **bad)
    assert credentials(conn, sid) is not None
    assert conn.execute("select count(*) as n from public.audit_log where action = 'server.update'").fetchone()["n"] == 0


# ---------------------------------------------------------- 4. no user id is not the service role

def test_a_jwt_without_sub_gets_no_service_role_powers(conn, uconn, fleet):
    s = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    open_session(conn, fleet.servers["pveg"], fleet.users["bob"])
    add_guest(conn, fleet.servers["pveg"], 300, "db")
    conn.execute("update public.connection_heartbeats set last_seen_at = now() - interval '1 hour'")
    conn.commit()
    forged = {"role": "authenticated", "aud": "authenticated"}  # signed, but nobody's
    for sql, params in [("select public.kill_session(%s)", (s["id"],)),
                        ("select public.cleanup_stale_connections('1 minute')", ()),
                        ("select * from public.active_connections()", ()),
                        ("select public.update_server(%s, p_base_url => 'https://x.example')", (fleet.servers["pve1"],))]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="sign in"), uconn.transaction():
            as_claims(uconn, forged, "authenticated")
            uconn.execute(sql, params)
    with uconn.transaction():
        as_claims(uconn, forged, "authenticated")
        assert uconn.execute("select * from public.console_nodes()").fetchall() == []
        assert uconn.execute("select public.is_service_role() as s").fetchone()["s"] is False
    # Claims that say service_role do not make the authenticated role trusted either.
    with uconn.transaction():
        as_claims(uconn, {"role": "service_role"}, "authenticated")
        assert uconn.execute("select public.is_service_role() as s").fetchone()["s"] is False
    assert conn.execute("select count(*) as n from public.connection_sessions where status = 'open'"
                        ).fetchone()["n"] == 2


def test_the_service_role_is_recognised_by_its_role(conn, uconn, fleet):
    # The workers and the CLI: a direct connection, no claims at all.
    assert conn.execute("select public.is_service_role() as s").fetchone()["s"] is True
    # PostgREST with the service_role key.
    with uconn.transaction():
        as_claims(uconn, {"iss": "supabase", "role": "service_role"}, "service_role")
        assert uconn.execute("select public.is_service_role() as s").fetchone()["s"] is True
        assert len(uconn.execute("select * from public.console_nodes()").fetchall()) == 0  # no guests yet
    s = open_session(conn, fleet.servers["pveg"], fleet.users["bob"])
    with uconn.transaction():
        as_claims(uconn, {"iss": "supabase", "role": "service_role"}, "service_role")
        r = uconn.execute("select public.kill_session(%s) as r", (s["id"],)).fetchone()["r"]
    assert r["close_reason"] == "killed by an administrator (command line)"
    audit = conn.execute("select user_id, actor from public.audit_log where action = 'connection.session.kill'"
                         ).fetchone()
    assert audit["user_id"] is None and audit["actor"] == "system"


# ------------------------------------------------------ 5. who sees e-mail and client IP of sessions

def test_session_email_and_ip_follow_one_rule_on_every_path(conn, uconn, fleet):
    u = fleet.users
    open_session(conn, fleet.servers["pve1"], u["olga"], "vnc", client_ip="198.51.100.7")
    open_session(conn, fleet.servers["pve2"], u["alice"], "term", target="node pve1", client_ip="198.51.100.8")
    open_session(conn, fleet.servers["pveg"], u["bob"], "ssh", target="node g1", client_ip="198.51.100.9")
    ips = {"olga": "198.51.100.7", "alice": "198.51.100.8"}

    def listed(viewer, of=None):
        rows = call(uconn, u[viewer], "select * from public.active_connections(null, null, %s, 500, 0)", (of,))
        return {r["user_email"]: r["client_ip"] for r in rows}

    def by_user(viewer, of):
        c = call(uconn, u[viewer], "select public.user_connections(%s) as c", (of,), many=False)["c"]
        return {r["user_email"]: r["client_ip"] for r in c["connections"]}

    # Every member of acme sees who holds acme's sessions; the IP only the team's admins and the holder.
    assert listed("victor") == {"olga@acme.test": None, "alice@acme.test": None}
    assert listed("olga") == {"olga@acme.test": ips["olga"], "alice@acme.test": None}
    assert listed("alice") == {"olga@acme.test": ips["olga"], "alice@acme.test": ips["alice"]}
    assert listed("bob") == {"bob@globex.test": "198.51.100.9"}
    # Filtering by a user, or user_connections(), shows exactly that user's part of the same list.
    for viewer in ("victor", "olga", "alice", "bob"):
        everyone = listed(viewer)
        for name in ("olga", "alice"):
            email = f"{name}@acme.test"
            part = {k: v for k, v in everyone.items() if k == email}
            assert listed(viewer, u[name]) == part, (viewer, name)
            assert by_user(viewer, u[name]) == part, (viewer, name)
    # The table (and Realtime, which sends only selectable columns) agrees: e-mail yes, IP no.
    emails = call(uconn, u["victor"], "select user_email from public.connection_sessions order by user_email")
    assert [r["user_email"] for r in emails] == ["alice@acme.test", "olga@acme.test"]
    for viewer in ("victor", "alice"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            call(uconn, u[viewer], "select client_ip from public.connection_sessions")


# ----------------------------------------------------------------- 6. policies check roles once

def test_the_audit_policy_checks_the_role_once_per_query(conn, uconn, fleet):
    conn.execute("insert into public.audit_log (tenant_id, action) select %s, 'test.entry' from generate_series(1, 500)",
                 (fleet.teams["acme"],))
    conn.execute("insert into public.audit_log (tenant_id, action) select %s, 'test.entry' from generate_series(1, 500)",
                 (fleet.teams["globex"],))
    conn.commit()
    plan = "\n".join(r["QUERY PLAN"] for r in call(
        uconn, fleet.users["alice"], "explain (costs off) select * from public.audit_log"))
    assert "InitPlan" in plan and "has_role" not in plan, plan
    assert call(uconn, fleet.users["alice"], "select count(*) as n from public.audit_log", many=False)["n"] == 500
    assert call(uconn, fleet.users["olga"], "select count(*) as n from public.audit_log", many=False)["n"] == 0
    # No policy calls the per-row role check any more.
    per_row = conn.execute("select tablename, policyname from pg_policies where schemaname = 'public'"
                           " and (coalesce(qual, '') || coalesce(with_check, '')) like '%%has_role(%%'").fetchall()
    assert per_row == []
