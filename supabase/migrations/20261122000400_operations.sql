-- Operations: SSH test, service restart, certificate renewal and guest power actions, tracked in
-- active_operations (published for Realtime, history kept), never run twice at once (a unique
-- partial index over the running states), requested through request_operation() by operators and
-- admins, run by the workers (worker/operations.py), audited.
--
-- Also here: the SSH credentials of a server's nodes (secrets encrypted by the application, never
-- published, unreadable by anon/authenticated), the nodes the workers have seen per server, and
-- the workers' leases on running operations (heartbeats kept out of the published table, so a
-- heartbeat costs no Realtime message).

create table public.active_operations (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  operation_type text not null check (operation_type in
    ('ssh_test', 'service_restart', 'certificate_renewal', 'start', 'stop', 'shutdown', 'reset')),
  status text not null default 'pending' check (status in ('pending', 'in_progress', 'completed', 'failed')),
  -- The node it acts on; null until a worker resolves "the node the server's address answers on".
  node text,
  target_type text not null check (target_type in ('node', 'service', 'certificate', 'guest')),
  -- What it acts on, as a person reads it: 'pve1', 'pve1/pveproxy', 'qemu/100'.
  target text not null,
  -- Operations with the same key on one server never run at once (see the index below). Power
  -- actions on one guest share a key: a stop does not race a start of the same guest.
  conflict_key text not null,
  params jsonb not null default '{}'::jsonb,
  -- What the operation learned: latency and version (ssh_test), certificate expiry, task log tail …
  metadata jsonb not null default '{}'::jsonb,
  progress integer not null default 0 check (progress between 0 and 100),
  message text,
  error text,
  error_kind text,
  upid text check (upid ~ '^UPID:'),
  estimated_duration_ms integer check (estimated_duration_ms > 0),
  created_by text not null default 'user' check (created_by in ('user', 'cron', 'auto')),
  requested_by uuid references auth.users (id) on delete set null,
  started_at timestamptz not null default now(),   -- when it was requested (the seed's started_at)
  claimed_at timestamptz,                          -- when a worker began it
  completed_at timestamptz,
  updated_at timestamptz not null default now(),
  check ((status in ('completed', 'failed')) = (completed_at is not null)),
  check (status <> 'failed' or error is not null)
);

-- Never twice: one pending or in-progress operation per (server, conflict key). Races between
-- tabs, users, cron and retries all end at this index.
create unique index active_operations_running_uidx on public.active_operations (server_id, conflict_key)
  where status in ('pending', 'in_progress');
create index active_operations_server_idx on public.active_operations (server_id, started_at desc);
create index active_operations_tenant_idx on public.active_operations (tenant_id, started_at desc);
create index active_operations_open_idx on public.active_operations (status, started_at)
  where status in ('pending', 'in_progress');

-- A worker's hold on an operation: when it was handed to the broker, who runs it, its last sign
-- of life. Not published: heartbeats are not something a person sees.
create table public.operation_leases (
  operation_id uuid primary key references public.active_operations (id) on delete cascade,
  dispatched_at timestamptz,
  worker text,
  heartbeat_at timestamptz
);

-- Nodes the workers have seen per server (from /cluster/status), so requests can name a node and
-- "the node the server's address answers on" (local) has a name before anything runs.
create table public.operation_nodes (
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  node text not null,
  is_local boolean not null default false,
  online boolean,
  updated_at timestamptz not null default now(),
  primary key (server_id, node)
);

-- SSH access to a server's nodes for ssh_test: host, port, user, the pinned host key (OpenSSH
-- public key line) and a password or private key encrypted by the application (worker.crypto).
-- node '' is the default for every node without its own row.
create table public.server_ssh_credentials (
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  node text not null default '',
  host text not null check (length(btrim(host)) between 1 and 255),
  port integer not null default 22 check (port between 1 and 65535),
  username text not null check (length(btrim(username)) between 1 and 64),
  host_key text not null check (host_key ~ '^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+$'),
  auth_kind text not null check (auth_kind in ('password', 'key')),
  secret_ciphertext text not null,
  updated_at timestamptz not null default now(),
  primary key (server_id, node)
);

alter table public.active_operations enable row level security;
alter table public.operation_leases enable row level security;
alter table public.operation_nodes enable row level security;
alter table public.server_ssh_credentials enable row level security;

