-- Ingest (issue 12): the fold runs without JIT compilation, finds its servers by lookup, and reads
-- the pending rows' counts in one pass.
--
-- Measured (a fold of 25,000 pending polls of 1,000 servers; auto_explain): the fold took 199 ms, of
-- which the status statement 105 ms — and 91 ms of those were LLVM compiling it (JIT: Postgres' default
-- jit_above_cost of 100,000 is far below the planner's estimate for the lateral lookups over every
-- daily partition, though the statement runs in ~25 ms). `set jit = off` on the function: the fold now
-- takes 110 ms. Also: the status step joined the pending servers' ids (unnest, then a hash join or the
-- primary key) instead of testing every server row against the whole array, the servers come from the
-- hourly rows just upserted (one per server and hour) instead of a sort of every pending row, and the
-- pending rows' count, polls and age are one aggregate. The rules and the results are unchanged.

-- Folds every pending row committed before it started into the hourly and daily rollups, then
-- decides the status of the servers those rows belong to; returns the pending rows taken, the polls
-- they counted, the age of the oldest (the rollups' and statuses' lag), the servers looked at, the
-- server rows rewritten and the incidents opened, raised or closed.
create or replace function public.fold_connection_metrics_rollup(
  p_offline_after integer, p_refresh_s double precision, p_timeout_min_ms integer, p_timeout_max_ms integer,
  out pending integer, out polls bigint, out lag_s double precision, out servers integer, out updated integer,
  out incidents integer)
language plpgsql security definer set search_path = public, pg_temp set jit = off as $$
declare
  v_ids uuid[];
  c_ids uuid[];
  c_status text[];
  c_at timestamptz[];
  c_kind text[];
  c_message text[];
  v_now timestamptz := clock_timestamp();
  -- The last-10 read looks at [v_recent, v_upper) first: one daily partition, two after midnight
  -- (each partition it spans, the empty ones made ahead included, costs an index probe per server).
  v_recent timestamptz := clock_timestamp() - interval '1 hour';
  v_upper timestamptz := clock_timestamp() + interval '1 hour';
