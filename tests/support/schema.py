"""The database's contract as deterministic, sorted text, read from pg_catalog: what the migrations
promise to the API, the dashboard and the worker. For the schema snapshot test, and for any later
test that compares two databases (for instance one migrated step by step with one built at once).

One line per fact, grouped in sections, sorted; nothing that varies per run (OIDs, database
names, the migrating user). Left out: PostgreSQL's own schemas, the supabase CLI's bookkeeping
(supabase_migrations), objects of extensions, and what the embedded stand-in installs at runtime
(sql/standin.sql, sql/realtime.sql: schema proxwatch_realtime, auth.sessions, auth.refresh_tokens and
the proxwatch_realtime_capture triggers). Partitions are left out too: they are made per day at
runtime (public.ensure_metric_partitions) and their shape is their parent's; the parent is listed.
"""

from __future__ import annotations

import re

import psycopg

ROLES = ("anon", "authenticated", "service_role", "authenticator", "PUBLIC")   # grantees reported
SKIP_SCHEMAS = ("supabase_migrations", "proxwatch_realtime")
SKIP_TABLES = ("auth.sessions", "auth.refresh_tokens")
SKIP_TRIGGERS = "proxwatch_realtime_%"

# Every query returns rows of text; $schemas / $rels are the filters below.
_SCHEMAS = """n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%%'
    and n.nspname <> all(%(skip_schemas)s)"""
_NOT_EXT = """not exists (select 1 from pg_depend d where d.objid = {oid} and d.deptype = 'e')"""
_RELS = _SCHEMAS + """ and format('%%s.%%s', n.nspname, c.relname) <> all(%(skip_tables)s)
    and not exists (select 1 from pg_depend d join pg_class o on o.oid = d.refobjid
                    join pg_namespace o_n on o_n.oid = o.relnamespace
                    where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i')
                      and d.refclassid = 'pg_class'::regclass
                      and format('%%s.%%s', o_n.nspname, o.relname) = any(%(skip_tables)s))
    and not c.relispartition
    and """ + _NOT_EXT.format(oid="c.oid")
_GRANTEE = "case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end"

