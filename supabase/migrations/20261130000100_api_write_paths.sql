-- Tables are not an API. Supabase serves every table and sequence the API roles can touch, and a
-- Supabase project grants ALL on new tables, sequences and functions in public to anon and
-- authenticated (alter default privileges … in supabase/cli's initial schema; sql/compat.sql does
-- the same on plain Postgres). RLS guards rows, not TRUNCATE, not sequences, not SECURITY DEFINER
-- functions. So:
--
-- * anon holds nothing in public; authenticated holds SELECT (under RLS) and nothing else on tables,
--   nothing on sequences (setval on audit_log_id_seq broke every audited insert), and EXECUTE only
--   where a migration granted it. New tables and sequences arrive that way too (default privileges
--   below); tests/integration/test_api_write_paths.py walks every table, sequence and function.
-- * Admins change a server through update_server(), never the table: changing where a server is
--   reached (an address, the TLS mode, the fingerprint) drops its stored credentials and its pinned
--   fingerprint unless new ones come in the same call, so a secret is only ever sent to the address
--   it was entered for. Status columns are written by the workers only.
-- * "No user id" no longer means "the service role": public.is_service_role() asks the role.
-- * Session registry: every member of a team sees who holds its sessions (e-mail); the client IP is
--   for the team's admins and the session's own user only — on every path (the table, Realtime,
--   active_connections(), user_connections()).
-- * The audit log's read policy evaluates the caller's admin teams once per query (an InitPlan),
--   not has_role() once per row.

-- ------------------------------------------------------------------------------------- helpers

-- The trusted caller: the workers and the CLI (a direct connection as the database owner: no JWT
-- claims, no API role) or a request with the service_role key (PostgREST sets role service_role and
-- the claims). A JWT without `sub` is not the service role, and neither is anything that runs as
-- anon or authenticated, whatever its claims say. current_setting('role') is the role PostgREST
-- (or SET ROLE) chose; it stays the caller's inside SECURITY DEFINER functions.
create function public.is_service_role() returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
  select current_setting('role') not in ('anon', 'authenticated')
     and (auth.jwt() is null or coalesce(auth.role(), '') = 'service_role')
$$;

-- The caller's teams in which it holds at least p_role, as an array: policies compare
-- `tenant_id = any ((select public.my_role_tenant_ids('admin'))::uuid[])`, which Postgres evaluates once
-- per query (an InitPlan) instead of once per row.
create function public.my_role_tenant_ids(p_role public.member_role) returns uuid[]
language sql stable security definer set search_path = public, pg_temp as $$
  select coalesce(array_agg(tenant_id), '{}') from public.tenant_members
  where user_id = auth.uid() and role >= p_role
$$;

-- --------------------------------------------------------------------------------------- grants

-- Objects that belong to an extension are the extension's business.
do $$
declare
  r record;
begin
  for r in
    select c.oid::regclass as rel, c.relkind from pg_class c
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
      and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                                                  and d.deptype = 'e')
  loop
    if r.relkind = 'S' then
      execute format('revoke all on sequence %s from public, anon, authenticated', r.rel);
    else
      execute format('revoke all on table %s from public, anon', r.rel);
      execute format('revoke insert, update, delete, truncate, references, trigger on table %s from public, authenticated',
                     r.rel);
    end if;
  end loop;
  for r in
    select p.oid::regprocedure as fn from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public'
      and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                                                  and d.deptype = 'e')
  loop
    execute format('revoke execute on function %s from public, anon', r.fn);
  end loop;
end
$$;

-- New tables and sequences of the migrations (created by this role) start closed too. SELECT on
-- tables stays granted to authenticated (RLS decides; a table without a policy shows nothing).
alter default privileges in schema public revoke all on tables from anon;
alter default privileges in schema public
  revoke insert, update, delete, truncate, references, trigger on tables from authenticated;
alter default privileges in schema public revoke all on sequences from anon, authenticated;
alter default privileges in schema public revoke execute on functions from anon;

-- Secrets and internals: nothing for the API roles, not even SELECT.
revoke all on public.server_credentials, public.server_ssh_credentials, public.console_tokens,
  public.operation_leases from anon, authenticated;