-- Members read their tenant's operations (the dashboard, and Realtime checks each change against
-- this); nobody but the service role and request_operation() writes them.
create policy operations_read on public.active_operations for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy operation_nodes_read on public.operation_nodes for select to authenticated
  using (server_id in (select s.id from public.proxmox_servers s where s.tenant_id in (select public.my_tenant_ids())));

revoke all on public.active_operations, public.operation_nodes from anon;
revoke insert, update, delete, truncate on public.active_operations, public.operation_nodes from authenticated;
revoke all on public.operation_leases, public.server_ssh_credentials from anon, authenticated;

alter publication supabase_realtime add table public.active_operations;

-- PVE's restartable services (POST /nodes/{node}/services/{service}/restart, pve-manager
-- PVE/API2/Services.pm): anything else is refused before anything runs.
create function public.operation_services() returns text[]
language sql immutable set search_path = public, pg_temp as $$
  select array['chrony', 'corosync', 'cron', 'ksmtuned', 'lxcfs', 'postfix', 'proxmox-firewall', 'pve-cluster',
               'pve-firewall', 'pve-ha-crm', 'pve-ha-lrm', 'pve-lxc-syscalld', 'pvedaemon', 'pvefw-logger',
               'pveproxy', 'pvescheduler', 'pvestatd', 'qmeventd', 'spiceproxy', 'sshd', 'syslog',
               'systemd-journald', 'systemd-timesyncd']
$$;

-- The duration to expect, in ms: the median of the last five completed runs of the same operation
-- on the same target, else a default per type (a DNS-01 ACME order takes ~80 s).
create function public.operation_estimate(p_server_id uuid, p_type text, p_target text) returns integer
language sql stable set search_path = public, pg_temp as $$
  select coalesce(
    (select least(3600000, greatest(1000, round(percentile_cont(0.5) within group (
              order by extract(epoch from (r.completed_at - r.started_at)) * 1000))))::integer
       from (select completed_at, started_at from public.active_operations
              where server_id = p_server_id and operation_type = p_type and target = p_target
                and status = 'completed'
              order by completed_at desc limit 5) r
     having count(*) > 0),
    case p_type when 'ssh_test' then 5000 when 'service_restart' then 20000
                when 'certificate_renewal' then 90000 when 'start' then 15000 when 'stop' then 10000
                when 'shutdown' then 60000 when 'reset' then 5000 end)
$$;

-- enqueue_operation: validate, then insert one pending operation — or find the one already
-- running on the same target. Bad input raises 22023 (HTTP 400), or PT404 (HTTP 404 through
-- PostgREST) for something that does not exist, with one sentence, and writes nothing. Every
-- accepted request (started or already running) is an audit entry. The service role calls it
-- directly (CLI, cron); users go through request_operation().
create function public.enqueue_operation(p_server_id uuid, p_type text, p_params jsonb, p_created_by text,
                                         p_user_id uuid default null) returns jsonb
language plpgsql volatile set search_path = public, pg_temp as $$
declare
  v_server public.proxmox_servers%rowtype;
  v_params jsonb := coalesce(p_params, '{}'::jsonb);
  v_allowed text[];
  v_key text;
  v_node text;
  v_known text[];
  v_target text;
  v_target_type text;
  v_conflict text;
  v_vmid bigint;
  v_guest_type text;
  v_guest_name text;
  v_service text;
  v_id uuid;
  v_existing public.active_operations%rowtype;
  v_estimate integer;
  v_message text;
  v_attempt integer := 0;
