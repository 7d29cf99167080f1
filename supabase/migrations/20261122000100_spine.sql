-- The spine: tenants and members, Proxmox servers with their status, encrypted credentials,
-- one metric row per poll and its hourly rollup, row-level security by tenant membership,
-- the Realtime publication and the API functions connection_history() and fleet_overview().

create type public.member_role as enum ('viewer', 'operator', 'admin');
create type public.connection_status as enum ('online', 'degraded', 'offline', 'unknown');

create table public.tenants (
  id uuid primary key default gen_random_uuid(),
  name text not null unique check (length(btrim(name)) between 1 and 100),
  created_at timestamptz not null default now()
);

create table public.tenant_members (
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role public.member_role not null default 'viewer',
  created_at timestamptz not null default now(),
  primary key (tenant_id, user_id)
);
create index tenant_members_user_idx on public.tenant_members (user_id);

create table public.proxmox_servers (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (length(btrim(name)) between 1 and 100),
  base_url text not null check (base_url ~ '^https://[^/\s]+(:[0-9]+)?/?$'),
  fallback_url text check (fallback_url ~ '^https://[^/\s]+(:[0-9]+)?/?$'),
  -- verify: system CAs; pinned: the SHA-256 fingerprint below; insecure: no check (shown as such).
  tls_mode text not null default 'verify' check (tls_mode in ('verify', 'pinned', 'insecure')),
  tls_fingerprint text check (tls_fingerprint ~ '^([0-9A-F]{2}:){31}[0-9A-F]{2}$'),
  auth_kind text not null check (auth_kind in ('token', 'password')),
  poll_interval_s integer not null default 10 check (poll_interval_s between 2 and 3600),
  enabled boolean not null default true,
  -- Status, as the seed names it. Rewritten only when something a person sees changes.
  connection_status public.connection_status not null default 'unknown',
  last_health_check_at timestamptz,
  last_connected_at timestamptz,
  health_check_error text,
  health_check_error_kind text,
  avg_response_time_ms integer,
  success_rate numeric(5, 1),
  learned_timeout_ms integer,
  pve_version text,
  nodes_online integer,
  nodes_total integer,
  used_fallback boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, name),
  check ((tls_mode = 'pinned') = (tls_fingerprint is not null))
);
create index proxmox_servers_tenant_idx on public.proxmox_servers (tenant_id);

-- Secrets (API token secret or password), encrypted by the application with a key from the
-- environment. Never published, unreadable by anon and authenticated.
create table public.server_credentials (
  server_id uuid primary key references public.proxmox_servers (id) on delete cascade,
  username text not null,
  token_id text,
  secret_ciphertext text not null,
  updated_at timestamptz not null default now()
);

create table public.connection_metrics (
  id bigint generated always as identity primary key,
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  scheduled_at timestamptz not null,
  created_at timestamptz not null default now(),
  success boolean not null,
  response_time_ms integer check (response_time_ms >= 0),
  error_kind text check (error_kind in
    ('timeout', 'refused', 'dns', 'network', 'tls', 'auth', 'http', 'bad_response', 'config')),
  error_message text,
  used_fallback boolean not null default false,
  -- A retried poll message carries the same (server_id, scheduled_at): it never counts twice.
  unique (server_id, scheduled_at),
  check (success = (error_kind is null))
);
create index connection_metrics_tenant_idx on public.connection_metrics (tenant_id, scheduled_at);

-- One row per server and hour, kept by a statement trigger on connection_metrics.
-- Hours are the hour of scheduled_at (the time the poll was for), in UTC.
create table public.connection_metrics_hourly (
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  hour timestamptz not null,
  attempts integer not null default 0,
  successes integer not null default 0,
  response_sum_ms bigint not null default 0,
  response_count integer not null default 0,
  primary key (server_id, hour)
);

create function public.connection_metrics_rollup() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
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
  return null;
end
$$;

create trigger connection_metrics_rollup after insert on public.connection_metrics
  referencing new table as new_rows for each statement execute function public.connection_metrics_rollup();

-- Membership helpers. SECURITY DEFINER so policies can read tenant_members without recursion.
create function public.my_tenant_ids() returns setof uuid
language sql stable security definer set search_path = public, pg_temp as $$
  select tenant_id from public.tenant_members where user_id = auth.uid()
$$;

create function public.has_role(p_tenant_id uuid, p_role public.member_role) returns boolean
language sql stable security definer set search_path = public, pg_temp as $$
  select exists (select 1 from public.tenant_members
                 where tenant_id = p_tenant_id and user_id = auth.uid() and role >= p_role)
$$;

alter table public.tenants enable row level security;
alter table public.tenant_members enable row level security;
alter table public.proxmox_servers enable row level security;
alter table public.server_credentials enable row level security;
alter table public.connection_metrics enable row level security;
alter table public.connection_metrics_hourly enable row level security;

create policy tenants_read on public.tenants for select to authenticated
  using (id in (select public.my_tenant_ids()));
