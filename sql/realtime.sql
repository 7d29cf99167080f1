-- Named queries of the embedded Realtime (worker/embedded/realtime.py). The statements that name a
-- table of the subscriber's choice (filters, row-level security checks) are composed per table with
-- psycopg.sql identifiers in realtime.py; everything fixed is here.

-- name: realtime_install
-- Change capture for embedded mode only (the stand-in runs this at start; Supabase has its own
-- Realtime, so nothing here is a migration). A row trigger on every table of publication
-- supabase_realtime sends the change as JSON with pg_notify, which Postgres delivers at commit, in
-- commit order, and only when the transaction commits. A change too large for a notification
-- (8000 bytes) waits in proxwatch_realtime.overflow and the notification carries its id.
-- Timestamps in the row images are rendered in UTC (the function's own TimeZone), as Supabase's are.
create schema if not exists proxwatch_realtime;
revoke all on schema proxwatch_realtime from public;
create table if not exists proxwatch_realtime.overflow (
  id bigint generated always as identity primary key,
  created_at timestamptz not null default now(),
  change jsonb not null
);
revoke all on proxwatch_realtime.overflow from public;
-- The columns of an UPDATE that logical decoding would leave out of the new row: values stored
-- out of line (TOAST) that the UPDATE did not change. Postgres moves a value out of line when the row
-- passes TOAST_TUPLE_THRESHOLD (~2 kB) and the value is still large once compressed, so a value
-- left unchanged whose stored (compressed) size is over 2000 bytes counts as one. Candidates are
-- found cheaply first (unchanged, over 2000 bytes as JSON), then measured with pg_column_size.
create or replace function proxwatch_realtime.unchanged_toast(old_row anyelement, new_row anyelement) returns text[]
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  candidate text;
  size integer;
  found text[] := '{}';
begin
  for candidate in
    select o.key from jsonb_each(to_jsonb(old_row)) o join jsonb_each(to_jsonb(new_row)) n using (key)
    where o.value = n.value and octet_length(o.value::text) > 2000
  loop
    execute format('select pg_column_size(($1).%I)', candidate) into size using old_row;
    if size > 2000 then
      found := found || candidate;
    end if;
  end loop;
  return found;
end
$$;
revoke all on function proxwatch_realtime.unchanged_toast(anyelement, anyelement) from public;
create or replace function proxwatch_realtime.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set timezone = 'UTC' as $$
declare
  change text;
  overflow_id bigint;
  root text;
begin
  -- A partition's change is published under its root (publish_via_partition_root), the name
  -- subscribers know: connection_metrics, not connection_metrics_p20261130. sync_triggers passes
  -- the published table's name (a trigger on a partitioned table fires on its partitions).
  root := coalesce(TG_ARGV[0], TG_TABLE_NAME);
  change := json_build_object(
    's', TG_TABLE_SCHEMA, 't', root, 'op', TG_OP,
    'ts', to_char(clock_timestamp(), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'new', case when TG_OP <> 'DELETE' then to_jsonb(NEW) end,
    'old', case when TG_OP <> 'INSERT' then to_jsonb(OLD) end,
    'toast', case when TG_OP = 'UPDATE' then proxwatch_realtime.unchanged_toast(OLD, NEW) end)::text;
  if octet_length(change) > 7900 then
    insert into proxwatch_realtime.overflow (change) values (change::jsonb) returning id into overflow_id;
    change := json_build_object('overflow', overflow_id)::text;
  end if;
  perform pg_notify('proxwatch_realtime', change);
  return null;
end
$$;
revoke all on function proxwatch_realtime.capture() from public;
-- Keeps the capture triggers in step with the publication: a trigger on every published table,
-- none on a table that left it. Returns the tables it changed.
create or replace function proxwatch_realtime.sync_triggers() returns setof text
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  r record;
begin
  for r in
    select p.schemaname, p.tablename from pg_publication_tables p
    where p.pubname = 'supabase_realtime'
      and not exists (select 1 from pg_trigger t
                      where t.tgrelid = format('%I.%I', p.schemaname, p.tablename)::regclass
                        and t.tgname = 'proxwatch_realtime_capture')
  loop
    execute format('create trigger proxwatch_realtime_capture after insert or update or delete on %I.%I'
                   ' for each row execute function proxwatch_realtime.capture(%L)', r.schemaname, r.tablename,
                   r.tablename);
    return next format('%I.%I', r.schemaname, r.tablename);
  end loop;
  for r in
    select n.nspname as schemaname, c.relname as tablename from pg_trigger t
    join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
    where t.tgname = 'proxwatch_realtime_capture' and t.tgparentid = 0  -- not a partition's clone
      and not exists (select 1 from pg_publication_tables p where p.pubname = 'supabase_realtime'
                      and p.schemaname = n.nspname and p.tablename = c.relname)
  loop
    execute format('drop trigger proxwatch_realtime_capture on %I.%I', r.schemaname, r.tablename);
    return next format('%I.%I', r.schemaname, r.tablename);
  end loop;
end
$$;
revoke all on function proxwatch_realtime.sync_triggers() from public;
-- Which rows each subscriber may select, for one batch of one table, in one round trip. `check`
-- is the stand-in's statement for the table (composed from catalog identifiers in realtime.py):
-- given the batch's primary keys as $1 it returns the 0-based positions of the rows the current
-- role can see. It runs once per subscriber as that subscriber — role and request.jwt.claims set
-- as PostgREST and Supabase Realtime set them — so row-level security gives its own answer. A
-- subscriber whose role lost the table's SELECT sees nothing. Only the stand-in may call it.
create or replace function proxwatch_realtime.visible_to(check_sql text, keys jsonb, identities jsonb)
returns table (who integer, pos integer)
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  ident jsonb;
  n integer := 0;
  seen integer[];
begin
  for ident in select value from jsonb_array_elements(identities) loop
    begin
      perform set_config('role', ident ->> 'role', true),
              set_config('request.jwt.claims', ident ->> 'claims', true);
      execute check_sql into seen using keys;
    exception when insufficient_privilege then
      seen := '{}';
    end;
    perform set_config('role', 'none', true), set_config('request.jwt.claims', '', true);
    who := n;
    for pos in select unnest(seen) loop
      return next;
    end loop;
    n := n + 1;
  end loop;
end
$$;
revoke all on function proxwatch_realtime.visible_to(text, jsonb, jsonb) from public;
-- Supabase's realtime.subscription_check_filters (supabase/realtime, migration
-- 20260626120000_readd_postgrest_filter_ops.ex), as a check the stand-in runs when it creates a
-- subscription: every filter column must be one the role may select, every value must be a value
-- of the column's type (an `in` list at most 100 of them), `is` takes null/true/false/unknown (the
-- last three on a boolean column only), like/ilike/match/imatch need a column type with that
-- operator and a valid pattern, and selected columns must be selectable. The exceptions carry the
-- server's own sentences; the stand-in sends them to the subscriber as its system error.
create or replace function proxwatch_realtime.check_subscription(
  entity regclass, role_name text, columns text[], ops text[], vals text[], selected text[])
