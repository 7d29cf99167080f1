-- Guests, console tokens, and the active-connections registry (connection_sessions) with limits,
-- heartbeats, stale expiry, kill, statistics and audit — and their SQL API.
--
-- Realtime budget: guests and connection_sessions are published. A guest row is rewritten only
-- when something a person sees changes (the sync compares first). A session row changes at open
-- and at close only: heartbeats go to connection_heartbeats, which is not published, so 500 open
-- consoles heartbeating every 30 s cost no Realtime message at all.

-- ------------------------------------------------------------------------------------- guests

create table public.guests (
  id uuid primary key default gen_random_uuid(),
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  vmid integer not null check (vmid between 1 and 999999999),
  guest_type text not null check (guest_type in ('qemu', 'lxc')),
  node text not null,
  name text,
  status text not null,                 -- running, stopped, paused, unknown (its node is offline) …
  template boolean not null default false,
  tags text[] not null default '{}',
  -- Usage rounded to 5 % steps, so a busy guest does not rewrite its row on every sync.
  cpu_pct smallint check (cpu_pct between 0 and 100000),
  maxcpu integer,
  mem_pct smallint check (mem_pct between 0 and 1000),
  maxmem bigint,
  maxdisk bigint,
  -- now - uptime, kept while it moves by less than two minutes (so uptime ticking changes nothing).
  started_at timestamptz,
  hastate text,
  lock text,
  pool text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (server_id, vmid)
);
create index guests_tenant_idx on public.guests (tenant_id);

-- The last guest sync of each server: when, and the error in plain words (not published: it
-- changes on every sync).
create table public.guest_syncs (
  server_id uuid primary key references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  last_attempt_at timestamptz not null,
  last_success_at timestamptz,
  guest_count integer,
  error_kind text,
  error_message text
);

-- ---------------------------------------------------------------------------- console tokens

-- A console link carries a token: random, valid 60 s, used once, bound to the user, the server,
-- the guest (or node) and the protocol. Only its SHA-256 is stored.
create table public.console_tokens (
  token_hash bytea primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  protocol text not null check (protocol in ('vnc', 'term', 'ssh')),
  guest_type text check (guest_type in ('qemu', 'lxc')),
  vmid integer,
  node text not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  used_at timestamptz
);
create index console_tokens_expiry_idx on public.console_tokens (expires_at);

-- ------------------------------------------------------------------------ the session registry

-- Limits and timings, one row. max_total: open sessions across the installation; max_per_host:
-- open sessions per server unless connection_host_limits says otherwise.
create table public.connection_session_settings (
  id boolean primary key default true check (id),
  max_total integer not null default 100 check (max_total between 1 and 100000),
  max_per_host integer not null default 10 check (max_per_host between 1 and 100000),
  stale_after interval not null default '5 minutes' check (stale_after >= interval '1 second'),
  retention interval not null default '7 days' check (retention >= interval '1 minute'),
  updated_at timestamptz not null default now()
);
insert into public.connection_session_settings default values;

create table public.connection_host_limits (
  server_id uuid primary key references public.proxmox_servers (id) on delete cascade,
  max_sessions integer not null check (max_sessions between 1 and 100000)
);

create table public.connection_sessions (
  id uuid primary key default gen_random_uuid(),
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,  -- the connection
  tenant_id uuid not null references public.tenants (id) on delete cascade,          -- the team
  user_id uuid references auth.users (id) on delete set null,
  user_email text,
  protocol text not null check (protocol in ('vnc', 'term', 'ssh')),
  target text not null,                  -- what a person reads: "web (qemu/100)", "node pve1"
  guest_type text check (guest_type in ('qemu', 'lxc')),
  vmid integer,
  node text,
  client_ip inet,
  gateway text,                          -- the gateway process holding it (host:pid)
  started_at timestamptz not null default now(),
  -- Set at open and at close. While open, the heartbeat lives in connection_heartbeats.
  last_seen_at timestamptz not null default now(),
  status text not null default 'open' check (status in ('open', 'closed', 'expired', 'killed')),
  close_reason text,
  closed_at timestamptz,
  check ((status = 'open') = (closed_at is null))
);
create index connection_sessions_open_idx on public.connection_sessions (server_id) where status = 'open';
create index connection_sessions_tenant_idx on public.connection_sessions (tenant_id, started_at desc);
create index connection_sessions_user_idx on public.connection_sessions (user_id, started_at desc);
create index connection_sessions_closed_idx on public.connection_sessions (closed_at) where status <> 'open';