create policy tenant_members_read on public.tenant_members for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy servers_read on public.proxmox_servers for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy servers_admin_write on public.proxmox_servers for all to authenticated
  using (public.has_role(tenant_id, 'admin')) with check (public.has_role(tenant_id, 'admin'));
create policy metrics_read on public.connection_metrics for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy metrics_hourly_read on public.connection_metrics_hourly for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
-- server_credentials: no policy for anon or authenticated, and no privileges either.

revoke all on public.server_credentials from anon, authenticated;
revoke insert, update, delete, truncate on public.connection_metrics, public.connection_metrics_hourly
  from anon, authenticated;
revoke all on public.tenants, public.tenant_members, public.proxmox_servers, public.connection_metrics,
  public.connection_metrics_hourly from anon;
revoke insert, update, delete, truncate on public.tenants, public.tenant_members from authenticated;
revoke execute on function public.connection_metrics_rollup() from public, anon, authenticated;

alter publication supabase_realtime add table public.proxmox_servers, public.connection_metrics;

-- connection_history: the seed's shape, read from the rollup, every hour of the window present.
-- An hour without polls has attempts 0 and successRate null: unknown is not 100 %.
create function public.connection_history(p_server_id uuid, p_hours integer default 24) returns jsonb
language plpgsql stable security invoker set search_path = public, pg_temp as $$
declare
  result jsonb;
begin
  if p_hours is null or p_hours < 1 or p_hours > 720 then
    raise exception 'p_hours must be between 1 and 720, not %', p_hours using errcode = '22023';
  end if;
  if not exists (select 1 from public.proxmox_servers where id = p_server_id) then
    raise exception 'server % not found', p_server_id using errcode = 'P0002';
  end if;
  with hours as (
    select generate_series(date_trunc('hour', now(), 'UTC') - make_interval(hours => p_hours - 1),
                           date_trunc('hour', now(), 'UTC'), interval '1 hour') as hour
  ), rows as (
    select h.hour, coalesce(r.attempts, 0) as attempts, coalesce(r.successes, 0) as successes,
           coalesce(r.response_sum_ms, 0) as response_sum_ms, coalesce(r.response_count, 0) as response_count
    from hours h
    left join public.connection_metrics_hourly r on r.server_id = p_server_id and r.hour = h.hour
  )
  select jsonb_build_object(
    'hourly', coalesce(jsonb_agg(jsonb_build_object(
        'time', to_char(hour at time zone 'UTC', 'YYYY-MM-DD"T"HH24:00:00"Z"'),
        'successRate', case when attempts > 0 then round(100.0 * successes / attempts, 1) end,
        'avgResponseTime', case when response_count > 0 then round(response_sum_ms::numeric / response_count) end,
        'attempts', attempts) order by hour), '[]'::jsonb),
    'summary', jsonb_build_object(
        'totalAttempts', coalesce(sum(attempts), 0),
        'successCount', coalesce(sum(successes), 0),
        'avgResponseTime', case when sum(response_count) > 0
                                then round(sum(response_sum_ms)::numeric / sum(response_count)) end))
  into result
  from rows;
  return result;
end
$$;

-- fleet_overview: one row per server the caller may see, with its status and 24 h figures.
create function public.fleet_overview()
returns table (
  id uuid, tenant_id uuid, tenant_name text, name text, base_url text, fallback_url text, tls_mode text,
  connection_status public.connection_status, last_health_check_at timestamptz,
  last_connected_at timestamptz, health_check_error text, health_check_error_kind text,
  avg_response_time_ms integer, success_rate numeric, learned_timeout_ms integer, pve_version text,
  nodes_online integer, nodes_total integer, used_fallback boolean, poll_interval_s integer,
  enabled boolean, attempts_24h bigint, successes_24h bigint, avg_response_24h_ms integer)
language sql stable security invoker set search_path = public, pg_temp as $$
  select s.id, s.tenant_id, t.name, s.name, s.base_url, s.fallback_url, s.tls_mode, s.connection_status,
         s.last_health_check_at, s.last_connected_at, s.health_check_error, s.health_check_error_kind,
         s.avg_response_time_ms, s.success_rate, s.learned_timeout_ms, s.pve_version, s.nodes_online,
         s.nodes_total, s.used_fallback, s.poll_interval_s, s.enabled,
         coalesce(d.attempts, 0), coalesce(d.successes, 0), d.avg_ms
  from public.proxmox_servers s
  join public.tenants t on t.id = s.tenant_id
  left join lateral (
    select sum(h.attempts) as attempts, sum(h.successes) as successes,
           (sum(h.response_sum_ms) / nullif(sum(h.response_count), 0))::integer as avg_ms
    from public.connection_metrics_hourly h
    where h.server_id = s.id and h.hour > now() - interval '24 hours'
  ) d on true
  order by t.name, s.name
$$;

revoke execute on function public.connection_history(uuid, integer), public.fleet_overview() from public, anon;
grant execute on function public.connection_history(uuid, integer), public.fleet_overview()
  to authenticated, service_role;
