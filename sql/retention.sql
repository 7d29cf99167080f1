-- Retention: what the hourly `purge_expired` job deletes (worker/retention.py), a bounded batch
-- per statement and per transaction, oldest first, so a large backlog never holds one long lock.

-- name: purge_audit_log
-- Audit rows older than the retention; the primary key (identity, in insertion order) finds the
-- oldest first without a scan of the whole table.
with doomed as (
  select id from public.audit_log
  where created_at < now() - make_interval(days => %(days)s)
  order by id
  limit %(batch)s
  for update skip locked
)
delete from public.audit_log a using doomed where a.id = doomed.id;

-- name: purge_finished_operations
-- Completed and failed operations finished longer ago than the retention (their leases cascade);
-- pending and running ones are never touched.
with doomed as (
  select id from public.active_operations
  where status in ('completed', 'failed') and completed_at < now() - make_interval(days => %(days)s)
  order by completed_at
  limit %(batch)s
  for update skip locked
)
delete from public.active_operations o using doomed where o.id = doomed.id;
