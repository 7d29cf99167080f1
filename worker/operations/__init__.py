"""Operations: SSH test, service restart, certificate renewal and guest power actions — requested
once, run once, followed live, audited.

The life of an operation:
1. request: `enqueue_operation()` in SQL validates the input (a bad service name, an unknown guest,
   a viewer: refused with one sentence, nothing written) and inserts a pending row — or, when the
   same operation already runs on the same target, returns that one (`already_running`). A unique
   partial index over the running states makes that true under any race (tabs, users, cron).
   From Python: `enqueue()` (requests.py).
2. dispatch: the CLI and the cron job hand the new operation to the broker themselves; rows
   requested through the API (the dashboard) are picked up by `dispatch()` every second.
3. run: a worker claims the row (a conditional UPDATE: only one worker ever gets it), keeps a
   lease alive with heartbeats in operation_leases (not published), and runs the operation's
   handler (registry.py): PVE calls through worker.pve, the task (UPID) followed through its
   status and log (tasks.py), progress and message written as they change (throttled: Realtime
   messages are a budget).
4. end: completed (progress 100, what it learned in metadata) or failed with the error in plain
   words; both audited in the same transaction.
5. sweep: an operation whose worker died (no heartbeat for PROXWATCH_OPERATION_STALE_S) is failed,
   and one no worker took within PROXWATCH_OPERATION_PENDING_TIMEOUT_S is failed, not started late.

The daily certificate job (`renew_expiring`, certificate_renewal.py) reads certificates/info on
every node and requests a renewal (created_by 'cron') for every ACME certificate expiring within
30 days — through the same enqueue, so it cannot start a renewal that is already running.

The modules: requests.py (enqueue, dispatched, fail_unsent), manager.py (Operations: claim, lease,
end, dispatch, sweep), context.py (what a handler sees while it runs; the server's nodes),
tasks.py (following a PVE task), registry.py (the operation types), common.py (Tuning,
OperationFailed, the audit entry), one module per handler (ssh_test.py, service_restart.py,
certificate_renewal.py, guest_power.py). Handlers never see the manager, so the imports run one
way: manager → registry → handlers → context, tasks, common.

Adding an operation type = one handler file, one registry entry, one migration. For example an
`apt_update` that refreshes a node's package lists:

1. the handler, worker/operations/apt_update.py — `run(ctx) -> (message, metadata)`; raise
   OperationFailed with a sentence when it cannot be done:

       def run(ctx: Context) -> tuple[str, dict]:
           node = ctx.resolve_node()
           what = f"Updating the package lists of {node}"
           ctx.progress(2, what)
           # For manual test: pvesh create /nodes/<node>/apt/update
           warnings, took = run_task(ctx, node, "POST", f"nodes/{node}/apt/update", message=what, what=what)
           return f"Package lists of {node} updated in {took:.0f} s", dict(ctx.metadata)

2. its entry in REGISTRY (registry.py), at the place it takes in the SQL lists:

       OperationType("apt_update", apt_update.run, "Update failed"),

3. a migration, supabase/migrations/<timestamp>_apt_update.sql, that lets SQL accept it:

       alter table public.active_operations
         drop constraint active_operations_operation_type_check,
         add constraint active_operations_operation_type_check check (operation_type in
           ('ssh_test', 'service_restart', 'certificate_renewal', 'start', 'stop', 'shutdown', 'reset',
            'apt_update'));
       create or replace function public.operation_estimate(…)   -- … when 'apt_update' then 30000 …
       create or replace function public.enqueue_operation(…)    -- the type in its check and its
                                                                  -- message, its parameters
                                                                  -- (array['node']), its target ('node')

   (a type that acts on "the node the address answers on" also joins the list in the
   ops_name_local_node query of sql/operations.sql). The test of the operation types fails until
   Python and SQL list the same types.
"""

from worker.operations.manager import Operations
from worker.operations.requests import RequestRefused, dispatched, enqueue, fail_unsent

__all__ = ["Operations", "RequestRefused", "dispatched", "enqueue", "fail_unsent"]