returns void language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  col_names text[] = coalesce(array_agg(a.attname::text order by a.attnum), '{}')
    from pg_attribute a
    where a.attrelid = entity and a.attnum > 0 and not a.attisdropped
      and has_column_privilege(role_name, a.attrelid, a.attnum, 'SELECT');
  col_type regtype;
  n integer;
  in_count integer;
  selected_col text;
begin
  for n in 1 .. coalesce(array_length(columns, 1), 0) loop
    if not columns[n] = any(col_names) then
      raise exception 'invalid column for filter %', columns[n];
    end if;
    col_type = (select atttypid::regtype from pg_attribute where attrelid = entity and attname = columns[n]);
    if ops[n] = 'in' then
      -- Stricter than Supabase (which accepts it and fails at delivery): `col = any(list)` of an
      -- array column compares the array with its elements.
      if (select t.typcategory from pg_type t where t.oid = col_type) = 'A' then
        raise exception '`in` filter requires a column that is not an array, got %', col_type::text;
      end if;
      execute format('select cardinality(%L::%s)', vals[n], col_type::text || '[]') into in_count;
      if coalesce(in_count, 0) > 100 then
        raise exception 'too many values for `in` filter. Maximum 100';
      end if;
    elsif ops[n] = 'is' then
      if vals[n] not in ('null', 'true', 'false', 'unknown') then
        raise exception 'invalid value for is filter: must be null, true, false, or unknown';
      end if;
      if vals[n] <> 'null' and col_type <> 'boolean'::regtype then
        raise exception 'is % filter requires a boolean column, got %', vals[n], col_type::text;
      end if;
    elsif ops[n] in ('like', 'ilike') then
      if not exists (select 1 from pg_operator where oprname = '~~' and oprleft = col_type) then
        raise exception 'operator % requires a text-compatible column type, got %', ops[n], col_type::text;
      end if;
    elsif ops[n] in ('match', 'imatch') then
      if not exists (select 1 from pg_operator
                     where oprname = case when ops[n] = 'imatch' then '~*' else '~' end
                       and oprleft = col_type and oprright = col_type and oprresult = 'boolean'::regtype) then
        raise exception 'operator % requires a text-compatible column type, got %', ops[n], col_type::text;
      end if;
      begin
        perform '' ~ vals[n];
      exception when others then
        raise exception 'invalid regular expression for % filter: %', ops[n], sqlerrm;
      end;
    else
      execute format('select %L::%s', vals[n], col_type::text);
    end if;
  end loop;
  foreach selected_col in array coalesce(selected, '{}') loop
    if not selected_col = any(col_names) then
      raise exception 'invalid column for select %', selected_col;
    end if;
  end loop;