begin
  select * into v_server from public.proxmox_servers where id = p_server_id;
  if not found then
    raise exception 'server % not found', p_server_id using errcode = 'PT404';
  end if;
  if p_created_by is null or p_created_by not in ('user', 'cron', 'auto') then
    raise exception 'created_by must be user, cron or auto, not %', coalesce(p_created_by, 'null')
      using errcode = '22023';
  end if;
  if p_type is null or p_type not in ('ssh_test', 'service_restart', 'certificate_renewal',
                                      'start', 'stop', 'shutdown', 'reset') then
    raise exception 'unknown operation type %: use ssh_test, service_restart, certificate_renewal, start, stop, shutdown or reset',
      coalesce(quote_literal(p_type), 'null') using errcode = '22023';
  end if;
  if jsonb_typeof(v_params) <> 'object' then
    raise exception 'the parameters must be a JSON object, not %', jsonb_typeof(v_params) using errcode = '22023';
  end if;

  v_allowed := case p_type
    when 'ssh_test' then array['node']
    when 'service_restart' then array['node', 'service']
    when 'certificate_renewal' then array['node', 'force', 'order', 'reason']
    else array['vmid', 'node'] end;
  for v_key in select jsonb_object_keys(v_params) loop
    if not v_key = any(v_allowed) then
      raise exception '% takes no parameter %: its parameters are %', p_type, quote_literal(v_key),
        array_to_string(v_allowed, ', ') using errcode = '22023';
    end if;
  end loop;
  foreach v_key in array array['force', 'order'] loop
    if v_params ? v_key and jsonb_typeof(v_params -> v_key) <> 'boolean' then
      raise exception 'the parameter % must be true or false', v_key using errcode = '22023';
    end if;
  end loop;

  -- The node: given, or the node the server's address answers on when the workers know its name.
  if v_params ? 'node' then
    if jsonb_typeof(v_params -> 'node') <> 'string'
       or (v_params ->> 'node') !~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$' then
      raise exception '% is not a PVE node name', v_params -> 'node' using errcode = '22023';
    end if;
    v_node := v_params ->> 'node';
    select array_agg(node order by node) into v_known from public.operation_nodes where server_id = p_server_id;
    if v_known is not null and not v_node = any(v_known) then
      raise exception 'server % has no node %: its nodes are %', v_server.name, quote_literal(v_node),
        array_to_string(v_known, ', ') using errcode = 'PT404';
    end if;
  else
    select node into v_node from public.operation_nodes where server_id = p_server_id and is_local;
  end if;

  if p_type = 'service_restart' then
    if not v_params ? 'service' or jsonb_typeof(v_params -> 'service') <> 'string' then
      raise exception 'service_restart needs the parameter service (one of %)',
        array_to_string(public.operation_services(), ', ') using errcode = '22023';
    end if;
    v_service := v_params ->> 'service';
    if not v_service = any(public.operation_services()) then
      raise exception '% is not a service PVE can restart: use one of %', quote_literal(v_service),
        array_to_string(public.operation_services(), ', ') using errcode = '22023';
    end if;
    v_target_type := 'service';
    v_target := coalesce(v_node, '') || '/' || v_service;
    v_conflict := 'service_restart:' || v_target;
  elsif p_type in ('start', 'stop', 'shutdown', 'reset') then
    if not v_params ? 'vmid' or jsonb_typeof(v_params -> 'vmid') not in ('number', 'string')
       or (v_params ->> 'vmid') !~ '^[1-9][0-9]{2,8}$' then
      raise exception '% needs the parameter vmid, a guest id from 100 to 999999999', p_type using errcode = '22023';
    end if;
    v_vmid := (v_params ->> 'vmid')::bigint;
    -- The guest must be one the guest sync (worker/inventory.py) has seen on this server.
    select g.node, g.guest_type, g.name into v_node, v_guest_type, v_guest_name
      from public.guests g where g.server_id = p_server_id and g.vmid = v_vmid;
    if v_guest_type is null then
      raise exception 'server % has no guest %', v_server.name, v_vmid using errcode = 'PT404';
    end if;
    if v_params ? 'node' and v_params ->> 'node' <> v_node then
      raise exception 'guest % runs on node %, not %', v_vmid, v_node, v_params ->> 'node' using errcode = '22023';
    end if;
    if p_type = 'reset' and v_guest_type = 'lxc' then
      raise exception 'guest % is a container: containers cannot be reset (use stop and start)', v_vmid
        using errcode = '22023';
    end if;
    v_target_type := 'guest';
    v_target := v_guest_type || '/' || v_vmid;
    v_conflict := 'power:' || v_target;
    v_params := v_params || jsonb_build_object('vmid', v_vmid, 'guest_type', v_guest_type, 'node', v_node)
                || case when v_guest_name is not null then jsonb_build_object('guest_name', v_guest_name)
                        else '{}'::jsonb end;
  else
    if p_type = 'ssh_test' and not exists (
        select 1 from public.server_ssh_credentials
         where server_id = p_server_id and node in ('', coalesce(v_node, ''))) then
      raise exception 'no SSH credentials for server %: set them with `proxwatch ops ssh-set %`',
        v_server.name, v_server.name using errcode = 'PT404';
    end if;
    v_target_type := case p_type when 'ssh_test' then 'node' else 'certificate' end;
    v_target := coalesce(v_node, '');
    v_conflict := p_type || ':' || v_target;
  end if;

  v_estimate := public.operation_estimate(p_server_id, p_type, v_target);
  v_message := 'Waiting for a worker';
  loop
    v_attempt := v_attempt + 1;
    insert into public.active_operations (tenant_id, server_id, operation_type, node, target_type, target,
                                          conflict_key, params, message, estimated_duration_ms, created_by,
                                          requested_by)
    values (v_server.tenant_id, p_server_id, p_type, v_node, v_target_type, v_target, v_conflict, v_params,
            v_message, v_estimate, p_created_by, p_user_id)
    on conflict (server_id, conflict_key) where status in ('pending', 'in_progress') do nothing
    returning id into v_id;
    if v_id is not null then
      insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
      values (v_server.tenant_id, p_user_id, p_created_by, 'operation.request', p_server_id, v_target_type,
              v_target, jsonb_build_object('operation_id', v_id, 'operation_type', p_type, 'params', v_params,
                                           'result', 'started'));
      return jsonb_build_object('operationId', v_id, 'status', 'started', 'operationType', p_type,
                                'message', v_message, 'estimatedDuration', v_estimate)
             || case when p_type = 'certificate_renewal' then jsonb_build_object('renewalId', v_id)
                     else '{}'::jsonb end;
    end if;
    select * into v_existing from public.active_operations
     where server_id = p_server_id and conflict_key = v_conflict and status in ('pending', 'in_progress');
    if found then
      insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
      values (v_server.tenant_id, p_user_id, p_created_by, 'operation.request', p_server_id, v_target_type,
              v_target, jsonb_build_object('operation_id', v_existing.id, 'operation_type', p_type,
                                           'params', v_params, 'result', 'already_running'));
      return jsonb_build_object(
        'operationId', v_existing.id, 'status', 'already_running', 'operationType', v_existing.operation_type,
        'existingOperation', jsonb_build_object(
          'operationId', v_existing.id, 'operationType', v_existing.operation_type,
          'progress', v_existing.progress, 'message', v_existing.message, 'startedAt', v_existing.started_at,
          'createdBy', v_existing.created_by))
        || case when p_type = 'certificate_renewal' then jsonb_build_object('renewalId', v_existing.id)
                else '{}'::jsonb end;
    end if;
    -- The running one finished between our insert and our look: try again.
    if v_attempt >= 5 then
      raise exception 'the operation could not be queued (too much contention); try again' using errcode = '40001';
    end if;
  end loop;