-- Heartbeats: one row per session, rewritten every 30 s by the gateway. Not published.
create table public.connection_heartbeats (
  session_id uuid primary key references public.connection_sessions (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  last_seen_at timestamptz not null default now()
) with (fillfactor = 70);

-- Attempts per day and server: opened (the tunnel worked and the limits allowed it) or failed
-- (refused by a limit, PVE, SSH, a bad link …). A failure without a known server has server_id null.
create table public.connection_session_counters (
  day date not null,
  server_id uuid references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid references public.tenants (id) on delete cascade,
  opened integer not null default 0,
  failed integer not null default 0,
  unique nulls not distinct (day, server_id)
);

alter table public.guests enable row level security;
alter table public.guest_syncs enable row level security;
alter table public.console_tokens enable row level security;
alter table public.connection_session_settings enable row level security;
alter table public.connection_host_limits enable row level security;
alter table public.connection_sessions enable row level security;
alter table public.connection_heartbeats enable row level security;
alter table public.connection_session_counters enable row level security;

create policy guests_read on public.guests for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy guest_syncs_read on public.guest_syncs for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy session_settings_read on public.connection_session_settings for select to authenticated
  using (true);
create policy host_limits_read on public.connection_host_limits for select to authenticated
  using (server_id in (select s.id from public.proxmox_servers s));
-- Session visibility follows server visibility: every member of the team sees its sessions.
create policy sessions_read on public.connection_sessions for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy heartbeats_read on public.connection_heartbeats for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy counters_read on public.connection_session_counters for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));

revoke all on public.guests, public.guest_syncs, public.connection_session_settings,
  public.connection_host_limits, public.connection_sessions, public.connection_heartbeats,
  public.connection_session_counters from anon;
revoke insert, update, delete, truncate on public.guests, public.guest_syncs,
  public.connection_session_settings, public.connection_host_limits, public.connection_sessions,
  public.connection_heartbeats, public.connection_session_counters from authenticated;
revoke all on public.console_tokens from anon, authenticated;

alter publication supabase_realtime add table public.guests, public.connection_sessions;

-- ------------------------------------------------------------------------------- helpers

create function public.protocol_icon(p_protocol text) returns text
language sql immutable set search_path = public, pg_temp as $$
  -- Material Symbols names: the dashboard shows them as :material/<name>:.
  select case p_protocol when 'vnc' then 'desktop_windows' when 'term' then 'terminal'
                         when 'ssh' then 'key' else 'help' end
$$;

create function public.session_count_attempt(p_server_id uuid, p_opened boolean) returns void
language plpgsql volatile security definer set search_path = public, pg_temp as $$
begin
  insert into public.connection_session_counters as c (day, server_id, tenant_id, opened, failed)
  values ((now() at time zone 'UTC')::date, p_server_id,
          (select tenant_id from public.proxmox_servers where id = p_server_id),
          case when p_opened then 1 else 0 end, case when p_opened then 0 else 1 end)
  on conflict (day, server_id) do update
    set opened = c.opened + excluded.opened, failed = c.failed + excluded.failed;
end
$$;

-- ------------------------------------------------------------------------- console tokens API