end
$$;
revoke all on function proxwatch_realtime.check_subscription(regclass, text, text[], text[], text[], text[]) from public;
-- Overflowed changes nobody collected (the stand-in was down) are of no use any more.
delete from proxwatch_realtime.overflow where created_at < now() - interval '10 minutes';

-- name: realtime_sync_triggers
select proxwatch_realtime.sync_triggers() as changed;

-- name: realtime_listen
listen proxwatch_realtime;

-- name: realtime_take_overflow
-- The changes that did not fit a notification; each is read once.
delete from proxwatch_realtime.overflow where id = any(%(ids)s) returning id, change;

-- name: realtime_publication
-- The tables of publication supabase_realtime and the operations it publishes.
select p.schemaname as schema, p.tablename as table, pub.pubinsert, pub.pubupdate, pub.pubdelete
from pg_publication pub
join pg_publication_tables p on p.pubname = pub.pubname
where pub.pubname = 'supabase_realtime';

-- name: realtime_table
-- One table as a subscription needs it: whether it exists, its columns with their types (the short
-- type name Supabase reports, and the full one to cast filter values to), its primary key, whether
-- row-level security is on, and whether the given role may select from it (some of its columns,
-- as Supabase Realtime checks: connection_sessions.client_ip is not selectable by authenticated).
select c.oid::int as oid,
       c.relrowsecurity as rls,
       has_any_column_privilege(%(role)s, c.oid, 'SELECT') as can_select,
       array(select a.attname::text from pg_attribute a where a.attrelid = c.oid and a.attnum > 0
             and not a.attisdropped order by a.attnum) as columns,
       array(select t.typname::text from pg_attribute a join pg_type t on t.oid = a.atttypid
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped order by a.attnum) as types,
       array(select format_type(a.atttypid, a.atttypmod) from pg_attribute a where a.attrelid = c.oid
             and a.attnum > 0 and not a.attisdropped order by a.attnum) as full_types,
       array(select a.attgenerated <> '' from pg_attribute a where a.attrelid = c.oid and a.attnum > 0
             and not a.attisdropped order by a.attnum) as generated,
       array(select a.attname::text from pg_index i
             cross join lateral unnest(i.indkey::int2[]) with ordinality as k (attnum, n)
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
             where i.indrelid = c.oid and i.indisprimary order by k.n) as primary_key,
       -- The replica identity: what logical decoding keeps of the old row (d: the primary key,
       -- f: every column, i: the columns of the chosen index, n: nothing).
       c.relreplident::text as replica_identity,
       array(select a.attname::text from pg_index i
             cross join lateral unnest(i.indkey::int2[]) with ordinality as k (attnum, n)
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
             where i.indrelid = c.oid and i.indisreplident order by k.n) as identity_index,
       array(select has_column_privilege(%(role)s, c.oid, a.attnum, 'SELECT') from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped order by a.attnum) as selectable
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %(schema)s and c.relname = %(table)s and c.relkind in ('r', 'p');

-- name: realtime_visible
-- (who, pos): subscriber number `who` of %(identities)s may select row `pos` of %(keys)s.
select who, pos from proxwatch_realtime.visible_to(%(check)s, %(keys)s::jsonb, %(identities)s::jsonb);

-- name: realtime_check_subscription
-- Raises the server's sentence when a subscription's filters or selected columns do not fit the table.
select proxwatch_realtime.check_subscription(format('%%I.%%I', %(schema)s::text, %(table)s::text)::regclass, %(role)s, %(columns)s, %(ops)s, %(vals)s,
                                             %(selected)s);
