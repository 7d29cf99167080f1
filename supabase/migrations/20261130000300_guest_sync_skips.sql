-- Guest sync: one malformed entry of PVE's /cluster/resources answer (cpu 1e6, a NUL in a name,
-- vmid 0, a word where a number belongs) is skipped and counted, the rest are stored
-- (worker/inventory.py). The count and a sentence naming the skipped entries are part of the
-- sync's outcome, beside its error, and the Guests page shows both for every server the user may
-- see — also a server none of whose guests could be stored (guests_overview() only lists servers
-- with guests).
--
-- Grants as every table and function of the API (20261130000100_api_write_paths.sql): anon holds
-- nothing; authenticated reads guest_syncs under its RLS policy (the new columns come with the
-- table's SELECT) and executes guest_sync_status(), which is security invoker: RLS decides.

alter table public.guest_syncs
  add column skipped integer not null default 0 check (skipped >= 0),
  add column skipped_detail text check (length(skipped_detail) <= 1000);

comment on column public.guest_syncs.skipped is
  'Entries of the last answered sync that were skipped as malformed (the rest were stored).';
comment on column public.guest_syncs.skipped_detail is
  'Which entries were skipped and why, in one sentence (null when none).';

-- guest_sync_status: the last guest sync of each server the caller may see: when, how many guests,
-- the error (kind and sentence), and the entries skipped.
create function public.guest_sync_status()
returns table (server_id uuid, server_name text, team_id uuid, team_name text, last_attempt_at timestamptz,
               last_success_at timestamptz, guest_count integer, error_kind text, error_message text,
               skipped integer, skipped_detail text)
language sql stable security invoker set search_path = public, pg_temp as $$
  select y.server_id, v.name, y.tenant_id, t.name, y.last_attempt_at, y.last_success_at, y.guest_count,
         y.error_kind, y.error_message, y.skipped, y.skipped_detail
  from public.guest_syncs y
  join public.proxmox_servers v on v.id = y.server_id
  join public.tenants t on t.id = y.tenant_id
  order by t.name, v.name
$$;

revoke execute on function public.guest_sync_status() from public, anon;
grant execute on function public.guest_sync_status() to authenticated, service_role;
