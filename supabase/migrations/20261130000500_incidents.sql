-- Incidents: the outage periods of each server (issue 10), the record alerts will fire on.
--
-- One row per outage period: it opens with the poll that takes a server from online (or unknown)
-- to offline or degraded, follows it while it moves between offline and degraded (its kind is the
-- worst seen: offline beats degraded; the first error is kept, the latest beside it), and closes
-- with the poll that brings the server back online. The worker writes it in the same transaction as
-- the status change of proxmox_servers (worker/polling.py, sql/queries.sql `record_incidents`), so
-- a status and its incident never disagree. Times are the scheduled_at of those polls (the key of
-- their connection_metrics rows). The partial unique index allows one open incident per server:
-- a retried or concurrent write cannot open a second one.
create table public.incidents (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  status public.connection_status not null check (status in ('offline', 'degraded')),
  started_at timestamptz not null,
  ended_at timestamptz check (ended_at >= started_at),
  error_kind text,
  error_message text,
  last_error_message text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create unique index incidents_one_open_per_server on public.incidents (server_id) where ended_at is null;
create index incidents_server_started_idx on public.incidents (server_id, started_at desc);
create index incidents_tenant_started_idx on public.incidents (tenant_id, started_at desc);

-- A server already offline or degraded when this migration runs gets its open incident now (its
-- real start was not recorded: the last status check stands for it), so its recovery closes one.
insert into public.incidents (tenant_id, server_id, status, started_at, error_kind, error_message,
                              last_error_message)
select tenant_id, id, connection_status, coalesce(last_health_check_at, now()),
       case when connection_status = 'offline' then health_check_error_kind end, health_check_error,
       health_check_error
from public.proxmox_servers where connection_status in ('offline', 'degraded');

alter table public.incidents enable row level security;
create policy incidents_read on public.incidents for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));

-- Written by the worker only (default privileges already withhold the rest; said here so the
-- table's grants read in one place).
revoke all on public.incidents from public, anon;
revoke insert, update, delete, truncate, references, trigger on public.incidents from authenticated;
grant select on public.incidents to authenticated;

-- Realtime: the fleet page watches every incident it may see (no filter), a server's view may
-- filter by server_id. Rows are small and change a few times per outage, so REPLICA IDENTITY FULL
-- costs little and lets a `server_id=eq.…` filter see the DELETE of a removed server's incidents
-- (see 20261130000200_replica_identity.sql: with the default identity it would fail closed).
alter table public.incidents replica identity full;
alter publication supabase_realtime add table public.incidents;

-- incidents(): the caller's incidents, newest first, with the server's name and the duration in
-- seconds (an open one's so far). Security invoker, like fleet_overview(): RLS decides.
create function public.incidents(p_server_id uuid default null, p_open_only boolean default false,
                                 p_limit integer default 50)
returns table (
  id uuid, server_id uuid, server_name text, tenant_id uuid, tenant_name text, status public.connection_status,
  started_at timestamptz, ended_at timestamptz, duration_s integer, error_kind text, error_message text,
  last_error_message text)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'p_limit must be between 1 and 1000, not %', p_limit using errcode = '22023';
  end if;
  return query
  select i.id, i.server_id, s.name, i.tenant_id, t.name, i.status, i.started_at, i.ended_at,
         greatest(0, extract(epoch from coalesce(i.ended_at, now()) - i.started_at))::integer,
         i.error_kind, i.error_message, i.last_error_message
  from public.incidents i
  join public.proxmox_servers s on s.id = i.server_id
  join public.tenants t on t.id = i.tenant_id
  where (p_server_id is null or i.server_id = p_server_id)
    and (not coalesce(p_open_only, false) or i.ended_at is null)
  order by i.started_at desc, i.id
  limit p_limit;
end
$$;

revoke execute on function public.incidents(uuid, boolean, integer) from public, anon;
grant execute on function public.incidents(uuid, boolean, integer) to authenticated, service_role;

-- live_mark() learns the new published table (the dashboard's reconciliation read).
create or replace function public.live_mark(p_tables text[], p_server_id uuid default null)
returns text
language plpgsql stable security invoker set search_path = public, pg_temp as $$
declare
  t text;
  mark text;
  marks text[] := '{}';
begin
  foreach t in array coalesce(p_tables, '{}') loop
    case t
      when 'proxmox_servers' then
        select count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) into mark
        from public.proxmox_servers where p_server_id is null or id = p_server_id;
      when 'guests' then
        select count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) into mark
        from public.guests where p_server_id is null or server_id = p_server_id;
      when 'connection_sessions' then
        select count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) into mark
        from public.connection_sessions where p_server_id is null or server_id = p_server_id;
      when 'active_operations' then
        select count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) into mark
        from public.active_operations where p_server_id is null or server_id = p_server_id;
      when 'incidents' then
        select count(*) || '/' || coalesce(sum(xmin::text::bigint), 0) into mark
        from public.incidents where p_server_id is null or server_id = p_server_id;
      when 'connection_metrics' then
        if p_server_id is null then
          select coalesce(max(id), 0)::text into mark from public.connection_metrics;
        else
          select coalesce((select id from public.connection_metrics where server_id = p_server_id
                           order by scheduled_at desc limit 1), 0)::text into mark;
        end if;
      else
        raise exception 'live_mark does not know the table %', t using errcode = '22023';
    end case;
    marks := marks || (t || '=' || mark);
  end loop;
  return array_to_string(marks, ';');
end
$$;