-- request_console: a console link token for the caller (operator or admin of the server's team).
-- A guest console (p_vmid): vnc (qemu) or term (qemu serial, lxc); the guest must be running.
-- A node shell (p_node, no p_vmid): term (PVE's shell) or ssh (needs the node's SSH access).
create function public.request_console(p_server_id uuid, p_protocol text, p_vmid integer default null,
                                       p_node text default null)
returns jsonb
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_server public.proxmox_servers%rowtype;
  v_guest public.guests%rowtype;
  v_node text;
  v_token text;
  v_expires timestamptz := now() + interval '60 seconds';
  v_target text;
  v_ssh boolean;
begin
  if auth.uid() is null then
    raise exception 'sign in to open a console' using errcode = '42501';
  end if;
  select * into v_server from public.proxmox_servers where id = p_server_id;
  if not found or v_server.tenant_id not in (select public.my_tenant_ids()) then
    raise exception 'server % not found', p_server_id using errcode = 'P0002';
  end if;
  if not public.has_role(v_server.tenant_id, 'operator') then
    raise exception 'opening a console needs the operator or admin role: viewers can only watch'
      using errcode = '42501';
  end if;
  if p_protocol is null or p_protocol not in ('vnc', 'term', 'ssh') then
    raise exception 'unknown console protocol %: use vnc, term or ssh', coalesce(p_protocol, 'null')
      using errcode = '22023';
  end if;
  if p_vmid is not null then
    select * into v_guest from public.guests where server_id = p_server_id and vmid = p_vmid;
    if not found then
      raise exception 'guest % is not known on %: wait for the next guest sync', p_vmid, v_server.name
        using errcode = 'P0002';
    end if;
    if v_guest.status <> 'running' then
      raise exception 'guest % (%) is %: start it first', coalesce(v_guest.name, '?'), p_vmid, v_guest.status
        using errcode = '22023';
    end if;
    if p_protocol = 'ssh' then
      raise exception 'SSH goes to nodes, not guests: use vnc or term for guest %', p_vmid using errcode = '22023';
    end if;
    if p_protocol = 'vnc' and v_guest.guest_type = 'lxc' then
      raise exception 'containers have no VNC display: use the terminal (term) for %', coalesce(v_guest.name, p_vmid::text)
        using errcode = '22023';
    end if;
    v_node := v_guest.node;
    v_target := coalesce(v_guest.name, 'guest') || ' (' || v_guest.guest_type || '/' || p_vmid || ')';
  else
    v_node := nullif(btrim(coalesce(p_node, '')), '');
    if v_node is null then
      raise exception 'name a guest (p_vmid) or a node (p_node)' using errcode = '22023';
    end if;
    if v_node !~ '^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$' then
      raise exception '% is not a node name', v_node using errcode = '22023';
    end if;
    if p_protocol = 'vnc' then
      raise exception 'a node shell is a terminal: use term or ssh' using errcode = '22023';
    end if;
    if p_protocol = 'ssh' then
      if to_regclass('public.server_ssh_credentials') is null then
        raise exception 'SSH access to nodes is not set up in this installation' using errcode = '22023';
      end if;
      execute 'select exists (select 1 from public.server_ssh_credentials where server_id = $1 and node in ($2, ''''))'
        into strict v_ssh using p_server_id, v_node;
      if not v_ssh then
        raise exception 'no SSH access is configured for node % of %: set it with `proxwatch ops ssh-set`',
          v_node, v_server.name using errcode = '22023';
      end if;
    end if;
    v_target := 'node ' || v_node;
  end if;
  v_token := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
  delete from public.console_tokens where expires_at < now() - interval '1 hour';
  insert into public.console_tokens (token_hash, user_id, tenant_id, server_id, protocol, guest_type, vmid, node,
                                     expires_at)
  values (sha256(convert_to(v_token, 'UTF8')), auth.uid(), v_server.tenant_id, p_server_id, p_protocol,
          v_guest.guest_type, p_vmid, v_node, v_expires);
  return jsonb_build_object('token', v_token, 'expires_at', v_expires, 'protocol', p_protocol,
                            'server_name', v_server.name, 'target', v_target);
end
$$;

-- console_token: what a token opens, for the gateway (service role). p_consume takes it (once,
-- atomically); without it the token is only checked (the console page). A token that cannot be
-- used raises PT410 (PostgREST: HTTP 410) with the reason a person can act on.
create function public.console_token(p_token text, p_consume boolean default false) returns jsonb
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_hash bytea := sha256(convert_to(coalesce(p_token, ''), 'UTF8'));
  t public.console_tokens%rowtype;
  v_server public.proxmox_servers%rowtype;
  v_guest public.guests%rowtype;
begin
  if p_consume then
    update public.console_tokens set used_at = now()
    where token_hash = v_hash and used_at is null and expires_at > now()
    returning * into t;
  else
    select * into t from public.console_tokens where token_hash = v_hash and used_at is null and expires_at > now();
  end if;
  if t.token_hash is null then
    select * into t from public.console_tokens where token_hash = v_hash;
    if t.token_hash is null then
      raise exception 'this console link is not valid: open the console from the dashboard' using errcode = 'PT410';
    elsif t.used_at is not null then
      raise exception 'this console link was used already: open the console again from the dashboard'
        using errcode = 'PT410';
    else
      raise exception 'this console link expired (links last 60 s): open the console again from the dashboard'
        using errcode = 'PT410';
    end if;
  end if;
  if not exists (select 1 from public.tenant_members
                 where tenant_id = t.tenant_id and user_id = t.user_id and role >= 'operator') then
    raise exception 'you no longer have the operator role in this team' using errcode = 'PT410';
  end if;
  select * into v_server from public.proxmox_servers where id = t.server_id;
  select * into v_guest from public.guests where server_id = t.server_id and vmid = t.vmid;
  return jsonb_build_object(
    'user_id', t.user_id, 'user_email', (select email from auth.users where id = t.user_id),
    'tenant_id', t.tenant_id, 'server_id', t.server_id, 'server_name', v_server.name,
    'protocol', t.protocol, 'guest_type', t.guest_type, 'vmid', t.vmid, 'node', t.node,
    'guest_name', v_guest.name, 'base_url', v_server.base_url,
    'target', case when t.vmid is null then 'node ' || t.node
                   else coalesce(v_guest.name, 'guest') || ' (' || t.guest_type || '/' || t.vmid || ')' end);
end
$$;

-- -------------------------------------------------------------------------- session lifecycle

-- session_capacity: the refusal a new session would meet now, or null (a cheap early check so a
-- console at the limit does not first cost a PVE ticket; open_session decides atomically).
create function public.session_capacity(p_server_id uuid) returns text
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  cfg public.connection_session_settings%rowtype;
  v_host_max integer;
begin
  select * into cfg from public.connection_session_settings where id;
  if (select count(*) from public.connection_sessions where status = 'open') >= cfg.max_total then
    return format('maximum number of connections (%s) reached', cfg.max_total);
  end if;
  v_host_max := coalesce((select max_sessions from public.connection_host_limits where server_id = p_server_id),
                         cfg.max_per_host);
  if (select count(*) from public.connection_sessions where status = 'open' and server_id = p_server_id) >= v_host_max then
    return format('maximum number of connections to host %s (%s) reached',
                  (select name from public.proxmox_servers where id = p_server_id), v_host_max);
  end if;
  return null;
end
$$;

-- open_session: register a session whose tunnel works, within the limits. Every open takes the
-- one settings row's lock first, so counting and inserting are atomic across gateways: two opens
-- can never both take the last place. At a limit it raises PT429 (PostgREST: HTTP 429) with the sentence to show.
create function public.open_session(p_user_id uuid, p_server_id uuid, p_protocol text, p_target text,
                                    p_guest_type text default null, p_vmid integer default null,
                                    p_node text default null, p_client_ip inet default null,
                                    p_gateway text default null, p_user_email text default null)
returns public.connection_sessions
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  cfg public.connection_session_settings%rowtype;
  v_server public.proxmox_servers%rowtype;
  v_host_max integer;
  s public.connection_sessions%rowtype;
begin
  select * into cfg from public.connection_session_settings where id for update;
  select * into v_server from public.proxmox_servers where id = p_server_id;
  if not found then
    raise exception 'server % not found', p_server_id using errcode = 'P0002';
  end if;
  if (select count(*) from public.connection_sessions where status = 'open') >= cfg.max_total then
    raise exception 'maximum number of connections (%) reached', cfg.max_total using errcode = 'PT429';
  end if;
  v_host_max := coalesce((select max_sessions from public.connection_host_limits where server_id = p_server_id),
                         cfg.max_per_host);
  if (select count(*) from public.connection_sessions where status = 'open' and server_id = p_server_id) >= v_host_max then
    raise exception 'maximum number of connections to host % (%) reached', v_server.name, v_host_max
      using errcode = 'PT429';
  end if;
  insert into public.connection_sessions (server_id, tenant_id, user_id, user_email, protocol, target, guest_type,
                                          vmid, node, client_ip, gateway)
  values (p_server_id, v_server.tenant_id, p_user_id,
          coalesce(p_user_email, (select email from auth.users where id = p_user_id)), p_protocol, p_target,
          p_guest_type, p_vmid, p_node, p_client_ip, p_gateway)
  returning * into s;
  insert into public.connection_heartbeats (session_id, tenant_id, last_seen_at) values (s.id, s.tenant_id, s.started_at);
  perform public.session_count_attempt(p_server_id, true);
  insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
  values (s.tenant_id, p_user_id, 'user', 'connection.session.open', p_server_id, 'session', s.id::text,
          jsonb_build_object('protocol', p_protocol, 'target', p_target, 'client_ip', host(p_client_ip),
                             'gateway', p_gateway));
  return s;
end
$$;

-- close_session: the end of an open session (either side ended it, or the gateway stopped).
-- Returns false when it was not open any more (killed or expired meanwhile): nothing changes then.
create function public.close_session(p_session_id uuid, p_reason text) returns boolean
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  s public.connection_sessions%rowtype;
begin
  update public.connection_sessions c
     set status = 'closed', close_reason = left(coalesce(p_reason, 'closed'), 500), closed_at = now(),
         last_seen_at = now()
   where c.id = p_session_id and c.status = 'open'
  returning * into s;
  if not found then
    return false;
  end if;
  insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
  values (s.tenant_id, s.user_id, 'user', 'connection.session.close', s.server_id, 'session', s.id::text,
          jsonb_build_object('status', 'closed', 'reason', s.close_reason, 'protocol', s.protocol,
                             'target', s.target,
                             'duration_s', round(extract(epoch from s.closed_at - s.started_at))));
  return true;
end
$$;

-- heartbeat_sessions: the gateway's heartbeat for every session it holds, in one statement.
-- Returns the ids among them that are no longer open (killed, expired): the gateway drops those.
create function public.heartbeat_sessions(p_ids uuid[]) returns setof uuid
language plpgsql volatile security definer set search_path = public, pg_temp as $$
begin
  update public.connection_heartbeats h set last_seen_at = now()
    from public.connection_sessions s
   where s.id = h.session_id and s.status = 'open' and h.session_id = any(p_ids);
  return query
    select i from unnest(p_ids) as i
    where not exists (select 1 from public.connection_sessions s where s.id = i and s.status = 'open');
end
$$;

-- kill_session: an admin of the session's team (or the service role) ends an open session. The
-- gateway holding it sees the change within a second and drops both sides.
create function public.kill_session(p_session_id uuid) returns jsonb
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  s public.connection_sessions%rowtype;
  v_by text;
begin
  select * into s from public.connection_sessions where id = p_session_id for update;
  if not found or (auth.uid() is not null and s.tenant_id not in (select public.my_tenant_ids())) then
    raise exception 'session % not found', p_session_id using errcode = 'P0002';
  end if;
  if auth.uid() is not null and not public.has_role(s.tenant_id, 'admin') then
    raise exception 'only an admin of the team can kill a session' using errcode = '42501';
  end if;
  if s.status <> 'open' then
    raise exception 'session % is % already', p_session_id, s.status using errcode = '22023';
  end if;
  v_by := case when auth.uid() is null then 'an administrator (command line)'
               else coalesce((select email from auth.users where id = auth.uid()), 'an administrator') end;
  update public.connection_sessions
     set status = 'killed', close_reason = 'killed by ' || v_by, closed_at = now(), last_seen_at = now()
   where id = p_session_id
  returning * into s;
  insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
  values (s.tenant_id, auth.uid(), case when auth.uid() is null then 'system' else 'user' end,
          'connection.session.kill', s.server_id, 'session', s.id::text,
          jsonb_build_object('session_user_id', s.user_id, 'session_user_email', s.user_email,
                             'protocol', s.protocol, 'target', s.target));
  perform pg_notify('proxwatch_sessions', s.id::text);
  return jsonb_build_object('id', s.id, 'status', s.status, 'close_reason', s.close_reason,
                            'closed_at', s.closed_at);
end
$$;

-- cleanup_stale_connections: expire open sessions without a heartbeat for p_max_age (default:
-- the configured grace, 5 minutes). Users may run it for the teams they administer; the service
-- role (the periodic job, the CLI) for all. Returns how many were expired.
create function public.cleanup_stale_connections(p_max_age interval default null) returns integer
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_max_age interval;
  v_count integer;
begin
  v_max_age := coalesce(p_max_age, (select stale_after from public.connection_session_settings where id));
  if v_max_age < interval '1 second' or v_max_age > interval '30 days' then
    raise exception 'p_max_age must be between 1 second and 30 days, not %', v_max_age using errcode = '22023';
  end if;
  if auth.uid() is not null and not exists (select 1 from public.tenant_members
                                            where user_id = auth.uid() and role = 'admin') then
    raise exception 'only admins can clean up connections' using errcode = '42501';
  end if;
  with stale as (
    select s.id from public.connection_sessions s
    join public.connection_heartbeats h on h.session_id = s.id
    where s.status = 'open' and h.last_seen_at < now() - v_max_age
      and (auth.uid() is null or public.has_role(s.tenant_id, 'admin'))
    for update of s skip locked
  ), expired as (
    update public.connection_sessions s
       set status = 'expired', closed_at = now(),
           close_reason = 'no heartbeat for ' || v_max_age::text || ': the gateway or the browser went away'
      from stale where s.id = stale.id
    returning s.*
  ), audited as (
    insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
    select e.tenant_id, e.user_id, case when auth.uid() is null then 'cron' else 'user' end,
           'connection.session.close', e.server_id, 'session', e.id::text,
           jsonb_build_object('status', 'expired', 'reason', e.close_reason, 'protocol', e.protocol,
                              'target', e.target, 'expired_by', auth.uid())
    from expired e
    returning 1
  )
  select count(*) into v_count from audited;
  return v_count;
end
$$;

-- purge_closed_sessions: delete sessions closed longer ago than the retention (service role).
create function public.purge_closed_sessions() returns integer
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_count integer;
begin
  delete from public.connection_sessions
   where status <> 'open' and closed_at < now() - (select retention from public.connection_session_settings where id);
  get diagnostics v_count = row_count;
  delete from public.console_tokens where expires_at < now() - interval '1 hour';
  return v_count;
end
$$;

-- -------------------------------------------------------------------------------- the read API

-- active_connections: open sessions the caller may see, newest first. p_team_id: a team (tenant)
-- id, or 'personal' for the caller's own sessions. Filtering by another user is for admins only.
create function public.active_connections(p_team_id text default null, p_protocol text default null,
                                          p_user_id uuid default null, p_limit integer default 50,
                                          p_offset integer default 0)
returns table (id uuid, connection_id uuid, server_name text, team_id uuid, team_name text, user_id uuid,
               user_email text, protocol text, protocol_icon text, target text, guest_type text, vmid integer,
               node text, client_ip text, started_at timestamptz, last_seen_at timestamptz, status text,
               can_kill boolean, total_count bigint)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
declare
  v_team uuid;
  v_personal boolean := false;
begin
  if p_limit is null or p_limit < 1 or p_limit > 500 then
    raise exception 'p_limit must be between 1 and 500, not %', coalesce(p_limit::text, 'null') using errcode = '22023';
  end if;
  if p_offset is null or p_offset < 0 then
    raise exception 'p_offset must be 0 or more, not %', coalesce(p_offset::text, 'null') using errcode = '22023';
  end if;
  if p_protocol is not null and p_protocol not in ('vnc', 'term', 'ssh') then
    raise exception 'unknown protocol %: use vnc, term or ssh', p_protocol using errcode = '22023';
  end if;
  if p_team_id = 'personal' then
    if auth.uid() is null then
      raise exception 'personal needs a signed-in user' using errcode = '22023';
    end if;
    v_personal := true;
  elsif p_team_id is not null then
    begin
      v_team := p_team_id::uuid;
    exception when invalid_text_representation then
      raise exception 'p_team_id must be a team id or ''personal'', not %', p_team_id using errcode = '22023';
    end;
    if auth.uid() is not null and v_team not in (select public.my_tenant_ids()) then
      raise exception 'you are not a member of team %', v_team using errcode = '42501';
    end if;
  end if;
  if p_user_id is not null and auth.uid() is not null and p_user_id <> auth.uid()
     and not exists (select 1 from public.tenant_members m where m.user_id = auth.uid() and m.role = 'admin') then
    raise exception 'only admins can list the connections of another user' using errcode = '42501';
  end if;
  return query
    select s.id, s.server_id, v.name, s.tenant_id, t.name, s.user_id, s.user_email, s.protocol,
           public.protocol_icon(s.protocol), s.target, s.guest_type, s.vmid, s.node, host(s.client_ip),
           s.started_at, greatest(s.last_seen_at, h.last_seen_at), s.status,
           auth.uid() is null or public.has_role(s.tenant_id, 'admin'), count(*) over ()
    from public.connection_sessions s
    join public.proxmox_servers v on v.id = s.server_id
    join public.tenants t on t.id = s.tenant_id
    left join public.connection_heartbeats h on h.session_id = s.id
    where s.status = 'open'
      and (v_team is null or s.tenant_id = v_team)
      and (not v_personal or s.user_id = auth.uid())
      and (p_protocol is null or s.protocol = p_protocol)
      and (p_user_id is null or s.user_id = p_user_id)
    order by s.started_at desc, s.id
    limit p_limit offset p_offset;
end
$$;

-- connection_summary: per connection (server) the caller may see, its sessions by protocol.
-- p_active_only: only servers with open sessions ("Active connections"); else all ("All").
create function public.connection_summary(p_active_only boolean default false)
returns table (connection_id uuid, server_name text, team_id uuid, team_name text, connection_status text,
               active_sessions bigint, vnc bigint, term bigint, ssh bigint, recent_sessions bigint,
               last_started_at timestamptz, max_sessions integer)
language sql stable security invoker set search_path = public, pg_temp as $$
  select v.id, v.name, v.tenant_id, t.name, v.connection_status::text,
         coalesce(a.active, 0), coalesce(a.vnc, 0), coalesce(a.term, 0), coalesce(a.ssh, 0),
         coalesce(a.recent, 0), a.last_started,
         coalesce(l.max_sessions, (select max_per_host from public.connection_session_settings where id))
  from public.proxmox_servers v
  join public.tenants t on t.id = v.tenant_id
  left join public.connection_host_limits l on l.server_id = v.id
  left join lateral (
    select count(*) filter (where s.status = 'open') as active,
           count(*) filter (where s.status = 'open' and s.protocol = 'vnc') as vnc,
           count(*) filter (where s.status = 'open' and s.protocol = 'term') as term,
           count(*) filter (where s.status = 'open' and s.protocol = 'ssh') as ssh,
           count(*) as recent, max(s.started_at) as last_started
    from public.connection_sessions s where s.server_id = v.id
  ) a on true
  where not coalesce(p_active_only, false) or coalesce(a.active, 0) > 0
  order by t.name, v.name
$$;

-- user_connections: a user's open sessions (the caller's own by default; another user's for admins).
create function public.user_connections(p_user_id uuid default null) returns jsonb
language plpgsql stable security invoker set search_path = public, pg_temp as $$
declare
  v_user uuid := coalesce(p_user_id, auth.uid());
  v_rows jsonb;
begin
  if v_user is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  select coalesce(jsonb_agg(to_jsonb(c) - 'total_count' - 'can_kill' order by c.started_at desc), '[]'::jsonb)
    into v_rows
  from public.active_connections(null, null, v_user, 500, 0) c;
  return jsonb_build_object('connections', v_rows, 'count', jsonb_array_length(v_rows));
end
$$;

-- session_stats: attempts (total = successful + failed), what is open now per host, and the limits.
create function public.session_stats() returns jsonb
language sql stable security invoker set search_path = public, pg_temp as $$
  select jsonb_build_object(
    'total', coalesce((select sum(opened + failed) from public.connection_session_counters), 0),
    'successful', coalesce((select sum(opened) from public.connection_session_counters), 0),
    'failed', coalesce((select sum(failed) from public.connection_session_counters), 0),
    'active', (select count(*) from public.connection_sessions where status = 'open'),
    'by_protocol', (select jsonb_build_object(
        'vnc', count(*) filter (where protocol = 'vnc'), 'term', count(*) filter (where protocol = 'term'),
        'ssh', count(*) filter (where protocol = 'ssh'))
      from public.connection_sessions where status = 'open'),
    'per_host', coalesce((select jsonb_agg(jsonb_build_object(
          'connection_id', c.connection_id, 'server_name', c.server_name, 'team_name', c.team_name,
          'active', c.active_sessions, 'max', c.max_sessions) order by c.team_name, c.server_name)
        from public.connection_summary(false) c), '[]'::jsonb),
    'limits', (select jsonb_build_object('max_total', max_total, 'max_per_host', max_per_host,
                                         'stale_after_s', extract(epoch from stale_after)::integer,
                                         'retention_s', extract(epoch from retention)::integer)
               from public.connection_session_settings where id))
$$;

-- guests_overview: the guests the caller may see, with their server and its last sync.
create function public.guests_overview(p_server_id uuid default null)
returns table (id uuid, server_id uuid, server_name text, team_id uuid, team_name text, base_url text,
               vmid integer, guest_type text, node text, name text, status text, template boolean, tags text[],
               cpu_pct smallint, maxcpu integer, mem_pct smallint, maxmem bigint, maxdisk bigint,
               started_at timestamptz, hastate text, lock text, pool text, updated_at timestamptz,
               last_sync_at timestamptz, sync_error text)
language sql stable security invoker set search_path = public, pg_temp as $$
  select g.id, g.server_id, v.name, g.tenant_id, t.name, v.base_url, g.vmid, g.guest_type, g.node, g.name,
         g.status, g.template, g.tags, g.cpu_pct, g.maxcpu, g.mem_pct, g.maxmem, g.maxdisk, g.started_at,
         g.hastate, g.lock, g.pool, g.updated_at, y.last_success_at, y.error_message
  from public.guests g
  join public.proxmox_servers v on v.id = g.server_id
  join public.tenants t on t.id = g.tenant_id
  left join public.guest_syncs y on y.server_id = g.server_id
  where p_server_id is null or g.server_id = p_server_id
  order by t.name, v.name, g.vmid
$$;

-- console_nodes: the nodes the caller may open a shell on (seen in the guest list or with SSH
-- access set up), and whether SSH is configured — never the SSH details themselves.
create function public.console_nodes() returns table (server_id uuid, server_name text, team_id uuid,
                                                     node text, ssh_configured boolean)
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
  return query execute format($q$
    with nodes as (
      select g.server_id, g.node from public.guests g
      %s
    )
    select n.server_id, v.name, v.tenant_id, n.node, %s
    from (select distinct server_id, node from nodes) n
    join public.proxmox_servers v on v.id = n.server_id
    where auth.uid() is null or v.tenant_id in (select public.my_tenant_ids())
    order by v.name, n.node $q$,
    case when to_regclass('public.server_ssh_credentials') is null then ''
         else 'union select c.server_id, c.node from public.server_ssh_credentials c where c.node <> ''''' end,
    case when to_regclass('public.server_ssh_credentials') is null then 'false'
         else 'exists (select 1 from public.server_ssh_credentials c where c.server_id = n.server_id
                                     and c.node in (n.node, ''''))' end);
end
$$;

revoke execute on function public.protocol_icon(text), public.session_count_attempt(uuid, boolean),
  public.request_console(uuid, text, integer, text), public.console_token(text, boolean),
  public.session_capacity(uuid),
  public.open_session(uuid, uuid, text, text, text, integer, text, inet, text, text),
  public.close_session(uuid, text), public.heartbeat_sessions(uuid[]), public.kill_session(uuid),
  public.cleanup_stale_connections(interval), public.purge_closed_sessions(),
  public.active_connections(text, text, uuid, integer, integer), public.connection_summary(boolean),
  public.user_connections(uuid), public.session_stats(), public.guests_overview(uuid), public.console_nodes()
  from public, anon, authenticated;
-- The API of the dashboard (PostgREST serves these with the user's JWT).
grant execute on function public.protocol_icon(text), public.request_console(uuid, text, integer, text),
  public.kill_session(uuid), public.cleanup_stale_connections(interval),
  public.active_connections(text, text, uuid, integer, integer), public.connection_summary(boolean),
  public.user_connections(uuid), public.session_stats(), public.guests_overview(uuid), public.console_nodes()
  to authenticated;
grant execute on function public.protocol_icon(text), public.session_count_attempt(uuid, boolean),
  public.request_console(uuid, text, integer, text), public.console_token(text, boolean),
  public.session_capacity(uuid),
  public.open_session(uuid, uuid, text, text, text, integer, text, inet, text, text),
  public.close_session(uuid, text), public.heartbeat_sessions(uuid[]), public.kill_session(uuid),
  public.cleanup_stale_connections(interval), public.purge_closed_sessions(),
  public.active_connections(text, text, uuid, integer, integer), public.connection_summary(boolean),
  public.user_connections(uuid), public.session_stats(), public.guests_overview(uuid), public.console_nodes()
  to service_role;