SECTIONS: dict[str, str] = {
    "schemas": f"""
        select n.nspname from pg_namespace n where {_SCHEMAS}""",
    "extensions": """
        select extname from pg_extension where extname <> 'plpgsql'""",
    "types": f"""
        select format('%%s.%%s enum (%%s)', n.nspname, t.typname,
                      (select string_agg(quote_literal(e.enumlabel), ', ' order by e.enumsortorder)
                       from pg_enum e where e.enumtypid = t.oid))
        from pg_type t join pg_namespace n on n.oid = t.typnamespace
        where t.typtype = 'e' and {_SCHEMAS} and {_NOT_EXT.format(oid="t.oid")}
        union all
        select format('%%s.%%s domain %%s%%s', n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod),
                      coalesce((select ' ' || string_agg(pg_get_constraintdef(k.oid), ' ' order by k.conname)
                                from pg_constraint k where k.contypid = t.oid), ''))
        from pg_type t join pg_namespace n on n.oid = t.typnamespace
        where t.typtype = 'd' and {_SCHEMAS} and {_NOT_EXT.format(oid="t.oid")}""",
    "relations": f"""
        select format('%%s.%%s %%s%%s', n.nspname, c.relname,
                      case c.relkind when 'r' then 'table' when 'p' then 'partitioned table' when 'v' then 'view'
                           when 'm' then 'materialized view' when 'S' then 'sequence' when 'f' then 'foreign table'
                           else c.relkind::text end,
                      coalesce(' with (' || array_to_string(c.reloptions, ', ') || ')', ''))
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and {_RELS}""",
    "columns": f"""
        select format('%%s.%%s.%%s %%s%%s%%s%%s%%s', n.nspname, c.relname, a.attname,
                      format_type(a.atttypid, a.atttypmod),
                      case when a.attnotnull then ' not null' else ' null' end,
                      coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), ''),
                      case a.attidentity when 'a' then ' identity always' when 'd' then ' identity by default'
                           else '' end,
                      case when a.attgenerated = 's' then ' generated stored' else '' end)
        from pg_attribute a
        join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef ad on ad.adrelid = a.attrelid and ad.adnum = a.attnum
        where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f') and {_RELS}""",
    "constraints": f"""
        select format('%%s.%%s %%s %%s', n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid))
        from pg_constraint k join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
        where {_RELS}""",
    "indexes": f"""
        select pg_get_indexdef(i.indexrelid)
        from pg_index i join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace
        where {_RELS}""",
    "triggers": f"""
        select pg_get_triggerdef(t.oid) || case t.tgenabled when 'D' then ' (disabled)' else '' end
        from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
        where not t.tgisinternal and t.tgname not like %(skip_triggers)s and {_RELS}""",
    "row level security": f"""
        select format('%%s.%%s rls %%s%%s', n.nspname, c.relname,
                      case when c.relrowsecurity then 'enabled' else 'disabled' end,
                      case when c.relforcerowsecurity then ', forced' else '' end)
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p') and {_RELS}""",
    "policies": f"""
        select format('%%s.%%s policy %%s %%s for %%s to %%s%%s%%s', n.nspname, c.relname,
                      p.polname, case when p.polpermissive then 'permissive' else 'restrictive' end,
                      case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update'
                                    when 'd' then 'delete' else 'all' end,
                      (select string_agg(case when r = 0 then 'public' else pg_get_userbyid(r) end, ', '
                                         order by 1) from unnest(p.polroles) r),
                      coalesce(' using (' || pg_get_expr(p.polqual, p.polrelid) || ')', ''),
                      coalesce(' with check (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')', ''))
        from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace
        where {_RELS}""",
    "functions": f"""
        select format('%%s.%%s(%%s)%%s %%s%%s%%s', n.nspname, p.proname, pg_get_function_arguments(p.oid),
                      case p.prokind when 'p' then ' procedure' else ' returns ' || pg_get_function_result(p.oid)
                      end,
                      case p.provolatile when 'i' then 'immutable' when 's' then 'stable' else 'volatile' end,
                      case when p.prosecdef then ' security definer' else '' end,
                      coalesce(' set ' || array_to_string(p.proconfig, ', '), ''))
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where {_SCHEMAS} and {_NOT_EXT.format(oid="p.oid")}""",
    "grants on relations": f"""
        select format('%%s.%%s to %%s: %%s', n.nspname, c.relname, {_GRANTEE},
                      string_agg(lower(a.privilege_type), ', ' order by a.privilege_type))
        from pg_class c join pg_namespace n on n.oid = c.relnamespace,
             aclexplode(coalesce(c.relacl, acldefault(case when c.relkind = 'S' then 's' else 'r' end::"char",
                                                      c.relowner))) a
        where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and {_RELS}
          and ({_GRANTEE}) = any(%(roles)s)
        group by n.nspname, c.relname, a.grantee""",
    "grants on columns": f"""
        select format('%%s.%%s.%%s to %%s: %%s', n.nspname, c.relname, att.attname, {_GRANTEE},
                      string_agg(lower(a.privilege_type), ', ' order by a.privilege_type))
        from pg_attribute att join pg_class c on c.oid = att.attrelid join pg_namespace n on n.oid = c.relnamespace,
             aclexplode(att.attacl) a
        where att.attacl is not null and {_RELS} and ({_GRANTEE}) = any(%(roles)s)
        group by n.nspname, c.relname, att.attname, a.grantee""",
    "grants on functions": f"""
        select format('%%s.%%s(%%s) to %%s: %%s', n.nspname, p.proname,
                      pg_get_function_identity_arguments(p.oid), {_GRANTEE},
                      string_agg(lower(a.privilege_type), ', ' order by a.privilege_type))
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace,
             aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        where {_SCHEMAS} and {_NOT_EXT.format(oid="p.oid")} and ({_GRANTEE}) = any(%(roles)s)
        group by n.nspname, p.proname, p.oid, a.grantee""",
    "grants on schemas": f"""
        select format('%%s to %%s: %%s', n.nspname, {_GRANTEE},
                      string_agg(lower(a.privilege_type), ', ' order by a.privilege_type))
        from pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
        where {_SCHEMAS} and ({_GRANTEE}) = any(%(roles)s)
        group by n.nspname, a.grantee""",
    "default privileges": f"""
        select format('in %%s on %%s to %%s: %%s', coalesce(n.nspname, 'every schema'),
                      case d.defaclobjtype when 'r' then 'tables' when 'S' then 'sequences' when 'f' then 'functions'
                                           when 'T' then 'types' when 'n' then 'schemas' end, {_GRANTEE},
                      string_agg(lower(a.privilege_type), ', ' order by a.privilege_type))
        from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
        where ({_GRANTEE}) = any(%(roles)s) and (n.nspname is null or n.nspname <> all(%(skip_schemas)s))
        group by n.nspname, d.defaclobjtype, a.grantee""",
    "publication supabase_realtime": """
        select format('%%s.%%s%%s%%s', n.nspname, c.relname,
                      coalesce(' (' || (select string_agg(a.attname, ', ' order by a.attnum) from pg_attribute a
                                        where a.attrelid = c.oid and a.attnum = any(r.prattrs)) || ')', ''),
                      coalesce(' where ' || pg_get_expr(r.prqual, r.prrelid), ''))
        from pg_publication p join pg_publication_rel r on r.prpubid = p.oid
        join pg_class c on c.oid = r.prrelid join pg_namespace n on n.oid = c.relnamespace
        where p.pubname = 'supabase_realtime'""",
    "publication supabase_realtime publishes": """
        select format('all tables: %%s; insert %%s, update %%s, delete %%s, truncate %%s; via partition root %%s',
                      puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot)
        from pg_publication where pubname = 'supabase_realtime'""",
    "replica identity": f"""
        select format('%%s.%%s %%s', n.nspname, c.relname,
                      case c.relreplident when 'd' then 'default' when 'n' then 'nothing' when 'f' then 'full'
                           else 'index ' || coalesce((select ic.relname from pg_index i join pg_class ic
                                                      on ic.oid = i.indexrelid
                                                      where i.indrelid = c.oid and i.indisreplident), '?') end)
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p') and {_RELS}""",
}


def dump_schema(url: str) -> str:
    """The contract of the database at url, as text: one "== section" heading per kind of object,
    then its facts, one per line, sorted."""
    params = {"skip_schemas": list(SKIP_SCHEMAS), "skip_tables": list(SKIP_TABLES),
              "skip_triggers": SKIP_TRIGGERS, "roles": list(ROLES)}
    out: list[str] = []
    with psycopg.connect(url) as conn:
        for title, query in SECTIONS.items():
            # pg_get_expr and friends break long expressions over lines: one fact, one line
            lines = sorted(re.sub(r"\s*\n\s*", " ", row[0]) for row in conn.execute(query, params))
            out.append(f"== {title} ({len(lines)})")
            out += lines
            out.append("")
    return "\n".join(out)
