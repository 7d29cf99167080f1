-- Named queries of the operations (worker/operations/, worker/cli_ops.py). The validation and the
-- "never twice" rule live in SQL (enqueue_operation, the unique partial index), so every path —
-- dashboard, CLI, cron — goes through the same door.

-- name: ops_enqueue
-- Validate and queue one operation, or find the one already running on the same target.
select public.enqueue_operation(%(server_id)s, %(type)s, %(params)s, %(created_by)s, %(user_id)s) as result;

-- name: ops_mark_dispatched
-- The operation was (or is about to be) handed to the broker.
insert into public.operation_leases (operation_id, dispatched_at) values (%(id)s, now())
on conflict (operation_id) do update set dispatched_at = excluded.dispatched_at;

-- name: ops_dispatch_due
-- Pending operations not handed to the broker yet (requested through the API), or handed over a
-- while ago and still not taken (a lost message): mark them dispatched now and return them.
with due as (
  select o.id
  from public.active_operations o
  left join public.operation_leases l on l.operation_id = o.id
  where o.status = 'pending'
    and (l.dispatched_at is null or l.dispatched_at < now() - make_interval(secs => %(redispatch_s)s))
  order by o.started_at
  limit 200
  for update of o skip locked
)
insert into public.operation_leases (operation_id, dispatched_at)
select id, now() from due
on conflict (operation_id) do update set dispatched_at = excluded.dispatched_at
returning operation_id;

-- name: ops_claim
-- Take a pending operation (the row count says whether we got it). An operation that waited
-- longer than the pending timeout is not started any more: the sweeper fails it.
update public.active_operations
set status = 'in_progress', claimed_at = now(), updated_at = now(), message = %(message)s
where id = %(id)s and status = 'pending' and started_at > now() - make_interval(secs => %(pending_timeout_s)s)
returning *;

-- name: ops_lease_take
insert into public.operation_leases (operation_id, worker, heartbeat_at) values (%(id)s, %(worker)s, now())
on conflict (operation_id) do update set worker = excluded.worker, heartbeat_at = excluded.heartbeat_at;

-- name: ops_heartbeat
update public.operation_leases set heartbeat_at = now() where operation_id = %(id)s and worker = %(worker)s;

-- name: ops_get
select o.*, s.name as server_name, now() as db_now
from public.active_operations o join public.proxmox_servers s on s.id = o.server_id
where o.id = %(id)s;

-- name: ops_progress
-- Progress and message of a running operation; the row (published) changes only when they do.
update public.active_operations
set progress = %(progress)s, message = %(message)s, updated_at = now()
where id = %(id)s and status = 'in_progress'
  and (progress is distinct from %(progress)s or message is distinct from %(message)s)
returning id;

-- name: ops_set_task
-- The PVE task the operation follows (UPID), and the node it runs on.
update public.active_operations
set upid = %(upid)s, node = coalesce(%(node)s, node), updated_at = now()
where id = %(id)s and status = 'in_progress'
returning id;

-- name: ops_resolve_node
-- Name the node of an operation requested for "the node the server's address answers on". The
-- unique index still applies: if the same operation already runs on that node under its name,
-- this raises a unique violation and the operation is failed as a duplicate.
update public.active_operations
set node = %(node)s, target = %(target)s, conflict_key = %(conflict_key)s, updated_at = now()
where id = %(id)s
returning id;

-- name: ops_running_on
-- The running operation holding a conflict key of a server.
select id, progress, message from public.active_operations
where server_id = %(server_id)s and conflict_key = %(conflict_key)s and status in ('pending', 'in_progress');

-- name: ops_complete
update public.active_operations
set status = 'completed', progress = 100, message = %(message)s, error = null, error_kind = null,
    metadata = metadata || %(metadata)s, completed_at = now(), updated_at = now()
where id = %(id)s and status in ('pending', 'in_progress')
returning *;

-- name: ops_fail
update public.active_operations
set status = 'failed', message = %(message)s, error = %(error)s, error_kind = %(kind)s,
    metadata = metadata || %(metadata)s, completed_at = now(), updated_at = now()
where id = %(id)s and status in ('pending', 'in_progress')
returning *;

-- name: ops_fail_stale
-- Operations whose worker stopped showing signs of life (killed, or its machine gone): failed, in
-- plain words. A PVE task it started may still be running on the server.
update public.active_operations o
set status = 'failed', completed_at = now(), updated_at = now(), error_kind = 'worker_lost',
    message = 'Stopped: the worker running it went away',
    error = 'the worker running this operation stopped responding (no sign of life for '
            || %(stale_s)s || ' s), so it was given up'
            || case when o.upid is not null then '; its PVE task ' || o.upid || ' may still be running on the server'
                    else '' end
