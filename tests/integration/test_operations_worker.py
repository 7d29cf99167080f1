"""Operations through the real processes: the scheduler (dispatch and sweep jobs), the dramatiq worker
on Redis, Postgres and a PVE over HTTPS. A request made the way the dashboard makes it (a row, no
message) is picked up and run; a worker killed mid-operation leaves it failed after the timeout."""

from __future__ import annotations

import signal

from tests.support.seed import finished, op_row
from tests.support.waiting import wait_for
from worker import operations


def test_an_api_request_runs_on_the_worker_and_a_killed_worker_leaves_it_failed(procs, ops_env, add_server,
                                                                                opspve, conn, db_url):
    server = add_server("pve1", opspve.url)
    env = dict(ops_env, PROXWATCH_OPERATION_STALE_S="4")
    procs.scheduler(env=env)
    first_worker = procs.worker(env=env)

    # Given a restart that takes a minute, requested as the dashboard does (a pending row, no message)
    opspve.restart_secs = 600
    op_id = operations.enqueue(conn, server["id"], "service_restart", {"service": "pveproxy", "node": "pve1"})[
        "operationId"]
    conn.commit()
    # Then the scheduler's dispatch job hands it to the worker, which starts the PVE task
    running = wait_for(lambda: (r := op_row(db_url, op_id))["upid"] and r, 90)
    assert running, procs.output()
    assert running["status"] == "in_progress"

    # When the worker is killed mid-operation (no chance to clean up)
    procs.stop(first_worker, signal.SIGKILL)
    procs.worker(env=env)

    # Then the sweeper fails it once its lease is older than the timeout, in plain words
    ended = wait_for(lambda: finished(db_url, op_id), 60)
    assert ended, procs.output()
    assert ended["status"] == "failed" and ended["error_kind"] == "worker_lost"
    assert ended["error"].startswith("the worker running this operation stopped responding (no sign of life for 4 s)")
    assert running["upid"] in ended["error"]  # the PVE task may still run: say which
    conn.commit()
    actions = [(r["action"], r["actor"]) for r in conn.execute(
        "select action, actor from audit_log where details->>'operation_id' = %s order by id", (op_id,))]
    assert actions == [("operation.request", "user"), ("operation.fail", "system")]

    # And the same restart can be requested again, and runs to the end on the new worker
    opspve.restart_secs = 5
    again = operations.enqueue(conn, server["id"], "service_restart", {"service": "pveproxy", "node": "pve1"})
    conn.commit()
    assert again["status"] == "started"
    done = wait_for(lambda: finished(db_url, again["operationId"]), 90)
    assert done and done["status"] == "completed" and done["progress"] == 100, procs.output()