-- The client IP of a session is for the team's admins and the session's user: they read it through
-- active_connections(). The table (and so Realtime, which sends only the columns the subscriber
-- may select) gives members every other column.
revoke select on public.connection_sessions from authenticated;
grant select (id, server_id, tenant_id, user_id, user_email, protocol, target, guest_type, vmid, node, gateway,
              started_at, last_seen_at, status, close_reason, closed_at)
  on public.connection_sessions to authenticated;

grant execute on function public.is_service_role(), public.my_role_tenant_ids(public.member_role)
  to authenticated, service_role;

-- ------------------------------------------------------------------------------------- policies

-- Nobody writes proxmox_servers through the table any more (the grant is gone too).
drop policy servers_admin_write on public.proxmox_servers;

drop policy audit_admin_read on public.audit_log;
create policy audit_admin_read on public.audit_log for select to authenticated
  using (tenant_id = any ((select public.my_role_tenant_ids('admin'))::uuid[]));

-- ------------------------------------------------------------------------------- update_server

-- A PVE API address as the CLI accepts it (worker/admin.py check_url): https://HOST[:PORT], the
-- port 8006 when none is given, no path. Raises 22023 with a sentence otherwise.
create function public.server_url(p_url text, p_what text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v_url text := btrim(p_url);
  v_port text;
begin
  if v_url !~ '^https://' then
    raise exception 'the % % must start with https:// (the PVE API is served over HTTPS, port 8006)',
      p_what, quote_literal(v_url) using errcode = '22023';
  end if;
  if v_url !~ '^https://[^/\s:]+(:[0-9]{1,5})?/?$' then
    raise exception 'the % % must be https://HOST[:PORT] with nothing after it', p_what, quote_literal(v_url)
      using errcode = '22023';
  end if;
  v_url := rtrim(v_url, '/');
  v_port := substring(v_url from ':([0-9]+)$');
  if v_port is null then
    return v_url || ':8006';
  end if;
  if v_port::integer not between 1 and 65535 then
    raise exception 'the % % has a port outside 1-65535', p_what, quote_literal(v_url) using errcode = '22023';
  end if;
  return v_url;
end
$$;

-- update_server: change a server's name, addresses, TLS settings, poll interval or enabled flag.
-- Admins of the server's team (over PostgREST with their JWT) and the service role may call it;
-- null leaves a field as it is, p_fallback_url '' removes the fallback address, a fingerprint
-- implies tls_mode pinned.
--
-- A secret is only ever sent to the address it was entered for: when an address, the TLS mode or
-- the fingerprint changes, the server's credentials are deleted unless p_credentials replaces them
-- in the same call, and a pinned fingerprint is dropped (back to verify: system CAs) when an
-- address changes without a new one. p_credentials ({"username", "token_id", "secret_ciphertext"},
-- the secret encrypted with the workers' key) comes from the service role only: nothing else holds
-- that key. A server without credentials polls as a configuration error until they are set again
-- (`proxwatch servers update NAME --token …`). Status columns are not touched: the workers write them.
create function public.update_server(p_server_id uuid, p_name text default null, p_base_url text default null,
                                     p_fallback_url text default null, p_tls_mode text default null,
                                     p_tls_fingerprint text default null, p_poll_interval_s integer default null,
                                     p_enabled boolean default null, p_credentials jsonb default null)
returns jsonb
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_service boolean := public.is_service_role();
  v_uid uuid := auth.uid();
  v_old public.proxmox_servers%rowtype;
  v_new public.proxmox_servers%rowtype;
  v_hex text;
  v_key text;
  v_auth_kind text;
  v_address_changed boolean;
  v_reach_changed boolean;
  v_trust_dropped boolean := false;
  v_credentials_dropped boolean := false;
  v_changed jsonb := '{}'::jsonb;
begin
  if not v_service and v_uid is null then
    raise exception 'sign in to change a server' using errcode = '42501';
  end if;
  select * into v_old from public.proxmox_servers where id = p_server_id for update;
  if not found or (not v_service and not v_old.tenant_id = any (public.my_role_tenant_ids('viewer'))) then
    raise exception 'server % not found', p_server_id using errcode = 'PT404';
  end if;
  if not v_service and not v_old.tenant_id = any (public.my_role_tenant_ids('admin')) then
    raise exception 'only an admin of the team can change a server' using errcode = '42501';
  end if;
  if p_credentials is not null and not v_service then
    raise exception 'credentials are set by the service role only (`proxwatch servers update NAME --token …`):'
                    ' they are encrypted with the workers'' key' using errcode = '42501';
  end if;
  v_new := v_old;

  if p_name is not null then
    v_new.name := btrim(p_name);
    if length(v_new.name) not between 1 and 100 then
      raise exception 'the server name must have 1 to 100 characters' using errcode = '22023';
    end if;
    if exists (select 1 from public.proxmox_servers
               where tenant_id = v_old.tenant_id and name = v_new.name and id <> v_old.id) then
      raise exception 'the team has a server named % already', quote_literal(v_new.name) using errcode = '22023';
    end if;
  end if;
  if p_base_url is not null then
    v_new.base_url := public.server_url(p_base_url, 'URL');
  end if;
  if p_fallback_url is not null then
    v_new.fallback_url := case when btrim(p_fallback_url) = '' then null
                             else public.server_url(p_fallback_url, 'fallback URL') end;
  end if;
  if p_tls_mode is not null and p_tls_mode not in ('verify', 'pinned', 'insecure') then
    raise exception 'unknown TLS mode %: use verify, pinned or insecure', quote_literal(p_tls_mode)
      using errcode = '22023';
  end if;
  if p_tls_fingerprint is not null then
    v_hex := upper(replace(btrim(p_tls_fingerprint), ':', ''));
    if v_hex !~ '^[0-9A-F]{64}$' then
      raise exception '% is not a SHA-256 fingerprint (64 hex digits, optionally colon-separated)',
        quote_literal(p_tls_fingerprint) using errcode = '22023';
    end if;
    if coalesce(p_tls_mode, 'pinned') <> 'pinned' then
      raise exception 'a fingerprint goes with TLS mode pinned, not %', p_tls_mode using errcode = '22023';
    end if;
    v_new.tls_mode := 'pinned';
    v_new.tls_fingerprint := (select string_agg(substr(v_hex, i, 2), ':' order by i)
                            from generate_series(1, 63, 2) as i);
  elsif p_tls_mode is not null then
    v_new.tls_mode := p_tls_mode;
    if p_tls_mode <> 'pinned' then
      v_new.tls_fingerprint := null;
    elsif v_old.tls_fingerprint is null then
      raise exception 'TLS mode pinned needs the certificate''s SHA-256 fingerprint (p_tls_fingerprint)'
        using errcode = '22023';
    end if;
  end if;
  if p_poll_interval_s is not null then
    if p_poll_interval_s not between 2 and 3600 then
      raise exception 'the interval must be between 2 and 3600 seconds, not %', p_poll_interval_s
        using errcode = '22023';
    end if;
    v_new.poll_interval_s := p_poll_interval_s;
  end if;
  v_new.enabled := coalesce(p_enabled, v_old.enabled);

  -- A pinned fingerprint vouches for the address it was taken from.
  v_address_changed := v_new.base_url is distinct from v_old.base_url or v_new.fallback_url is distinct from v_old.fallback_url;
  if v_address_changed and p_tls_mode = 'pinned' and p_tls_fingerprint is null then
    raise exception 'the address changes: pin the certificate of the new address (p_tls_fingerprint)'
      using errcode = '22023';
  end if;
  if v_address_changed and v_new.tls_mode = 'pinned' and p_tls_fingerprint is null then
    v_new.tls_mode := 'verify';
    v_new.tls_fingerprint := null;
    v_trust_dropped := true;
  end if;
  v_reach_changed := v_address_changed or v_new.tls_mode is distinct from v_old.tls_mode
                     or v_new.tls_fingerprint is distinct from v_old.tls_fingerprint;

  if p_credentials is not null then
    if jsonb_typeof(p_credentials) <> 'object' then
      raise exception 'p_credentials must be a JSON object' using errcode = '22023';
    end if;
    for v_key in select jsonb_object_keys(p_credentials) loop
      if v_key not in ('username', 'token_id', 'secret_ciphertext') then
        raise exception 'p_credentials takes username, token_id and secret_ciphertext, not %', quote_literal(v_key)
          using errcode = '22023';
      end if;
    end loop;
    if coalesce(p_credentials ->> 'username', '') !~ '^[^@\s]+@[^@\s]+$' then
      raise exception 'the credentials need a user with a realm, like root@pam' using errcode = '22023';
    end if;
    if coalesce(p_credentials ->> 'secret_ciphertext', '') = '' then
      raise exception 'the credentials need secret_ciphertext' using errcode = '22023';
    end if;
    v_auth_kind := case when nullif(p_credentials ->> 'token_id', '') is null then 'password' else 'token' end;
    v_new.auth_kind := v_auth_kind;
  elsif v_reach_changed then
    v_credentials_dropped := exists (select 1 from public.server_credentials where server_id = v_old.id);
  end if;

  update public.proxmox_servers
     set name = v_new.name, base_url = v_new.base_url, fallback_url = v_new.fallback_url, tls_mode = v_new.tls_mode,
         tls_fingerprint = v_new.tls_fingerprint, poll_interval_s = v_new.poll_interval_s, enabled = v_new.enabled,
         auth_kind = v_new.auth_kind, updated_at = now()
   where id = v_old.id;
  if p_credentials is not null then
    insert into public.server_credentials as c (server_id, username, token_id, secret_ciphertext, updated_at)
    values (v_old.id, p_credentials ->> 'username', nullif(p_credentials ->> 'token_id', ''),
            p_credentials ->> 'secret_ciphertext', now())
    on conflict (server_id) do update
      set username = excluded.username, token_id = excluded.token_id,
          secret_ciphertext = excluded.secret_ciphertext, updated_at = now();
  elsif v_credentials_dropped then
    delete from public.server_credentials where server_id = v_old.id;
  end if;

  select coalesce(jsonb_object_agg(n.key, n.value), '{}'::jsonb) into v_changed
  from jsonb_each(to_jsonb(v_new)) n
  where n.key in ('name', 'base_url', 'fallback_url', 'tls_mode', 'tls_fingerprint', 'poll_interval_s', 'enabled',
                  'auth_kind')
    and n.value is distinct from to_jsonb(v_old) -> n.key;
  insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
  values (v_old.tenant_id, case when v_service then null else v_uid end,
          case when v_service then 'system' else 'user' end, 'server.update', v_old.id,
          'server', v_old.id::text,
          jsonb_build_object('changed', v_changed, 'credentials_replaced', p_credentials is not null,
                             'credentials_dropped', v_credentials_dropped, 'trust_dropped', v_trust_dropped));

  return jsonb_build_object(
    'id', v_old.id, 'name', v_new.name, 'base_url', v_new.base_url, 'fallback_url', v_new.fallback_url,
    'tls_mode', v_new.tls_mode, 'tls_fingerprint', v_new.tls_fingerprint, 'auth_kind', v_new.auth_kind,
    'poll_interval_s', v_new.poll_interval_s, 'enabled', v_new.enabled,
    'credentials_replaced', p_credentials is not null, 'credentials_dropped', v_credentials_dropped,
    'trust_dropped', v_trust_dropped,
    'has_credentials', exists (select 1 from public.server_credentials where server_id = v_old.id));
end
$$;

revoke execute on function public.server_url(text, text),
  public.update_server(uuid, text, text, text, text, text, integer, boolean, jsonb) from public, anon;
grant execute on function public.update_server(uuid, text, text, text, text, text, integer, boolean, jsonb)
  to authenticated, service_role;
grant execute on function public.server_url(text, text) to service_role;
revoke execute on function public.server_url(text, text) from authenticated;

-- ------------------------------------------------- functions that took "no user id" for the service role

-- kill_session: an admin of the session's team, or the service role, ends an open session.
create or replace function public.kill_session(p_session_id uuid) returns jsonb
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_service boolean := public.is_service_role();
  v_uid uuid := auth.uid();
  s public.connection_sessions%rowtype;
  v_by text;
begin
  if not v_service and v_uid is null then
    raise exception 'sign in to kill a session' using errcode = '42501';
  end if;
  select * into s from public.connection_sessions where id = p_session_id for update;
  if not found or (not v_service and not s.tenant_id = any (public.my_role_tenant_ids('viewer'))) then
    raise exception 'session % not found', p_session_id using errcode = 'P0002';
  end if;
  if not v_service and not s.tenant_id = any (public.my_role_tenant_ids('admin')) then
    raise exception 'only an admin of the team can kill a session' using errcode = '42501';
  end if;
  if s.status <> 'open' then
    raise exception 'session % is % already', p_session_id, s.status using errcode = '22023';
  end if;
  v_by := case when v_service then 'an administrator (command line)'
               else coalesce((select email from auth.users where id = v_uid), 'an administrator') end;
  update public.connection_sessions
     set status = 'killed', close_reason = 'killed by ' || v_by, closed_at = now(), last_seen_at = now()
   where id = p_session_id
  returning * into s;
  insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
  values (s.tenant_id, case when v_service then null else v_uid end, case when v_service then 'system' else 'user' end,
          'connection.session.kill', s.server_id, 'session', s.id::text,
          jsonb_build_object('session_user_id', s.user_id, 'session_user_email', s.user_email,
                             'protocol', s.protocol, 'target', s.target));
  perform pg_notify('proxwatch_sessions', s.id::text);
  return jsonb_build_object('id', s.id, 'status', s.status, 'close_reason', s.close_reason,
                            'closed_at', s.closed_at);
end
$$;

-- cleanup_stale_connections: admins for the teams they administer; the service role for all.
create or replace function public.cleanup_stale_connections(p_max_age interval default null) returns integer
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_service boolean := public.is_service_role();
  v_uid uuid := auth.uid();
  v_admin_of uuid[];
  v_max_age interval;
  v_count integer;
begin
  if not v_service and v_uid is null then
    raise exception 'sign in to clean up connections' using errcode = '42501';
  end if;
  v_max_age := coalesce(p_max_age, (select stale_after from public.connection_session_settings where id));
  if v_max_age < interval '1 second' or v_max_age > interval '30 days' then
    raise exception 'p_max_age must be between 1 second and 30 days, not %', v_max_age using errcode = '22023';
  end if;
  v_admin_of := public.my_role_tenant_ids('admin');
  if not v_service and cardinality(v_admin_of) = 0 then
    raise exception 'only admins can clean up connections' using errcode = '42501';
  end if;
  with stale as (
    select s.id from public.connection_sessions s
    join public.connection_heartbeats h on h.session_id = s.id
    where s.status = 'open' and h.last_seen_at < now() - v_max_age
      and (v_service or s.tenant_id = any (v_admin_of))
    for update of s skip locked
  ), expired as (
    update public.connection_sessions s
       set status = 'expired', closed_at = now(),
           close_reason = 'no heartbeat for ' || v_max_age::text || ': the gateway or the browser went away'
      from stale where s.id = stale.id
    returning s.*
  ), audited as (
    insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
    select e.tenant_id, e.user_id, case when v_service then 'cron' else 'user' end,
           'connection.session.close', e.server_id, 'session', e.id::text,
           jsonb_build_object('status', 'expired', 'reason', e.close_reason, 'protocol', e.protocol,
                              'target', e.target, 'expired_by', case when v_service then null else v_uid end)
    from expired e
    returning 1
  )
  select count(*) into v_count from audited;
  return v_count;
end
$$;

-- active_connections: open sessions the caller may see, newest first. Every member of a team sees
-- its sessions and who holds them; the client IP only for the team's admins, the session's own
-- user and the service role. Filtering by a user (p_user_id) narrows that list, nothing more — so
-- user_connections(other) shows exactly what the unfiltered list shows of that user.
-- SECURITY DEFINER to read client_ip, which authenticated may not select: it filters by team itself.
create or replace function public.active_connections(p_team_id text default null, p_protocol text default null,
                                                     p_user_id uuid default null, p_limit integer default 50,
                                                     p_offset integer default 0)
returns table (id uuid, connection_id uuid, server_name text, team_id uuid, team_name text, user_id uuid,
               user_email text, protocol text, protocol_icon text, target text, guest_type text, vmid integer,
               node text, client_ip text, started_at timestamptz, last_seen_at timestamptz, status text,
               can_kill boolean, total_count bigint)
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  v_service boolean := public.is_service_role();
  v_uid uuid := auth.uid();
  v_member_of uuid[];
  v_admin_of uuid[];
  v_team uuid;
  v_personal boolean := false;
begin
  if not v_service and v_uid is null then
    raise exception 'sign in to list connections' using errcode = '42501';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 500 then
    raise exception 'p_limit must be between 1 and 500, not %', coalesce(p_limit::text, 'null') using errcode = '22023';
  end if;
  if p_offset is null or p_offset < 0 then
    raise exception 'p_offset must be 0 or more, not %', coalesce(p_offset::text, 'null') using errcode = '22023';
  end if;
  if p_protocol is not null and p_protocol not in ('vnc', 'term', 'ssh') then
    raise exception 'unknown protocol %: use vnc, term or ssh', p_protocol using errcode = '22023';
  end if;
  v_member_of := public.my_role_tenant_ids('viewer');
  v_admin_of := public.my_role_tenant_ids('admin');
  if p_team_id = 'personal' then
    if v_uid is null then
      raise exception 'personal needs a signed-in user' using errcode = '22023';
    end if;
    v_personal := true;
  elsif p_team_id is not null then
    begin
      v_team := p_team_id::uuid;
    exception when invalid_text_representation then
      raise exception 'p_team_id must be a team id or ''personal'', not %', p_team_id using errcode = '22023';
    end;
    if not v_service and not v_team = any (v_member_of) then
      raise exception 'you are not a member of team %', v_team using errcode = '42501';
    end if;
  end if;
  return query
    select s.id, s.server_id, v.name, s.tenant_id, t.name, s.user_id, s.user_email, s.protocol,
           public.protocol_icon(s.protocol), s.target, s.guest_type, s.vmid, s.node,
           case when v_service or s.user_id = v_uid or s.tenant_id = any (v_admin_of) then host(s.client_ip) end,
           s.started_at, greatest(s.last_seen_at, h.last_seen_at), s.status,
           v_service or s.tenant_id = any (v_admin_of), count(*) over ()
    from public.connection_sessions s
    join public.proxmox_servers v on v.id = s.server_id
    join public.tenants t on t.id = s.tenant_id
    left join public.connection_heartbeats h on h.session_id = s.id
    where s.status = 'open'
      and (v_service or s.tenant_id = any (v_member_of))
      and (v_team is null or s.tenant_id = v_team)
      and (not v_personal or s.user_id = v_uid)
      and (p_protocol is null or s.protocol = p_protocol)
      and (p_user_id is null or s.user_id = p_user_id)
    order by s.started_at desc, s.id
    limit p_limit offset p_offset;
end
$$;

-- console_nodes: the nodes the caller may open a shell on, and whether SSH is configured.
create or replace function public.console_nodes() returns table (server_id uuid, server_name text, team_id uuid,
                                                                 node text, ssh_configured boolean)
language sql stable security definer set search_path = public, pg_temp as $$
  with nodes as (
    select g.server_id, g.node from public.guests g
    union
    select c.server_id, c.node from public.server_ssh_credentials c where c.node <> ''
  )
  select n.server_id, v.name, v.tenant_id, n.node,
         exists (select 1 from public.server_ssh_credentials c where c.server_id = n.server_id
                                                                 and c.node in (n.node, ''))
  from nodes n
  join public.proxmox_servers v on v.id = n.server_id
  where public.is_service_role() or v.tenant_id = any (public.my_role_tenant_ids('viewer'))
  order by v.name, n.node
$$;
