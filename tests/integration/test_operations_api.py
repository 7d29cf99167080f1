"""request_operation() and the operations' SQL API, as the dashboard calls them: over the stand-in's
PostgREST RPC with each user's JWT, on a real database. Never twice, roles, bad input, audit."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.test_operations_support import opspve, sync_guests  # noqa: F401  (fixtures)
from worker import admin, operations, ssh
from worker.embedded.standin import StandIn
from worker.operations.registry import TYPES
from worker.operations.service_restart import SERVICES

OPERATOR = ("olga@acme.test", "olga-password-1")
VIEWER = ("victor@acme.test", "victor-password-1")
ADMIN = ("ada@acme.test", "ada-password-12")
OUTSIDER = ("otto@globex.test", "otto-password-1")


@pytest.fixture
def standin(db_url, pw_secrets):
    server = StandIn(db_url, pw_secrets["jwt_secret"]).start()
    yield server
    server.stop()


@pytest.fixture
def acme(conn, add_server, opspve):  # noqa: F811
    """Tenant acme with server pve1 (the fake PVE) and an operator, a viewer and an admin; tenant
    globex with its own member."""
    server = add_server("pve1", opspve.url)
    admin.add_user(conn, OPERATOR[0], OPERATOR[1], "acme", "operator")
    admin.add_user(conn, VIEWER[0], VIEWER[1], "acme", "viewer")
    admin.add_user(conn, ADMIN[0], ADMIN[1], "acme", "admin")
    admin.add_tenant(conn, "globex")
    admin.add_user(conn, OUTSIDER[0], OUTSIDER[1], "globex", "admin")
    return server


class Api:
    def __init__(self, standin: StandIn):
        self.standin = standin
        self.http = httpx.Client(base_url=standin.url, timeout=30, headers={"apikey": standin.anon_key})

    def token(self, who) -> str:
        r = self.http.post("/auth/v1/token", params={"grant_type": "password"},
                           json={"email": who[0], "password": who[1]})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def rpc(self, token: str, fn: str, **body) -> httpx.Response:
        return self.http.post(f"/rest/v1/rpc/{fn}", json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def api(standin):
    a = Api(standin)
    yield a
    a.http.close()


def count(conn, table: str) -> int:
    conn.commit()
    return conn.execute(f"select count(*) as n from {table}").fetchone()["n"]


def test_fifty_identical_requests_start_one_operation_and_the_others_learn_its_id(api, acme, conn):
    token = api.token(OPERATOR)
    body = {"p_server_id": str(acme["id"]), "p_type": "service_restart", "p_params": {"service": "pveproxy",
                                                                                      "node": "pve1"}}

    # When 50 tabs ask for the same restart at the same moment
    def ask(_):
        with httpx.Client(base_url=api.standin.url, timeout=60,
                          headers={"apikey": api.standin.anon_key, "Authorization": f"Bearer {token}"}) as c:
            return c.post("/rest/v1/rpc/request_operation", json=body)
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(ask, range(50)))

    # Then exactly one started, and the 49 others were told it is running, with its id
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    data = [r.json() for r in answers]
    started = [d for d in data if d["status"] == "started"]
    running = [d for d in data if d["status"] == "already_running"]
    assert len(started) == 1 and len(running) == 49
    op_id = started[0]["operationId"]
    assert {d["operationId"] for d in running} == {op_id}
    assert {d["existingOperation"]["operationId"] for d in running} == {op_id}
    assert all(set(d["existingOperation"]) >= {"operationId", "progress", "message"} for d in running)
    assert started[0]["estimatedDuration"] > 0
    assert count(conn, "active_operations") == 1
    # Every request is an audit entry: one started, 49 already running
    results = [r["details"]["result"] for r in conn.execute(
        "select details from audit_log where action = 'operation.request'").fetchall()]
    assert results.count("started") == 1 and results.count("already_running") == 49

    # A different operation on the same server still starts, and so does the same one on another service
    other = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="certificate_renewal",
                    p_params={"node": "pve1"}).json()
    assert other["status"] == "started" and other["renewalId"] == other["operationId"] != op_id
    third = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="service_restart",
                    p_params={"service": "pvedaemon", "node": "pve1"}).json()
    assert third["status"] == "started"
    assert count(conn, "active_operations") == 3


def test_a_finished_operation_can_be_requested_again(api, acme, conn):
    token = api.token(OPERATOR)
    first = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="certificate_renewal",
                    p_params={"node": "pve1"}).json()
    conn.execute("update active_operations set status = 'completed', completed_at = now(), progress = 100 "
                 "where id = %s", (first["operationId"],))
    conn.commit()
    again = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="certificate_renewal",
                    p_params={"node": "pve1"}).json()
    assert again["status"] == "started" and again["operationId"] != first["operationId"]
    # History is kept: both rows remain
    assert count(conn, "active_operations") == 2


def test_a_viewer_is_refused_and_nothing_is_written(api, acme, conn):
    token = api.token(VIEWER)
    r = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="service_restart",
                p_params={"service": "pveproxy"})
    assert r.status_code == 403
    assert "viewers cannot start operations" in r.json()["message"]
    assert count(conn, "active_operations") == 0 and count(conn, "audit_log") == 0
    # The viewer still sees the operations and what the buttons may offer (nothing to press)
    options = api.rpc(token, "operation_options", p_server_id=str(acme["id"])).json()
    assert options["canOperate"] is False and "pveproxy" in options["services"]


def test_someone_outside_the_tenant_learns_nothing(api, acme, conn):
    token = api.token(OUTSIDER)
    r = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="ssh_test", p_params={})
    assert r.status_code == 404 and "not found" in r.json()["message"]
    # and does not see acme's operations either
    operations.enqueue(conn, acme["id"], "certificate_renewal", {"node": "pve1"}, "cron")
    conn.commit()
    assert api.rpc(token, "operations_list").json() == []
    mine = api.rpc(api.token(VIEWER), "operations_list").json()
    assert [o["operation_type"] for o in mine] == ["certificate_renewal"]
    assert mine[0]["created_by"] == "cron" and mine[0]["server_name"] == "pve1"


@pytest.mark.parametrize("op_type, params, sentence", [
    ("service_restart", {"service": "apache2"}, "'apache2' is not a service PVE can restart: use one of chrony"),
    ("service_restart", {"service": "pveproxy; reboot"}, "is not a service PVE can restart"),
    ("service_restart", {}, "service_restart needs the parameter service"),
    ("service_restart", {"service": "pveproxy", "node": "pve1/../x"}, "is not a PVE node name"),
    ("start", {"vmid": 4242}, "server pve1 has no guest 4242"),
    ("stop", {"vmid": "abc"}, "stop needs the parameter vmid"),
    ("reboot", {"vmid": 100}, "unknown operation type 'reboot'"),
    ("certificate_renewal", {"force": "yes"}, "the parameter force must be true or false"),
    ("certificate_renewal", {"colour": "red"}, "certificate_renewal takes no parameter 'colour'"),
    ("ssh_test", {}, "no SSH credentials for server pve1: set them with `proxwatch ops ssh-set pve1`"),
])
def test_bad_input_is_refused_with_a_sentence_and_writes_nothing(api, acme, conn, op_type, params, sentence):
    token = api.token(OPERATOR)
    r = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type=op_type, p_params=params)
    assert r.status_code in (400, 404), r.text
    assert sentence in r.json()["message"]
    assert count(conn, "active_operations") == 0 and count(conn, "audit_log") == 0


def test_power_actions_need_a_guest_the_sync_has_seen_and_containers_cannot_be_reset(api, acme, conn, pool, box,
                                                                                     opspve):  # noqa: F811
    sync_guests(pool, box, acme["id"])
    token = api.token(OPERATOR)
    ok = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="start", p_params={"vmid": 100})
    assert ok.status_code == 200 and ok.json()["status"] == "started"
    row = conn.execute("select target, node, params from active_operations").fetchone()
    assert row["target"] == "qemu/100" and row["node"] == "pve1"
    assert row["params"] == {"vmid": 100, "guest_type": "qemu", "node": "pve1", "guest_name": "web"}
    # A stop of the same guest while its start runs is the same guest's power: already running
    stop = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="stop",
                   p_params={"vmid": 100}).json()
    assert stop["status"] == "already_running" and stop["existingOperation"]["operationType"] == "start"
    wrong_node = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="reset",
                         p_params={"vmid": 100, "node": "pve9"})
    assert wrong_node.status_code == 400 and "runs on node pve1, not pve9" in wrong_node.json()["message"]
    reset_ct = api.rpc(token, "request_operation", p_server_id=str(acme["id"]), p_type="reset",
                       p_params={"vmid": 200})
    assert reset_ct.status_code == 400 and "guest 200 is a container: containers cannot be reset" in reset_ct.text
    assert count(conn, "active_operations") == 1


def test_the_service_list_is_the_same_in_sql_and_python(conn):
    assert conn.execute("select public.operation_services() as s").fetchone()["s"] == list(SERVICES)


def test_the_operation_types_are_the_same_in_sql_and_python(conn, add_server):
    check = conn.execute("select pg_get_constraintdef(oid) as d from pg_constraint"
                         " where conname = 'active_operations_operation_type_check'").fetchone()["d"]
    assert tuple(re.findall(r"'(\w+)'::text", check)) == TYPES
    # enqueue_operation() knows each type (it gets as far as checking its parameters) and
    # operation_estimate() has a default duration for each
    server = add_server("pve1", "https://127.0.0.1:8006")
    for op_type in TYPES:
        with pytest.raises(operations.RequestRefused, match=f"{op_type} takes no parameter 'nonsense'"):
            operations.enqueue(conn, server["id"], op_type, {"nonsense": 1})
        assert conn.execute("select public.operation_estimate(%s, %s, 'x') as ms",
                            (server["id"], op_type)).fetchone()["ms"] > 0
    with pytest.raises(operations.RequestRefused, match="unknown operation type 'migrate'"):
        operations.enqueue(conn, server["id"], "migrate", {})


def test_the_estimate_is_learned_from_the_last_completed_runs(conn, acme):
    first = operations.enqueue(conn, acme["id"], "service_restart", {"service": "pveproxy", "node": "pve1"})
    assert first["estimatedDuration"] == 20000  # the default before any run
    # Given three earlier restarts of pveproxy on pve1 that took 4, 6 and 8 s
    conn.execute("delete from active_operations")
    for secs in (4, 6, 8):
        conn.execute("insert into active_operations (tenant_id, server_id, operation_type, status, node, target_type,"
                     " target, conflict_key, progress, started_at, completed_at) select tenant_id, id,"
                     " 'service_restart', 'completed', 'pve1', 'service', 'pve1/pveproxy', 'x', 100,"
                     " now() - make_interval(secs => %s), now() from proxmox_servers where id = %s",
                     (secs, acme["id"]))
    # Then the next one expects the median, 6 s
    assert operations.enqueue(conn, acme["id"], "service_restart",
                              {"service": "pveproxy", "node": "pve1"})["estimatedDuration"] == 6000
    conn.rollback()


def test_a_node_that_the_server_does_not_have_is_refused_once_its_nodes_are_known(conn, acme):
    conn.execute("insert into operation_nodes (server_id, node, is_local) values (%s, 'pve1', true), "
                 "(%s, 'pve2', false)", (acme["id"], acme["id"]))
    conn.commit()
    with pytest.raises(operations.RequestRefused, match="server pve1 has no node 'pve7': its nodes are pve1, pve2"):
        operations.enqueue(conn, acme["id"], "certificate_renewal", {"node": "pve7"})
    # Without a node, the node the server's address answers on is meant, by its name
    result = operations.enqueue(conn, acme["id"], "certificate_renewal", {})
    row = conn.execute("select node, target from active_operations where id = %s",
                       (result["operationId"],)).fetchone()
    assert row == {"node": "pve1", "target": "pve1"}
    # and a cron renewal naming pve1 is the same renewal
    again = operations.enqueue(conn, acme["id"], "certificate_renewal", {"node": "pve1"}, "cron")
    assert again["status"] == "already_running" and again["operationId"] == result["operationId"]


def test_ssh_secrets_are_never_readable_through_the_api_nor_published(conn, acme, box):
    ssh.set_credentials(conn, box, acme["id"], host="10.0.0.5", username="root", password="s3cret-pw",
                        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHa3Mn0Kq0yrnQIMFl9mUuJsFzAWvI7TVD8S9e/3pnWX")
    conn.commit()
    published = {r["tablename"] for r in conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'")}
    assert "active_operations" in published
    assert not published & {"server_ssh_credentials", "operation_leases", "server_credentials"}
    for role in ("anon", "authenticated"):
        for table in ("server_ssh_credentials", "operation_leases"):
            assert not conn.execute("select has_table_privilege(%s, %s, 'select') as ok",
                                    (role, f"public.{table}")).fetchone()["ok"]
        assert not conn.execute("select has_function_privilege(%s, 'public.enqueue_operation(uuid, text, jsonb, text, "
                                "uuid)', 'execute') as ok", (role,)).fetchone()["ok"]
    stored = conn.execute("select secret_ciphertext from server_ssh_credentials").fetchone()["secret_ciphertext"]
    assert "s3cret-pw" not in stored and box.open(stored) == "s3cret-pw"
