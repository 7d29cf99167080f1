-- Alerts (issue 11): channels, rules, silences, the outbox and the delivery log.
--
-- The hinge is the incident: a trigger on public.incidents writes one alert_events row when a
-- problem starts (an incident opens, or an open one turns from degraded to offline) and one when it
-- ends (the incident closes) — in the transaction of the status change that wrote the incident, so
-- an incident and its outbox row never disagree. Grouping, rules and silences are decided when the
-- outbox is drained (worker/alerts.py, sql/alerts.sql), not here.
--
-- Secrets: a channel's Apprise URL carries passwords and tokens. It is stored only as a Fernet
-- ciphertext made by the application with PROXWATCH_SECRET_KEY (like server_credentials) beside a
-- masked form for display; the table is closed to anon and authenticated, never published, and read
-- by members through alert_channels_list() (masked).
--
-- Published for Realtime: alert_events (the alerts) and alert_deliveries (their delivery state);
-- neither carries a secret (a delivery's answer is masked before it is written).

-- Servers get tags, so rules and silences can address a group of them.
alter table public.proxmox_servers add column tags text[] not null default '{}';

create table public.alert_channels (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
  kind text not null check (kind ~ '^[a-z0-9+]{1,32}$'),      -- the Apprise scheme: json, mailto, slack, …
  url_ciphertext text not null,
  url_masked text not null,
  failing boolean not null default false,
  consecutive_failures integer not null default 0,
  last_error text,
  last_success_at timestamptz,
  last_failure_at timestamptz,
  created_at timestamptz not null default now(),
  unique (tenant_id, name)
);

-- A rule for a whole tenant (server_id and tag null), one server, or the servers with a tag. The
-- most specific rule of a server wins (server, then tag, then tenant); without any, the defaults
-- of the columns apply (offline, recovered, certificate expiry and failed operations on; degraded
-- off; no latency or success-rate threshold; no repeat).
create table public.alert_rules (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  server_id uuid references public.proxmox_servers (id) on delete cascade,
  tag text check (tag ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
  offline boolean not null default true,
  recovered boolean not null default true,
  degraded boolean not null default false,
  cert_expiry boolean not null default true,
  operation_failed boolean not null default true,
  flaps boolean not null default false,     -- also send problems that start and end inside the window
  latency_ms integer check (latency_ms between 1 and 600000),
  latency_polls integer not null default 3 check (latency_polls between 1 and 100),
  success_rate_pct numeric(5, 1) check (success_rate_pct > 0 and success_rate_pct <= 100),
  repeat_interval_s integer check (repeat_interval_s between 60 and 604800),
  updated_at timestamptz not null default now(),
  check (server_id is null or tag is null)
);
create unique index alert_rules_scope on public.alert_rules
  (tenant_id, coalesce(server_id, '00000000-0000-0000-0000-000000000000'::uuid), coalesce(tag, ''));

-- A silence covers one server, the servers with a tag, or the whole tenant (both null) from
-- starts_at to ends_at. Removing a silence ends it now (ended early: the row stays for the record).
create table public.alert_silences (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  server_id uuid references public.proxmox_servers (id) on delete cascade,
  tag text,
  starts_at timestamptz not null default now(),
  ends_at timestamptz not null check (ends_at > starts_at),
  reason text check (length(reason) <= 500),
  created_by text,
  created_at timestamptz not null default now(),
  check (server_id is null or tag is null)
);
create index alert_silences_tenant_idx on public.alert_silences (tenant_id, ends_at);

-- The outbox: one row per problem start or end. `state` is decided by the drain:
--   pending    waiting for its group window;
--   sent       part of a message (batch_id names it);
--   silenced   a start held back by a silence: sent when the silence ends while the problem lasts;
--   dropped    not sent, `reason` says why (rule off, began and ended inside the window, a recovery
--              of a problem nobody was told about, silenced until it ended).
create table public.alert_events (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  server_id uuid references public.proxmox_servers (id) on delete cascade,
  incident_id uuid references public.incidents (id) on delete cascade,
  -- The problem a start and its end share (an incident's id; a node certificate's expiry period);
  -- null for one-off events (a failed operation), which have no end.
  problem_key text,
  node text,
  kind text not null check (kind in ('offline', 'degraded', 'recovered', 'cert_expiry', 'cert_renewed',
                                     'operation_failed')),
  problem boolean not null,           -- true: a problem starts; false: it ends
  subject text not null,              -- the server's name (and node) when it happened
  detail text,
  occurred_at timestamptz not null,
  created_at timestamptz not null default clock_timestamp(),
  state text not null default 'pending' check (state in ('pending', 'sent', 'silenced', 'dropped')),
  reason text,
  batch_id uuid,
  decided_at timestamptz
);
create index alert_events_pending_idx on public.alert_events (tenant_id, created_at) where state in ('pending', 'silenced');
create index alert_events_incident_idx on public.alert_events (incident_id);
create index alert_events_problem_idx on public.alert_events (problem_key) where problem_key is not null;
create index alert_events_tenant_created_idx on public.alert_events (tenant_id, created_at desc);

-- One message to one channel (the key (channel_id, batch_id) is unique: a batch is never queued
-- twice for a channel), with its delivery state; each try is a row of alert_attempts (the log).
create table public.alert_deliveries (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  channel_id uuid not null references public.alert_channels (id) on delete cascade,
  channel_name text not null,
  batch_id uuid not null,
  title text not null,
  body text not null,
  notify_type text not null default 'failure' check (notify_type in ('info', 'success', 'warning', 'failure')),
  state text not null default 'pending' check (state in ('pending', 'sending', 'delivered', 'failed')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  lease_until timestamptz,
  last_answer text,
  created_at timestamptz not null default now(),
  delivered_at timestamptz,
  unique (channel_id, batch_id)
);
create index alert_deliveries_due_idx on public.alert_deliveries (next_attempt_at) where state in ('pending', 'sending');
create index alert_deliveries_tenant_idx on public.alert_deliveries (tenant_id, created_at desc);

create table public.alert_attempts (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  delivery_id uuid references public.alert_deliveries (id) on delete cascade,
  channel_id uuid references public.alert_channels (id) on delete set null,
  channel_name text not null,
  attempted_at timestamptz not null default now(),
  attempt integer not null,
  outcome text not null check (outcome in ('delivered', 'failed', 'test-delivered', 'test-failed')),
  answer text,                         -- what the service answered, secrets masked
  duration_ms integer
);
create index alert_attempts_tenant_idx on public.alert_attempts (tenant_id, attempted_at desc);

-- Node certificates: the one pveproxy serves (pveproxy-ssl.pem, else pve-ssl.pem) as the daily
-- read of GET /nodes/{node}/certificates/info and a successful renewal found it. `expiring_since`
-- is set while it expires within 14 days (the problem is open: its alert event was written), and
-- cleared — with a "renewed" event — when a later read finds it valid for longer.
create table public.node_certificates (
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  node text not null,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  filename text not null,
  subject text,
  san text[],
  fingerprint text,
  not_after timestamptz not null,
  checked_at timestamptz not null default now(),
  expiring_since timestamptz,
  primary key (server_id, node)
);

-- ------------------------------------------------------------------------------ incident → outbox
create function public.incident_alert_events() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_name text;
begin
  select name into v_name from public.proxmox_servers where id = new.server_id;
  if tg_op = 'INSERT' then
    insert into public.alert_events (tenant_id, server_id, incident_id, problem_key, kind, problem, subject, detail,
                                     occurred_at)
    values (new.tenant_id, new.server_id, new.id, new.id::text, new.status::text, true, coalesce(v_name, '?'),
            new.error_message, new.started_at);
  elsif old.ended_at is null and new.ended_at is not null then
    insert into public.alert_events (tenant_id, server_id, incident_id, problem_key, kind, problem, subject, detail,
                                     occurred_at)
    values (new.tenant_id, new.server_id, new.id, new.id::text, 'recovered', false, coalesce(v_name, '?'), null,
            new.ended_at);
  elsif new.ended_at is null and old.status = 'degraded' and new.status = 'offline' then
    insert into public.alert_events (tenant_id, server_id, incident_id, problem_key, kind, problem, subject, detail,
                                     occurred_at)
    values (new.tenant_id, new.server_id, new.id, new.id::text, 'offline', true, coalesce(v_name, '?'),
            new.last_error_message, new.updated_at);
  end if;
  return null;
end
$$;
revoke execute on function public.incident_alert_events() from public, anon, authenticated;

create trigger incidents_alert_events after insert or update on public.incidents
  for each row execute function public.incident_alert_events();

-- ------------------------------------------------------------------------ certificates → outbox
-- Within 14 days of expiry: a problem starts (once per period); valid for longer again: it ends.
create function public.node_certificate_alert_events() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_name text;
  v_expiring boolean := new.not_after <= new.checked_at + interval '14 days';
  v_was timestamptz := case when tg_op = 'UPDATE' then old.expiring_since end;
begin
  select name into v_name from public.proxmox_servers where id = new.server_id;
  if v_expiring and v_was is null then
    new.expiring_since := new.checked_at;
    insert into public.alert_events (tenant_id, server_id, problem_key, node, kind, problem, subject, detail, occurred_at)
    values (new.tenant_id, new.server_id, format('cert:%s:%s:%s', new.server_id, new.node, (extract(epoch from new.checked_at) * 1000000)::bigint), new.node,
            'cert_expiry', true, coalesce(v_name, '?') || '/' || new.node,
            format('%s expires %s (%s days left)', new.filename, to_char(new.not_after at time zone 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'),
                   greatest(0, floor(extract(epoch from new.not_after - new.checked_at) / 86400))::int),
            new.checked_at);
  elsif v_expiring then
    new.expiring_since := v_was;
  elsif v_was is not null then
    new.expiring_since := null;
    insert into public.alert_events (tenant_id, server_id, problem_key, node, kind, problem, subject, detail, occurred_at)
    values (new.tenant_id, new.server_id, format('cert:%s:%s:%s', new.server_id, new.node, (extract(epoch from v_was) * 1000000)::bigint), new.node,
            'cert_renewed', false, coalesce(v_name, '?') || '/' || new.node,
            format('valid until %s', to_char(new.not_after at time zone 'UTC', 'YYYY-MM-DD')), new.checked_at);
  end if;
  return new;
end
$$;
revoke execute on function public.node_certificate_alert_events() from public, anon, authenticated;

create trigger node_certificates_alert_events before insert or update on public.node_certificates
  for each row execute function public.node_certificate_alert_events();

-- ------------------------------------------------------------------------ failed operations → outbox
create function public.operation_alert_events() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_name text;
begin
  if new.status = 'failed' and old.status is distinct from 'failed' then
    select name into v_name from public.proxmox_servers where id = new.server_id;
    insert into public.alert_events (tenant_id, server_id, node, kind, problem, subject, detail, occurred_at)
    values (new.tenant_id, new.server_id, new.node, 'operation_failed', true,
            format('%s %s on %s', new.operation_type, new.target, coalesce(v_name, '?')),
            coalesce(new.error, new.message), coalesce(new.completed_at, now()));
  end if;
  return null;
end
$$;
revoke execute on function public.operation_alert_events() from public, anon, authenticated;

create trigger active_operations_alert_events after update of status on public.active_operations
  for each row execute function public.operation_alert_events();

-- ------------------------------------------------------------------------------------------ RLS
alter table public.alert_channels enable row level security;
alter table public.alert_rules enable row level security;
alter table public.alert_silences enable row level security;
alter table public.alert_events enable row level security;
alter table public.alert_deliveries enable row level security;
alter table public.alert_attempts enable row level security;
alter table public.node_certificates enable row level security;

create policy alert_rules_read on public.alert_rules for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy alert_silences_read on public.alert_silences for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy alert_events_read on public.alert_events for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy alert_deliveries_read on public.alert_deliveries for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy alert_attempts_read on public.alert_attempts for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy node_certificates_read on public.node_certificates for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));

-- Written by the worker and the CLI (service connection) and the RPCs below; channels hold
-- ciphertexts: no API role reads them at all.
revoke all on public.alert_channels from public, anon, authenticated;
revoke all on public.alert_rules, public.alert_silences, public.alert_events, public.alert_deliveries,
  public.alert_attempts, public.node_certificates from public, anon;
revoke insert, update, delete, truncate, references, trigger on public.alert_rules, public.alert_silences,
  public.alert_events, public.alert_deliveries, public.alert_attempts, public.node_certificates from authenticated;
grant select on public.alert_rules, public.alert_silences, public.alert_events, public.alert_deliveries,
  public.alert_attempts, public.node_certificates to authenticated;
revoke all on sequence public.alert_attempts_id_seq from public, anon, authenticated;

-- Realtime: the alerts and their delivery state (no secrets; `id` is their only key).
alter table public.alert_events replica identity full;
alter table public.alert_deliveries replica identity full;
alter publication supabase_realtime add table public.alert_events, public.alert_deliveries;

-- --------------------------------------------------------------------------------------- the API
-- alert_channels_list(): the caller's channels with their URL masked (members), every tenant's for
-- the service role.
create function public.alert_channels_list()
returns table (id uuid, tenant_id uuid, tenant_name text, name text, kind text, url_masked text, failing boolean,
               consecutive_failures integer, last_error text, last_success_at timestamptz,
               last_failure_at timestamptz, created_at timestamptz)
language sql stable security definer set search_path = public, pg_temp as $$
  select c.id, c.tenant_id, t.name, c.name, c.kind, c.url_masked, c.failing, c.consecutive_failures, c.last_error,
         c.last_success_at, c.last_failure_at, c.created_at
  from public.alert_channels c join public.tenants t on t.id = c.tenant_id
  where public.is_service_role() or c.tenant_id in (select public.my_tenant_ids())
  order by t.name, c.name
$$;

-- alert_channel_remove(): admins of the channel's tenant (and the service role).
create function public.alert_channel_remove(p_channel_id uuid) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_tenant uuid;
begin
  select tenant_id into v_tenant from public.alert_channels where id = p_channel_id;
  if v_tenant is null or not (public.is_service_role() or public.has_role(v_tenant, 'admin')) then
    raise exception 'no such alert channel, or you are not an admin of its team' using errcode = '42501';
  end if;
  delete from public.alert_channels where id = p_channel_id;
  return true;
end
$$;

-- alert_silence_add(): admins and operators silence a server, a tag or their whole team.
create function public.alert_silence_add(p_tenant_id uuid, p_server_id uuid, p_tag text, p_for_s integer,
                                         p_reason text default null) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_id uuid;
begin
  if not (public.is_service_role() or public.has_role(p_tenant_id, 'operator')) then
    raise exception 'you are not an operator or admin of this team' using errcode = '42501';
  end if;
  if p_for_s is null or p_for_s < 60 or p_for_s > 90 * 86400 then
    raise exception 'a silence lasts between 1 minute and 90 days' using errcode = '22023';
  end if;
  if p_server_id is not null and p_tag is not null then
    raise exception 'silence a server or a tag, not both' using errcode = '22023';
  end if;
  if p_server_id is not null and not exists (select 1 from public.proxmox_servers
                                             where id = p_server_id and tenant_id = p_tenant_id) then
    raise exception 'no such server in this team' using errcode = '22023';
  end if;
  insert into public.alert_silences (tenant_id, server_id, tag, ends_at, reason, created_by)
  values (p_tenant_id, p_server_id, nullif(p_tag, ''), now() + make_interval(secs => p_for_s), p_reason,
          coalesce(auth.jwt() ->> 'email', 'service'))
  returning id into v_id;
  return v_id;
end
$$;

-- alert_silence_end(): ends a silence now (the row stays for the record).
create function public.alert_silence_end(p_silence_id uuid) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_tenant uuid;
begin
  select tenant_id into v_tenant from public.alert_silences where id = p_silence_id;
  if v_tenant is null or not (public.is_service_role() or public.has_role(v_tenant, 'operator')) then
    raise exception 'no such silence, or you are not an operator or admin of its team' using errcode = '42501';
  end if;
  update public.alert_silences set ends_at = greatest(starts_at + interval '1 microsecond', now())
  where id = p_silence_id and ends_at > now();
  return true;
end
$$;

revoke execute on function public.alert_channels_list(), public.alert_channel_remove(uuid),
  public.alert_silence_add(uuid, uuid, text, integer, text), public.alert_silence_end(uuid) from public, anon;
grant execute on function public.alert_channels_list(), public.alert_channel_remove(uuid),
  public.alert_silence_add(uuid, uuid, text, integer, text), public.alert_silence_end(uuid)
  to authenticated, service_role;