begin
  if p_offline_after is null or p_offline_after < 1 or p_refresh_s is null or p_timeout_min_ms is null
     or p_timeout_max_ms is null or p_timeout_min_ms > p_timeout_max_ms then
    raise exception 'fold_connection_metrics_rollup: offline_after >= 1, refresh and timeout bounds (min <= max) are required'
      using errcode = '22023';
  end if;
  -- One fold at a time (the delete alone already takes each row once; this keeps two folds from
  -- waiting on each other's rows, upserting the same rollup rows side by side, and deciding one
  -- server's status from two snapshots).
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
    returning server_id
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
  select t.n::integer, t.polls::bigint, extract(epoch from clock_timestamp() - t.oldest)::double precision,
         (select array_agg(distinct server_id) from hourly)
  into pending, polls, lag_s, v_ids
  from (select count(*) as n, coalesce(sum(attempts), 0) as polls, min(queued_at) as oldest from taken) t;
  servers := coalesce(cardinality(v_ids), 0);
  updated := 0;
  incidents := 0;
  if servers = 0 then
    return;
  end if;

  -- The status of those servers (a statement of its own: it sees the hourly rows just folded, and
  -- every poll committed until now).
  with inputs as materialized (
    -- each server's row as it is, its last 10 outcomes (newest first) — from the last hour when it
    -- holds 10, else from every partition — and its newest poll. (Every step is a lookup driven by
    -- the server ids: a join between CTEs, whose sizes the planner cannot know, became a nested
    -- loop of n x n rows.)
    select s.id, s.tenant_id, s.connection_status::text as old_status, s.last_health_check_at,
           s.last_connected_at, s.health_check_error as old_error, s.health_check_error_kind as old_kind,
           s.pve_version as old_version, s.nodes_online as old_online, s.nodes_total as old_total,
           s.used_fallback as old_fallback,
           rc.flags, t.scheduled_at as newest, t.success, t.created_at, t.error_kind, t.error_message, t.quorate,
           case when t.success then t.pve_version else s.pve_version end as pve_version,
           case when t.success then t.nodes_online else s.nodes_online end as nodes_online,
           case when t.success then t.nodes_total else s.nodes_total end as nodes_total,
           case when t.success then t.used_fallback else s.used_fallback end as used_fallback,
           cardinality(rc.flags) - cardinality(array_remove(rc.flags, false)) as failures,
           coalesce(array_position(rc.flags, true) - 1, cardinality(rc.flags)) as consecutive
    from unnest(v_ids) as v(id)
    join public.proxmox_servers s on s.id = v.id
    cross join lateral (
      select array_agg(m.success order by m.scheduled_at desc) as flags, count(*) as n
      from (select c.success, c.scheduled_at from public.connection_metrics c
            where c.server_id = s.id and c.scheduled_at >= v_recent and c.scheduled_at < v_upper
            order by c.scheduled_at desc limit 10) m
    ) near
    left join lateral (
      select array_agg(m.success order by m.scheduled_at desc) as flags
      from (select c.success, c.scheduled_at from public.connection_metrics c
            where near.n < 10 and c.server_id = s.id and c.scheduled_at < v_upper
            order by c.scheduled_at desc limit 10) m
    ) far on true
    cross join lateral (select coalesce(far.flags, near.flags) as flags) rc
    cross join lateral (
      select c.scheduled_at, c.success, c.created_at, c.error_kind, c.error_message, c.used_fallback,
             c.pve_version, c.nodes_online, c.nodes_total, c.quorate
      from public.connection_metrics c
      where c.server_id = s.id and c.scheduled_at < v_upper
      order by c.scheduled_at desc limit 1
    ) t
  ), reasons as (
    select i.*, array_remove(array[
             case when i.used_fallback then 'answers only on its fallback address' end,
             case when i.nodes_online is not null and coalesce(i.nodes_total, 0) <> 0
                       and i.nodes_online < i.nodes_total
                  then format('%s of %s cluster nodes offline', i.nodes_total - i.nodes_online, i.nodes_total) end,
             case when i.quorate is false then 'the cluster has lost quorum' end,
             case when i.failures >= 2 then '2 or more of the last 10 polls failed' end
           ], null) as why
    from inputs i
  ), decided as materialized (
    select r.*, st.status, st.error, st.kind,
           st.status is distinct from r.old_status or st.error is distinct from r.old_error
             or st.kind is distinct from r.old_kind or r.pve_version is distinct from r.old_version
             or r.nodes_online is distinct from r.old_online or r.nodes_total is distinct from r.old_total
             or r.used_fallback is distinct from r.old_fallback as changed
    from reasons r
    cross join lateral (
      select case when r.flags[1] then case when cardinality(r.why) > 0 then 'degraded' else 'online' end
                  when r.consecutive >= p_offline_after then 'offline'
                  else r.old_status end as status,
             case when r.flags[1] then nullif(array_to_string(r.why, '; '), '')
                  when r.consecutive >= p_offline_after then r.error_message
                  else r.old_error end as error,
             case when r.flags[1] then null
                  when r.consecutive >= p_offline_after then r.error_kind
                  else r.old_kind end as kind
    ) st
  ), due as (
    -- the rows to rewrite, with their 24 h figures and learned timeout
    select d.*,
           round(100.0 * h.successes / nullif(h.attempts, 0), 1) as success_rate,
           (h.response_sum_ms / nullif(h.response_count, 0))::integer as avg_response_time_ms,
           case when p.samples >= 5
                then least(p_timeout_max_ms, greatest(p_timeout_min_ms, round(p.p95_ms * 4)))::integer
           end as learned_timeout_ms
    from decided d
    cross join lateral (
      select sum(r.attempts) as attempts, sum(r.successes) as successes, sum(r.response_sum_ms) as response_sum_ms,
             sum(r.response_count) as response_count
      from public.connection_metrics_hourly r
      where r.server_id = d.id and r.hour > now() - interval '24 hours'
    ) h
    cross join lateral (
      select percentile_cont(0.95) within group (order by m.response_time_ms) as p95_ms, count(*) as samples
      from (select c.response_time_ms from public.connection_metrics c
            where c.server_id = d.id and c.success order by c.scheduled_at desc limit 50) m
    ) p
    where d.changed or d.last_health_check_at is null
       or v_now - d.last_health_check_at >= make_interval(secs => p_refresh_s)
  ), upd as (
    update public.proxmox_servers s set
      connection_status = d.status::public.connection_status,
      last_health_check_at = v_now,
      last_connected_at = case when d.flags[1] then coalesce(greatest(d.last_connected_at, d.created_at), v_now)
                               else d.last_connected_at end,
      health_check_error = d.error,
      health_check_error_kind = d.kind,
      pve_version = d.pve_version,
      nodes_online = d.nodes_online,
      nodes_total = d.nodes_total,
      used_fallback = d.used_fallback,
      avg_response_time_ms = d.avg_response_time_ms,
      success_rate = d.success_rate,
      learned_timeout_ms = d.learned_timeout_ms
    from due d
    where s.id = d.id
    returning s.id
  )
  -- the incident side: the changes to or from offline/degraded, at the newest poll's time
  select (select count(*) from upd)::integer,
         array_agg(d.id order by d.id), array_agg(d.status order by d.id), array_agg(d.newest order by d.id),
         array_agg(case when d.status = 'offline' then d.kind end order by d.id),
         array_agg(case when d.status in ('offline', 'degraded') then d.error end order by d.id)
  into updated, c_ids, c_status, c_at, c_kind, c_message
  from decided d
  where d.changed and (d.status in ('offline', 'degraded') or d.old_status in ('offline', 'degraded'));
  if c_ids is not null then
    select i.closed + i.opened + i.updated into incidents
    from public.record_server_incidents(c_ids, c_status, c_at, c_kind, c_message) i;
  end if;
end
$$;
