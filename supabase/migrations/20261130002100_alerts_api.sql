-- The Alerts page's API (issue 11): reads as the caller (RLS decides), writes through SECURITY
-- DEFINER functions that check the caller's role in the team.
--
-- A channel's URL is encrypted by the application (Fernet, PROXWATCH_SECRET_KEY): the dashboard
-- adds a channel only where it holds that key (embedded mode, or a deployment that gives it the
-- key) and hands alert_channel_add() the ciphertext and the masked form — the plain URL never
-- reaches the database.

create function public.alert_channel_add(p_tenant_id uuid, p_name text, p_kind text, p_url_ciphertext text,
                                         p_url_masked text) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_id uuid;
begin
  if not (public.is_service_role() or public.has_role(p_tenant_id, 'admin')) then
    raise exception 'only an admin of the team adds alert channels' using errcode = '42501';
  end if;
  if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' then
    raise exception 'a channel name is 1 to 63 letters, digits, ''.'', ''_'' or ''-''' using errcode = '22023';
  end if;
  if exists (select 1 from public.alert_channels where tenant_id = p_tenant_id and name = p_name) then
    raise exception 'the team already has a channel named %', p_name using errcode = '23505';
  end if;
  if coalesce(p_url_ciphertext, '') !~ '^gAAAA' or coalesce(p_url_masked, '') = '' then
    raise exception 'the channel URL must come encrypted, with its masked form' using errcode = '22023';
  end if;
  insert into public.alert_channels (tenant_id, name, kind, url_ciphertext, url_masked)
  values (p_tenant_id, p_name, p_kind, p_url_ciphertext, p_url_masked)
  returning id into v_id;
  return v_id;
end
$$;

-- alert_rule_set(): create or change the rule of a team, a server or a tag (admins); null keeps a
-- field, 0 turns a threshold or the repeat off.
create function public.alert_rule_set(p_tenant_id uuid, p_server_id uuid default null, p_tag text default null,
                                      p_offline boolean default null, p_recovered boolean default null,
                                      p_degraded boolean default null, p_cert_expiry boolean default null,
                                      p_operation_failed boolean default null, p_latency_ms integer default null,
                                      p_latency_polls integer default null, p_success_rate_pct numeric default null,
                                      p_repeat_interval_s integer default null, p_flaps boolean default null)
returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_id uuid;
begin
  if not (public.is_service_role() or public.has_role(p_tenant_id, 'admin')) then
    raise exception 'only an admin of the team changes alert rules' using errcode = '42501';
  end if;
  if p_server_id is not null and p_tag is not null then
    raise exception 'a rule is for a server or a tag, not both' using errcode = '22023';
  end if;
  if p_server_id is not null and not exists (select 1 from public.proxmox_servers
                                             where id = p_server_id and tenant_id = p_tenant_id) then
    raise exception 'no such server in this team' using errcode = '22023';
  end if;
  insert into public.alert_rules as r (tenant_id, server_id, tag, offline, recovered, degraded, cert_expiry,
                                       operation_failed, latency_ms, latency_polls, success_rate_pct, repeat_interval_s,
                                       flaps)
  values (p_tenant_id, p_server_id, nullif(p_tag, ''), coalesce(p_offline, true), coalesce(p_recovered, true),
          coalesce(p_degraded, false), coalesce(p_cert_expiry, true), coalesce(p_operation_failed, true),
          nullif(p_latency_ms, 0), coalesce(p_latency_polls, 3), nullif(p_success_rate_pct, 0),
          nullif(p_repeat_interval_s, 0), coalesce(p_flaps, false))
  on conflict (tenant_id, coalesce(server_id, '00000000-0000-0000-0000-000000000000'::uuid), coalesce(tag, ''))
  do update set
    offline = coalesce(p_offline, r.offline), recovered = coalesce(p_recovered, r.recovered),
    degraded = coalesce(p_degraded, r.degraded), cert_expiry = coalesce(p_cert_expiry, r.cert_expiry),
    operation_failed = coalesce(p_operation_failed, r.operation_failed),
    latency_ms = case when p_latency_ms is null then r.latency_ms else nullif(p_latency_ms, 0) end,
    latency_polls = coalesce(p_latency_polls, r.latency_polls),
    success_rate_pct = case when p_success_rate_pct is null then r.success_rate_pct else nullif(p_success_rate_pct, 0) end,
    repeat_interval_s = case when p_repeat_interval_s is null then r.repeat_interval_s
                             else nullif(p_repeat_interval_s, 0) end,
    flaps = coalesce(p_flaps, r.flaps),
    updated_at = now()
  returning id into v_id;
  return v_id;
end
$$;

create function public.alert_rules_view()
returns table (id uuid, tenant_id uuid, tenant_name text, server_id uuid, server_name text, tag text, offline boolean,
               recovered boolean, degraded boolean, cert_expiry boolean, operation_failed boolean, latency_ms integer,
               latency_polls integer, success_rate_pct numeric, repeat_interval_s integer, flaps boolean)
