-- Realtime as Supabase really delivers it (issue 13).
--
-- 1. Replica identity. Supabase Realtime reads changes through logical decoding (wal2json): an
--    UPDATE's or DELETE's old row holds only the table's replica identity, and filters on a DELETE
--    are evaluated on those columns alone — a filter on any other column fails closed. With the
--    default identity (the primary key), a DELETE on connection_metrics or active_operations
--    filtered by `server_id=eq.…` (the dashboard's filters) would never be delivered. Those two get
--    REPLICA IDENTITY FULL: connection_metrics rows are never updated and leave by retention, and
--    active_operations rows are small, so logging the whole old row costs little. The tables the
--    dashboard watches without a filter keep the default (set explicitly, so the choice is
--    visible). What leaks is unchanged: on a table with row-level security Realtime sends a
--    DELETE to every subscriber of the table (RLS cannot be checked on a row that is gone) but
--    trims its old_record to the primary key — a surrogate id on every published table.
alter table public.connection_metrics replica identity full;
alter table public.active_operations replica identity full;
alter table public.proxmox_servers replica identity default;
alter table public.guests replica identity default;
alter table public.connection_sessions replica identity default;

-- 2. The dashboard's reconciliation read. Supabase Realtime silently skips changes while a project
--    is over its events quota, so a page that is "Live" re-reads when this fingerprint of what it
--    watches moves (dashboard/live.py asks every PROXWATCH_DASHBOARD_RECONCILE seconds). One text
--    per call for the named published tables, over the rows the caller may see (security invoker:
--    RLS applies), optionally of one server: the row count (catches deletes) and the sum of the
--    rows' xmin (every insert or update writes a new row version with a new xmin; freezing keeps
--    it), or for insert-only connection_metrics the newest row. Nothing is written for it.
create function public.live_mark(p_tables text[], p_server_id uuid default null)
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

revoke execute on function public.live_mark(text[], uuid) from public, anon;
grant execute on function public.live_mark(text[], uuid) to authenticated, service_role;
