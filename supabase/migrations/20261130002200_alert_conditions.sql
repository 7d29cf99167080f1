-- Threshold alerts and reminders (issue 11): the rules' "latency above X ms for N consecutive polls"
-- and "24 h success rate below Y %", and the repeat interval while a problem lasts.
--
-- public.alert_check() (the worker's job `check_alert_conditions`, every 30 s) compares each
-- server with its rule (the most specific: the server's own, then its first tagged one, then the
-- team's): a condition that starts is a row of alert_conditions and a problem-start event, one that
-- stops deletes the row and writes the end event — in one transaction. Then, for every problem still
-- open whose start was sent longer ago than its rule's repeat interval, a reminder event (the same
-- problem) goes to the outbox. Grouping, silences and delivery are the drain's, as for every event.

alter table public.alert_events drop constraint alert_events_kind_check;
alter table public.alert_events add constraint alert_events_kind_check check (kind in (
  'offline', 'degraded', 'recovered', 'cert_expiry', 'cert_renewed', 'operation_failed',
  'latency', 'latency_ok', 'success_rate', 'success_rate_ok'));

create table public.alert_conditions (
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  kind text not null check (kind in ('latency', 'success_rate')),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  opened_at timestamptz not null,
  detail text,
  primary key (server_id, kind)
);
alter table public.alert_conditions enable row level security;
create policy alert_conditions_read on public.alert_conditions for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
revoke all on public.alert_conditions from public, anon;
revoke insert, update, delete, truncate, references, trigger on public.alert_conditions from authenticated;
grant select on public.alert_conditions to authenticated;

-- The rule that applies to each server (null columns: no rule, the defaults).
create function public.alert_effective_rules()
returns table (server_id uuid, tenant_id uuid, server_name text, latency_ms integer, latency_polls integer,
               success_rate_pct numeric, repeat_interval_s integer, success_rate numeric)
language sql stable security definer set search_path = public, pg_temp as $$
  select s.id, s.tenant_id, s.name, r.latency_ms, r.latency_polls, r.success_rate_pct, r.repeat_interval_s,
         s.success_rate
  from public.proxmox_servers s
  left join lateral (
    select * from public.alert_rules r
    where r.tenant_id = s.tenant_id and (r.server_id = s.id or r.tag = any (s.tags) or (r.server_id is null and r.tag is null))
    order by (r.server_id is not null) desc, array_position(s.tags, r.tag) nulls last
    limit 1) r on true
$$;

create function public.alert_check(p_now timestamptz default now())
returns table (opened integer, closed integer, reminded integer)
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_opened integer := 0;
  v_closed integer := 0;
  v_reminded integer := 0;
begin
  if not public.is_service_role() then
    raise exception 'alert_check() is the worker''s' using errcode = '42501';
  end if;
  create temporary table if not exists pg_temp.alert_breaches (server_id uuid, tenant_id uuid, server_name text,
                                                                kind text, detail text) on commit drop;
  truncate pg_temp.alert_breaches;
  insert into pg_temp.alert_breaches
  select e.server_id, e.tenant_id, e.server_name, 'latency',
         format('slower than %s ms in each of the last %s polls (latest %s ms)', e.latency_ms, e.latency_polls, m.latest)
  from public.alert_effective_rules() e
  cross join lateral (
    select count(*) as n, bool_and(c.success and c.response_time_ms > e.latency_ms) as slow,
           (array_agg(c.response_time_ms order by c.scheduled_at desc))[1] as latest
    from (select success, response_time_ms, scheduled_at from public.connection_metrics
          where server_id = e.server_id order by scheduled_at desc limit e.latency_polls) c) m
  where e.latency_ms is not null and m.n = e.latency_polls and m.slow
  union all
  select e.server_id, e.tenant_id, e.server_name, 'success_rate',
         format('%s %% of polls succeeded in 24 h (the rule asks for %s %%)', e.success_rate, e.success_rate_pct)
  from public.alert_effective_rules() e
  where e.success_rate_pct is not null and e.success_rate < e.success_rate_pct;

  with opened as (
    insert into public.alert_conditions (server_id, kind, tenant_id, opened_at, detail)
    select b.server_id, b.kind, b.tenant_id, p_now, b.detail from pg_temp.alert_breaches b
    on conflict (server_id, kind) do nothing
    returning server_id, kind, tenant_id, opened_at, detail
  ), events as (
    insert into public.alert_events (tenant_id, server_id, problem_key, kind, problem, subject, detail, occurred_at)
    select o.tenant_id, o.server_id, format('%s:%s:%s', o.kind, o.server_id, (extract(epoch from o.opened_at) * 1000000)::bigint),
           o.kind, true, s.name, o.detail, o.opened_at
    from opened o join public.proxmox_servers s on s.id = o.server_id
    returning 1
  )
  select count(*) into v_opened from events;

  with closed as (
    delete from public.alert_conditions c
    where not exists (select 1 from pg_temp.alert_breaches b where b.server_id = c.server_id and b.kind = c.kind)
    returning c.server_id, c.kind, c.tenant_id, c.opened_at
  ), events as (
    insert into public.alert_events (tenant_id, server_id, problem_key, kind, problem, subject, detail, occurred_at)
    select c.tenant_id, c.server_id, format('%s:%s:%s', c.kind, c.server_id, (extract(epoch from c.opened_at) * 1000000)::bigint),
           c.kind || '_ok', false, s.name, null, p_now
    from closed c join public.proxmox_servers s on s.id = c.server_id
    returning 1
  )
  select count(*) into v_closed from events;

  -- Reminders: problems still open whose last sent start is older than the rule's repeat interval.
  with open_problems as (
    select i.id::text as problem_key, i.server_id from public.incidents i where i.ended_at is null
    union all
    select format('cert:%s:%s:%s', c.server_id, c.node, (extract(epoch from c.expiring_since) * 1000000)::bigint), c.server_id
    from public.node_certificates c where c.expiring_since is not null
    union all
    select format('%s:%s:%s', c.kind, c.server_id, (extract(epoch from c.opened_at) * 1000000)::bigint), c.server_id
    from public.alert_conditions c
  ), due as (
    select distinct on (p.problem_key) ev.*
    from open_problems p
    join public.alert_effective_rules() r on r.server_id = p.server_id and r.repeat_interval_s is not null
    join public.alert_events ev on ev.problem_key = p.problem_key and ev.problem
    where not exists (select 1 from public.alert_events x where x.problem_key = p.problem_key and x.problem
                        and (x.state in ('pending', 'silenced')
                             or x.state = 'sent' and x.decided_at > p_now - make_interval(secs => r.repeat_interval_s)))
      and exists (select 1 from public.alert_events x where x.problem_key = p.problem_key and x.problem and x.state = 'sent')
    order by p.problem_key, ev.created_at desc
  ), events as (
    insert into public.alert_events (tenant_id, server_id, incident_id, problem_key, node, kind, problem, subject, detail,
                                     occurred_at)
    select d.tenant_id, d.server_id, d.incident_id, d.problem_key, d.node, d.kind, true, d.subject,
           'still: ' || coalesce(d.detail, d.kind), d.occurred_at
    from due d
    returning 1
  )
  select count(*) into v_reminded from events;
  return query select v_opened, v_closed, v_reminded;
end
$$;

revoke execute on function public.alert_effective_rules(), public.alert_check(timestamptz) from public, anon, authenticated;
grant execute on function public.alert_effective_rules(), public.alert_check(timestamptz) to service_role;

-- open_problems() learns the threshold conditions (a slow server, a low success rate).
create or replace function public.open_problems()
returns table (kind text, tenant_name text, server_id uuid, subject text, since timestamptz, detail text,
               silenced boolean)
language sql stable security invoker set search_path = public, pg_temp as $$
  with silenced as (
    select s.id as server_id from public.proxmox_servers s
    where exists (select 1 from public.alert_silences a
                  where a.tenant_id = s.tenant_id and a.starts_at <= now() and a.ends_at > now()
                    and (a.server_id = s.id or a.tag = any (s.tags) or (a.server_id is null and a.tag is null)))
  )
  select i.status::text, t.name, i.server_id, s.name, i.started_at, coalesce(i.last_error_message, i.error_message),
         i.server_id in (select server_id from silenced)
  from public.incidents i join public.proxmox_servers s on s.id = i.server_id join public.tenants t on t.id = i.tenant_id
  where i.ended_at is null
  union all
  select 'cert_expiry', t.name, c.server_id, s.name || '/' || c.node, c.expiring_since,
         format('%s expires %s', c.filename, to_char(c.not_after at time zone 'UTC', 'YYYY-MM-DD')),
         c.server_id in (select server_id from silenced)
  from public.node_certificates c join public.proxmox_servers s on s.id = c.server_id
  join public.tenants t on t.id = c.tenant_id
  where c.expiring_since is not null
  union all
  select c.kind, t.name, c.server_id, s.name, c.opened_at, c.detail, c.server_id in (select server_id from silenced)
  from public.alert_conditions c join public.proxmox_servers s on s.id = c.server_id
  join public.tenants t on t.id = c.tenant_id
  union all
  select 'channel_failing', l.tenant_name, null, 'alert channel ' || l.name, l.last_failure_at, l.last_error, false
  from public.alert_channels_list() l where l.failing
  order by 5
$$;

-- ------------------------------------------------------------------------------------------ audit
-- Channel, rule and silence changes are audited whichever path made them (the CLI's service
-- connection, the dashboard's RPCs): alert.channel.add|remove, alert.rule.set, alert.silence.add|end.
-- A channel's entry names it and its masked URL, never the URL.
create function public.alert_audit() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_tenant uuid;
  v_id uuid;
  v_server uuid;
  v_action text;
  v_details jsonb;
begin
  if tg_op = 'DELETE' and not exists (select 1 from public.tenants where id = old.tenant_id) then
    return null;   -- the team itself is being deleted: its audit goes with it
  end if;
  if tg_table_name = 'alert_channels' then
    v_tenant := coalesce(new.tenant_id, old.tenant_id);
    v_id := coalesce(new.id, old.id);
    v_action := case when tg_op = 'DELETE' then 'alert.channel.remove' else 'alert.channel.add' end;
    v_details := case when tg_op = 'DELETE'
                      then jsonb_build_object('name', old.name, 'kind', old.kind, 'url', old.url_masked)
                      else jsonb_build_object('name', new.name, 'kind', new.kind, 'url', new.url_masked) end;
  elsif tg_table_name = 'alert_rules' then
    v_tenant := new.tenant_id;
    v_id := new.id;
    v_server := new.server_id;
    v_action := 'alert.rule.set';
    v_details := to_jsonb(new) - 'tenant_id' - 'id' - 'updated_at';
  else
    if tg_op = 'UPDATE' and new.ends_at = old.ends_at then
      return null;
    end if;
    v_tenant := new.tenant_id;
    v_id := new.id;
    v_server := new.server_id;
    v_action := case when tg_op = 'INSERT' then 'alert.silence.add' else 'alert.silence.end' end;
    v_details := jsonb_build_object('tag', new.tag, 'ends_at', new.ends_at, 'reason', new.reason);
  end if;
  insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
  values (v_tenant, auth.uid(), case when auth.uid() is null then 'system' else 'user' end, v_action, v_server,
          tg_table_name, v_id::text, v_details);
  return null;
end
$$;
revoke execute on function public.alert_audit() from public, anon, authenticated;

create trigger alert_channels_audit after insert or delete on public.alert_channels
  for each row execute function public.alert_audit();
create trigger alert_rules_audit after insert or update on public.alert_rules
  for each row execute function public.alert_audit();
create trigger alert_silences_audit after insert or update on public.alert_silences
  for each row execute function public.alert_audit();