language sql stable security invoker set search_path = public, pg_temp as $$
  select r.id, r.tenant_id, t.name, r.server_id, s.name, r.tag, r.offline, r.recovered, r.degraded, r.cert_expiry,
         r.operation_failed, r.latency_ms, r.latency_polls, r.success_rate_pct, r.repeat_interval_s, r.flaps
  from public.alert_rules r join public.tenants t on t.id = r.tenant_id
  left join public.proxmox_servers s on s.id = r.server_id
  order by t.name, r.server_id nulls first, r.tag nulls first
$$;

create function public.alert_silences_view(p_all boolean default false)
returns table (id uuid, tenant_id uuid, tenant_name text, server_id uuid, server_name text, tag text,
               starts_at timestamptz, ends_at timestamptz, reason text, created_by text, active boolean)
language sql stable security invoker set search_path = public, pg_temp as $$
  select a.id, a.tenant_id, t.name, a.server_id, s.name, a.tag, a.starts_at, a.ends_at, a.reason, a.created_by,
         a.starts_at <= now() and a.ends_at > now()
  from public.alert_silences a join public.tenants t on t.id = a.tenant_id
  left join public.proxmox_servers s on s.id = a.server_id
  where coalesce(p_all, false) or a.ends_at > now()
  order by a.ends_at desc
$$;

create function public.alert_log_view(p_limit integer default 100)
returns table (attempted_at timestamptz, tenant_name text, channel_name text, attempt integer, outcome text,
               answer text, duration_ms integer, title text, delivery_state text)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'p_limit must be between 1 and 1000, not %', p_limit using errcode = '22023';
  end if;
  return query
  select a.attempted_at, t.name, a.channel_name, a.attempt, a.outcome, a.answer, a.duration_ms, d.title, d.state
  from public.alert_attempts a join public.tenants t on t.id = a.tenant_id
  left join public.alert_deliveries d on d.id = a.delivery_id
  order by a.attempted_at desc, a.id desc
  limit p_limit;
end
$$;

-- open_problems(): what the banner on every page says — open incidents, certificates expiring
-- within 14 days, failing alert channels — of the caller's teams, with whether a silence covers it.
create function public.open_problems()
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
  select 'channel_failing', l.tenant_name, null, 'alert channel ' || l.name, l.last_failure_at, l.last_error, false
  from public.alert_channels_list() l where l.failing
  order by 5
$$;

-- node_certificates_view(): each node's served certificate and the days it has left.
create function public.node_certificates_view()
returns table (server_id uuid, server_name text, node text, filename text, subject text, not_after timestamptz,
               days_left integer, checked_at timestamptz, expiring boolean)
language sql stable security invoker set search_path = public, pg_temp as $$
  select c.server_id, s.name, c.node, c.filename, c.subject, c.not_after,
         floor(extract(epoch from c.not_after - now()) / 86400)::integer, c.checked_at, c.expiring_since is not null
  from public.node_certificates c join public.proxmox_servers s on s.id = c.server_id
  order by c.not_after
$$;

revoke execute on function public.alert_channel_add(uuid, text, text, text, text),
  public.alert_rule_set(uuid, uuid, text, boolean, boolean, boolean, boolean, boolean, integer, integer, numeric, integer,
                        boolean),
  public.alert_rules_view(), public.alert_silences_view(boolean), public.alert_log_view(integer),
  public.open_problems(), public.node_certificates_view() from public, anon;
grant execute on function public.alert_channel_add(uuid, text, text, text, text),
  public.alert_rule_set(uuid, uuid, text, boolean, boolean, boolean, boolean, boolean, integer, integer, numeric, integer,
                        boolean),
  public.alert_rules_view(), public.alert_silences_view(boolean), public.alert_log_view(integer),
  public.open_problems(), public.node_certificates_view() to authenticated, service_role;

-- alert_teams(): the caller's teams and role in each (what the Alerts page lets them change).
create function public.alert_teams()
returns table (tenant_id uuid, tenant_name text, role public.member_role)
language sql stable security definer set search_path = public, pg_temp as $$
  select m.tenant_id, t.name, m.role from public.tenant_members m join public.tenants t on t.id = m.tenant_id
  where m.user_id = auth.uid() order by t.name
$$;

-- alert_channel_test(): queue a test message to a channel (admins); the worker sends it like any
-- alert — the dashboard never holds the channel's URL — and its outcome lands in the delivery log.
create function public.alert_channel_test(p_channel_id uuid) returns uuid
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_channel public.alert_channels;
  v_id uuid;
begin
  select * into v_channel from public.alert_channels where id = p_channel_id;
  if not found or not (public.is_service_role() or public.has_role(v_channel.tenant_id, 'admin')) then
    raise exception 'no such alert channel, or you are not an admin of its team' using errcode = '42501';
  end if;
  insert into public.alert_deliveries (tenant_id, channel_id, channel_name, batch_id, title, body, notify_type)
  values (v_channel.tenant_id, v_channel.id, v_channel.name, gen_random_uuid(), 'proxwatch: test message',
          format('A test of the channel %s from proxwatch.', v_channel.name), 'info')
  returning id into v_id;
  return v_id;
end
$$;

revoke execute on function public.alert_teams(), public.alert_channel_test(uuid) from public, anon;
grant execute on function public.alert_teams(), public.alert_channel_test(uuid) to authenticated, service_role;
