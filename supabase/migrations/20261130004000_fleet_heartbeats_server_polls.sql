-- The dashboard at fleet scale (issues 10 and 12): each poll of the last hour for the server chart's
-- 1 h view, and the last polls of every server for the fleet table's heartbeat strip.
--
-- Both are SECURITY INVOKER: row-level security of proxmox_servers and connection_metrics decides
-- what a caller sees, as for fleet_overview(). Both read connection_metrics through its unique
-- (server_id, scheduled_at) index only (a per-server backward scan), so their cost follows the rows
-- returned, not the table's size.

-- server_polls(): the polls of one server in the last p_minutes, oldest first.
create function public.server_polls(p_server_id uuid, p_minutes integer default 60)
returns table (scheduled_at timestamptz, success boolean, response_time_ms integer, error_kind text)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
begin
  if p_minutes is null or p_minutes < 1 or p_minutes > 1440 then
    raise exception 'p_minutes must be between 1 and 1440, not %', p_minutes using errcode = '22023';
  end if;
  if p_server_id is null or not exists (select 1 from public.proxmox_servers where id = p_server_id) then
    raise exception 'server % not found', p_server_id using errcode = 'P0002';
  end if;
  return query
  select m.scheduled_at, m.success, m.response_time_ms, m.error_kind
  from public.connection_metrics m
  where m.server_id = p_server_id and m.scheduled_at > now() - make_interval(mins => p_minutes)
  order by m.scheduled_at;
end
$$;

-- fleet_heartbeats(): per server the caller may see (of p_server_ids when given: the page of the
-- fleet table on screen), its last p_limit polls oldest → newest, as
-- [{"at": scheduled_at, "ok": success, "ms": response_time_ms}, …] ([] when never polled).
create function public.fleet_heartbeats(p_limit integer default 30, p_server_ids uuid[] default null)
returns table (server_id uuid, beats jsonb)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 100 then
    raise exception 'p_limit must be between 1 and 100, not %', p_limit using errcode = '22023';
  end if;
  return query
  select s.id, coalesce((
    select jsonb_agg(jsonb_build_object('at', b.scheduled_at, 'ok', b.success, 'ms', b.response_time_ms)
                     order by b.scheduled_at)
    from (select m.scheduled_at, m.success, m.response_time_ms
          from public.connection_metrics m
          where m.server_id = s.id
          order by m.scheduled_at desc
          limit p_limit) b), '[]'::jsonb)
  from public.proxmox_servers s
  where p_server_ids is null or s.id = any (p_server_ids);
end
$$;

revoke execute on function public.server_polls(uuid, integer), public.fleet_heartbeats(integer, uuid[])
  from public, anon;
grant execute on function public.server_polls(uuid, integer), public.fleet_heartbeats(integer, uuid[])
  to authenticated, service_role;