from public.operation_leases l
where l.operation_id = o.id and o.status = 'in_progress'
  and coalesce(l.heartbeat_at, o.claimed_at) < now() - make_interval(secs => %(stale_s)s)
returning o.*;

-- name: ops_fail_unclaimed
-- Operations no worker took within the pending timeout: failed rather than started late.
update public.active_operations o
set status = 'failed', completed_at = now(), updated_at = now(), error_kind = 'not_started',
    message = 'Not started',
    error = 'no worker took this operation within ' || %(pending_timeout_s)s
            || ' s (is the worker running?); it was not started'
where o.status = 'pending' and o.started_at < now() - make_interval(secs => %(pending_timeout_s)s)
returning o.*;

-- name: ops_upsert_node
insert into public.operation_nodes (server_id, node, is_local, online, updated_at)
values (%(server_id)s, %(node)s, %(is_local)s, %(online)s, now())
on conflict (server_id, node) do update
  set is_local = excluded.is_local, online = excluded.online, updated_at = excluded.updated_at;

-- name: ops_forget_nodes
-- Nodes no longer in the cluster.
delete from public.operation_nodes where server_id = %(server_id)s and not (node = any(%(nodes)s::text[]));

-- name: ops_recent_cron_renewal
-- A renewal the daily job requested for this node recently (whatever became of it): the job does
-- not ask again before its next day, so a failing ACME setup is not hammered.
select id, status from public.active_operations
where server_id = %(server_id)s and operation_type = 'certificate_renewal' and created_by = 'cron'
  and target = %(node)s and started_at > now() - make_interval(hours => %(hours)s)
order by started_at desc limit 1;

-- name: ops_ssh_credentials
-- The SSH access for a node: its own row, else the server's default row (node '').
select server_id, node, host, port, username, host_key, auth_kind, secret_ciphertext
from public.server_ssh_credentials
where server_id = %(server_id)s and node in ('', coalesce(%(node)s, ''))
order by node desc limit 1;

-- name: ops_upsert_ssh_credentials
insert into public.server_ssh_credentials (server_id, node, host, port, username, host_key, auth_kind,
                                           secret_ciphertext, updated_at)
values (%(server_id)s, %(node)s, %(host)s, %(port)s, %(username)s, %(host_key)s, %(auth_kind)s,
        %(secret_ciphertext)s, now())
on conflict (server_id, node) do update set
  host = excluded.host, port = excluded.port, username = excluded.username, host_key = excluded.host_key,
  auth_kind = excluded.auth_kind, secret_ciphertext = excluded.secret_ciphertext, updated_at = now();

-- name: ops_list
-- The operations for `proxwatch ops list`, newest first.
select o.id, s.name as server_name, t.name as tenant, o.operation_type, o.status, o.node, o.target, o.progress,
       o.message, o.error, o.created_by, o.upid, o.started_at, o.completed_at
from public.active_operations o
join public.proxmox_servers s on s.id = o.server_id
join public.tenants t on t.id = o.tenant_id
where (%(server_id)s::uuid is null or o.server_id = %(server_id)s)
  and (%(tenant)s::text is null or t.name = %(tenant)s)
  and (%(status)s::text is null or o.status = %(status)s
       or (%(status)s = 'running' and o.status in ('pending', 'in_progress')))
  and (%(type)s::text is null or o.operation_type = %(type)s)
order by o.started_at desc
limit %(limit)s;

-- name: ops_guest_status
-- The status the guest's row shows (public.guests, kept by the guest sync).
select status from public.guests where server_id = %(server_id)s and vmid = %(vmid)s;

-- name: ops_name_local_node
-- Operations requested for "the node the server's address answers on" before its name was known
-- take that name now, so later requests naming the node (the daily job does) meet them under the
-- never-twice rule. A collision (both already exist) raises a unique violation; the worker then
-- fails one of them as a duplicate when it runs.
update public.active_operations o
set node = %(node)s,
    target = %(node)s || case when o.operation_type = 'service_restart' then '/' || (o.params ->> 'service') else '' end,
    conflict_key = o.operation_type || ':' || %(node)s
                   || case when o.operation_type = 'service_restart' then '/' || (o.params ->> 'service') else '' end,
    updated_at = now()
where o.server_id = %(server_id)s and o.node is null and o.status in ('pending', 'in_progress')
  and o.operation_type in ('ssh_test', 'service_restart', 'certificate_renewal')
returning o.id;