end
$$;

-- request_operation: the API for people (the dashboard, over PostgREST with the user's JWT).
-- Operators and admins of the server's tenant may request; viewers are refused (42501, HTTP 403);
-- someone outside the tenant learns nothing (PT404, as for a server that does not exist).
create function public.request_operation(p_server_id uuid, p_type text, p_params jsonb default '{}'::jsonb)
returns jsonb
language plpgsql volatile security definer set search_path = public, pg_temp as $$
declare
  v_tenant uuid;
begin
  select tenant_id into v_tenant from public.proxmox_servers where id = p_server_id;
  if v_tenant is null or auth.uid() is null or v_tenant not in (select public.my_tenant_ids()) then
    raise exception 'server % not found', p_server_id using errcode = 'PT404';
  end if;
  if not public.has_role(v_tenant, 'operator') then
    raise exception 'viewers cannot start operations: ask an admin of this tenant for the operator role'
      using errcode = '42501';
  end if;
  return public.enqueue_operation(p_server_id, p_type, p_params, 'user', auth.uid());
end
$$;

-- operations_list: the operations the caller may see, newest first, filtered. p_status takes a
-- status or 'running' (pending and in progress).
create function public.operations_list(p_server_id uuid default null, p_status text default null,
                                       p_type text default null, p_limit integer default 200)
returns table (
  id uuid, tenant_id uuid, server_id uuid, server_name text, operation_type text, status text, node text,
  target_type text, target text, params jsonb, metadata jsonb, progress integer, message text, error text,
  error_kind text, upid text, estimated_duration_ms integer, created_by text, requested_by_email text,
  started_at timestamptz, claimed_at timestamptz, completed_at timestamptz, updated_at timestamptz)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'p_limit must be between 1 and 1000, not %', p_limit using errcode = '22023';
  end if;
  if p_status is not null and p_status not in ('running', 'pending', 'in_progress', 'completed', 'failed') then
    raise exception 'unknown status %: use running, pending, in_progress, completed or failed', quote_literal(p_status)
      using errcode = '22023';
  end if;
  return query
  select o.id, o.tenant_id, o.server_id, s.name, o.operation_type, o.status, o.node, o.target_type, o.target,
         o.params, o.metadata, o.progress, o.message, o.error, o.error_kind, o.upid, o.estimated_duration_ms,
         o.created_by, u.email::text, o.started_at, o.claimed_at, o.completed_at, o.updated_at
  from public.active_operations o
  join public.proxmox_servers s on s.id = o.server_id
  left join public.operation_requesters() u on u.id = o.requested_by
  where (p_server_id is null or o.server_id = p_server_id)
    and (p_type is null or o.operation_type = p_type)
    and (p_status is null or o.status = p_status
         or (p_status = 'running' and o.status in ('pending', 'in_progress')))
  order by o.started_at desc
  limit p_limit;
end
$$;

-- operation_states: per target of one server, its latest operation (running, or the last one
-- finished): what the buttons show.
create function public.operation_states(p_server_id uuid)
returns table (
  id uuid, operation_type text, status text, node text, target_type text, target text, conflict_key text,
  params jsonb, metadata jsonb, progress integer, message text, error text, estimated_duration_ms integer,
  created_by text, started_at timestamptz, claimed_at timestamptz, completed_at timestamptz, now timestamptz)
language sql stable security invoker set search_path = public, pg_temp as $$
  select distinct on (o.operation_type, o.target)
         o.id, o.operation_type, o.status, o.node, o.target_type, o.target, o.conflict_key, o.params, o.metadata,
         o.progress, o.message, o.error, o.estimated_duration_ms, o.created_by, o.started_at, o.claimed_at,
         o.completed_at, now()
  from public.active_operations o
  where o.server_id = p_server_id
  order by o.operation_type, o.target, (o.status in ('pending', 'in_progress')) desc, o.started_at desc
$$;

-- operation_options: what the buttons of one server may offer the caller.
create function public.operation_options(p_server_id uuid) returns jsonb
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  v_tenant uuid;
begin
  select tenant_id into v_tenant from public.proxmox_servers where id = p_server_id;
  if v_tenant is null or auth.uid() is null or v_tenant not in (select public.my_tenant_ids()) then
    raise exception 'server % not found', p_server_id using errcode = 'PT404';
  end if;
  return jsonb_build_object(
    'canOperate', public.has_role(v_tenant, 'operator'),
    -- Nodes the workers have seen, and those the guest list shows.
    'nodes', coalesce((select jsonb_agg(jsonb_build_object('node', n.node, 'local', coalesce(o.is_local, false),
                                                           'online', o.online) order by n.node)
                         from (select node from public.operation_nodes where server_id = p_server_id
                               union select node from public.guests where server_id = p_server_id) n
                         left join public.operation_nodes o on o.server_id = p_server_id and o.node = n.node),
                      '[]'::jsonb),
    'services', to_jsonb(public.operation_services()),
    'sshConfigured', exists (select 1 from public.server_ssh_credentials where server_id = p_server_id));
end
$$;

-- The e-mail of requesters, for the operations list (auth.users is not readable by authenticated).
create function public.operation_requesters() returns table (id uuid, email text)
language sql stable security definer set search_path = public, pg_temp as $$
  select u.id, u.email::text from auth.users u
  where u.id in (select o.requested_by from public.active_operations o
                 where o.tenant_id in (select public.my_tenant_ids()) and o.requested_by is not null)
$$;

revoke execute on function public.enqueue_operation(uuid, text, jsonb, text, uuid) from public, anon, authenticated;
grant execute on function public.enqueue_operation(uuid, text, jsonb, text, uuid) to service_role;
revoke execute on function public.operation_estimate(uuid, text, text), public.operation_requesters()
  from public, anon;
revoke execute on function public.request_operation(uuid, text, jsonb),
  public.operations_list(uuid, text, text, integer), public.operation_states(uuid),
  public.operation_options(uuid), public.operation_services() from public, anon;
grant execute on function public.request_operation(uuid, text, jsonb),
  public.operations_list(uuid, text, text, integer), public.operation_states(uuid),
  public.operation_options(uuid), public.operation_services(), public.operation_estimate(uuid, text, text),
  public.operation_requesters() to authenticated, service_role;
