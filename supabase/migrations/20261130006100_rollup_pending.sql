-- Ingest (issue 12): the worker's writes leave the rollups to a fold.
--
-- In a live stream every server appears about once in a write (it is polled every 10 s), so the
-- rollup statement trigger upserted one hourly and one daily row per inserted poll: two thirds of
-- the time of a worker's insert. Now the worker's writer marks its transaction
-- (`set_config('proxwatch.rollup_deferred', 'on', true)`) and the trigger then appends the
-- statement's per-(server, hour) deltas to connection_metrics_rollup_pending (a plain insert, no
-- upsert), in the same transaction as the polls (durable with them). fold_connection_metrics_rollup()
-- deletes the pending rows (each row is deleted, so counted, once; folds are also serialized by
-- an advisory lock), sums them per (server, hour) and (server, day) and upserts both rollups in
-- key order: one upsert per server and hour for every poll that queued meanwhile. The worker folds
-- as soon as its writers are idle (ROLLUP_IDLE_S, worker/polling.py) and at least every
-- ROLLUP_FOLD_S (1 s) under a backlog; the periodic job fold_rollup (every 10 s) folds what a dead
-- worker left. A fold of a past hour or day goes
-- through the rollups' row triggers (fleet_uptime_correct), like a late poll.
-- Every other writer (COPY, SQL, the demo's backfill) keeps the direct upsert.

create table public.connection_metrics_rollup_pending (
  id bigint generated always as identity primary key,
  queued_at timestamptz not null default clock_timestamp(),
  server_id uuid not null,
  tenant_id uuid not null,
  hour timestamptz not null,
  attempts integer not null,
  successes integer not null,
  response_sum_ms bigint not null,
  response_count integer not null
);
-- server_stats (sql/queries.sql) adds a server's unfolded deltas to its 24 h figures.
create index connection_metrics_rollup_pending_server_idx on public.connection_metrics_rollup_pending (server_id);
comment on table public.connection_metrics_rollup_pending is
  'Rollup deltas of the worker''s writes not yet folded into connection_metrics_hourly/daily (per insert statement, one row per server and hour; fold_connection_metrics_rollup()).';

-- Nobody but the worker (service role) and the functions below: RLS on, no policy, no API grant.
alter table public.connection_metrics_rollup_pending enable row level security;
revoke all on public.connection_metrics_rollup_pending from public, anon, authenticated;
grant all on public.connection_metrics_rollup_pending to service_role;

create or replace function public.connection_metrics_rollup() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  if current_setting('proxwatch.rollup_deferred', true) = 'on' then
    insert into public.connection_metrics_rollup_pending
      (server_id, tenant_id, hour, attempts, successes, response_sum_ms, response_count)
    select server_id, min(tenant_id::text)::uuid, date_trunc('hour', scheduled_at, 'UTC'),
           count(*), count(*) filter (where success),
           coalesce(sum(response_time_ms) filter (where success), 0),
           count(response_time_ms) filter (where success)
    from new_rows
    group by server_id, date_trunc('hour', scheduled_at, 'UTC');
    return null;
  end if;
  insert into public.connection_metrics_hourly as h
    (server_id, tenant_id, hour, attempts, successes, response_sum_ms, response_count)
  select server_id, min(tenant_id::text)::uuid, date_trunc('hour', scheduled_at, 'UTC'),
         count(*), count(*) filter (where success),
         coalesce(sum(response_time_ms) filter (where success), 0),
         count(response_time_ms) filter (where success)
  from new_rows
  group by server_id, date_trunc('hour', scheduled_at, 'UTC')
  order by 1, 3
  on conflict (server_id, hour) do update set
    attempts = h.attempts + excluded.attempts,
    successes = h.successes + excluded.successes,
    response_sum_ms = h.response_sum_ms + excluded.response_sum_ms,
    response_count = h.response_count + excluded.response_count;
  insert into public.connection_metrics_daily as d
    (server_id, tenant_id, day, attempts, successes, response_sum_ms, response_count)
  select server_id, min(tenant_id::text)::uuid, (scheduled_at at time zone 'UTC')::date,
         count(*), count(*) filter (where success),
         coalesce(sum(response_time_ms) filter (where success), 0),
         count(response_time_ms) filter (where success)
  from new_rows
  group by server_id, (scheduled_at at time zone 'UTC')::date
  order by 1, 3
  on conflict (server_id, day) do update set
    attempts = d.attempts + excluded.attempts,
    successes = d.successes + excluded.successes,
    response_sum_ms = d.response_sum_ms + excluded.response_sum_ms,
    response_count = d.response_count + excluded.response_count;
  return null;
end
$$;

-- Folds every pending row committed before it started into the hourly and daily rollups; returns
-- the pending rows taken, the polls they counted, and the age of the oldest (the rollups' lag).
create function public.fold_connection_metrics_rollup(out pending integer, out polls bigint, out lag_s double precision)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  -- One fold at a time (the delete alone already takes each row once; this keeps two folds from
  -- waiting on each other's rows and upserting the same rollup rows side by side).
  perform pg_advisory_xact_lock(hashtext('public.fold_connection_metrics_rollup'));
  with taken as (
    delete from public.connection_metrics_rollup_pending returning *
  ), hourly as (
    insert into public.connection_metrics_hourly as h
      (server_id, tenant_id, hour, attempts, successes, response_sum_ms, response_count)
    select server_id, min(tenant_id::text)::uuid, hour, sum(attempts), sum(successes), sum(response_sum_ms),
           sum(response_count)
    from taken
    group by server_id, hour
    order by 1, 3
    on conflict (server_id, hour) do update set
      attempts = h.attempts + excluded.attempts,
      successes = h.successes + excluded.successes,
      response_sum_ms = h.response_sum_ms + excluded.response_sum_ms,
      response_count = h.response_count + excluded.response_count
    returning 1
  ), daily as (
    insert into public.connection_metrics_daily as d
      (server_id, tenant_id, day, attempts, successes, response_sum_ms, response_count)
    select server_id, min(tenant_id::text)::uuid, (hour at time zone 'UTC')::date, sum(attempts), sum(successes),
           sum(response_sum_ms), sum(response_count)
    from taken
    group by server_id, (hour at time zone 'UTC')::date
    order by 1, 3
    on conflict (server_id, day) do update set
      attempts = d.attempts + excluded.attempts,
      successes = d.successes + excluded.successes,
      response_sum_ms = d.response_sum_ms + excluded.response_sum_ms,
      response_count = d.response_count + excluded.response_count
    returning 1
  )
  select (select count(*) from taken)::integer, (select coalesce(sum(attempts), 0) from taken)::bigint,
         extract(epoch from clock_timestamp() - (select min(queued_at) from taken))::double precision
  into pending, polls, lag_s;
end
$$;
revoke execute on function public.fold_connection_metrics_rollup() from public, anon, authenticated;
grant execute on function public.fold_connection_metrics_rollup() to service_role;
