-- Node shells open only on nodes the server reported.
--
-- A node shell (term: PVE's /nodes/{node}/termproxy; ssh: the node's configured SSH access) used to
-- accept any well-formed node name. Now request_console() refuses a node the server has not reported
-- — in /cluster/status (operation_nodes, kept by the workers) or as the node of one of its guests
-- (guests, from /cluster/resources) — with a sentence, and writes nothing; console_token() refuses a
-- token whose node is no longer reported (the gateway shows the sentence); console_nodes() offers
-- exactly the nodes request_console() accepts.
--
-- Grants: the two helpers are internal (no EXECUTE for anon or authenticated; the SECURITY DEFINER
-- functions below call them as their owner). CREATE OR REPLACE keeps the API functions' grants.

-- server_reported_node: whether the server reported a node of that name.
create function public.server_reported_node(p_server_id uuid, p_node text) returns boolean
language sql stable set search_path = public, pg_temp as $$
  select exists (select 1 from public.operation_nodes where server_id = p_server_id and node = p_node)
      or exists (select 1 from public.guests where server_id = p_server_id and node = p_node)
$$;

-- unknown_node_sentence: why a node shell on p_node cannot open, naming the nodes that can.
create function public.unknown_node_sentence(p_server_id uuid, p_server_name text, p_node text) returns text
language sql stable set search_path = public, pg_temp as $$
  select case when count(*) = 0
              then format('%s has reported no nodes yet: a node shell opens on a node the server reported '
                          '(wait for the next guest sync)', p_server_name)
              else format('%s has no node %s: a node shell opens only on a node the server reported (%s)',
                          p_server_name, p_node, string_agg(node, ', ' order by node)) end
  from (select node from public.operation_nodes where server_id = p_server_id
        union
        select node from public.guests where server_id = p_server_id) n
$$;

revoke execute on function public.server_reported_node(uuid, text), public.unknown_node_sentence(uuid, text, text)
  from public, anon, authenticated;
grant execute on function public.server_reported_node(uuid, text), public.unknown_node_sentence(uuid, text, text)
  to service_role;

create or replace function public.request_console(p_server_id uuid, p_protocol text, p_vmid integer default null,
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
    if not public.server_reported_node(p_server_id, v_node) then
      raise exception '%', public.unknown_node_sentence(p_server_id, v_server.name, v_node) using errcode = 'P0002';
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

create or replace function public.console_token(p_token text, p_consume boolean default false) returns jsonb
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
  if t.vmid is null and not public.server_reported_node(t.server_id, t.node) then
    raise exception '%', public.unknown_node_sentence(t.server_id, v_server.name, t.node) using errcode = 'PT410';
  end if;
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

-- console_nodes: the nodes the caller may open a shell on (the ones the server reported), and
-- whether SSH is configured for each.
create or replace function public.console_nodes() returns table (server_id uuid, server_name text, team_id uuid,
                                                                 node text, ssh_configured boolean)
language sql stable security definer set search_path = public, pg_temp as $$
  with nodes as (
    select g.server_id, g.node from public.guests g
    union
    select o.server_id, o.node from public.operation_nodes o
  )
  select n.server_id, v.name, v.tenant_id, n.node,
         exists (select 1 from public.server_ssh_credentials c where c.server_id = n.server_id
                                                                 and c.node in (n.node, ''))
  from nodes n
  join public.proxmox_servers v on v.id = n.server_id
  where public.is_service_role() or v.tenant_id = any (public.my_role_tenant_ids('viewer'))
  order by v.name, n.node
$$;
