-- Named queries of the embedded Supabase stand-in (worker/embedded/standin.py). The one statement
-- not here is the RPC call itself, composed per request with psycopg.sql identifiers.

-- name: standin_schema
-- Sessions and refresh tokens of the stand-in's password login, created where missing. Real
-- Supabase Auth has its own auth.sessions / auth.refresh_tokens (these mirror their core columns),
-- so this is not a migration. Refresh tokens are stored as SHA-256 hashes: they are secrets.
create table if not exists auth.sessions (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists sessions_user_id_idx on auth.sessions (user_id);
create table if not exists auth.refresh_tokens (
  id bigint generated always as identity primary key,
  token varchar(255) not null unique,
  user_id uuid not null references auth.users (id) on delete cascade,
  session_id uuid not null references auth.sessions (id) on delete cascade,
  parent varchar(255),
  revoked boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
revoke all on auth.sessions, auth.refresh_tokens from public, anon, authenticated;

-- name: standin_functions
-- Every overload of public.<name>, as PostgREST's schema cache sees it: input argument names and
-- types in order, how many have defaults, and the return kind.
select p.oid::int as oid,
       p.proretset as returns_set,
       p.prorettype = 'void'::regtype as returns_void,
       p.pronargs as nargs,
       p.pronargdefaults as ndefaults,
       coalesce(p.proargnames, '{}') as arg_names,
       coalesce(p.proargmodes::text[], '{}') as arg_modes,
       array(select format_type(t.oid, null)
             from unnest(p.proargtypes::oid[]) with ordinality as t (oid, n) order by t.n) as in_types
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'public' and p.proname = %(name)s and p.prokind = 'f'
order by p.oid;

-- name: standin_request_context
-- What PostgREST does before each call: the JWT's role and claims for this transaction only, so
-- auth.uid() and row-level security see the caller. statement_timeout as Supabase sets for its roles.
select set_config('statement_timeout', %(timeout)s, true),
       set_config('request.method', %(method)s, true),
       set_config('request.path', %(path)s, true),
       set_config('request.jwt.claims', %(claims)s, true),
       set_config('role', %(role)s, true);

-- name: standin_user_by_email
select id, aud, role, email, encrypted_password, email_confirmed_at, last_sign_in_at, raw_app_meta_data,
       raw_user_meta_data, created_at, updated_at
from auth.users where lower(email) = lower(%(email)s);

-- name: standin_user_by_id
select id, aud, role, email, encrypted_password, email_confirmed_at, last_sign_in_at, raw_app_meta_data,
       raw_user_meta_data, created_at, updated_at
from auth.users where id = %(user_id)s;

-- name: standin_mark_sign_in
update auth.users set last_sign_in_at = now() where id = %(user_id)s returning last_sign_in_at;

-- name: standin_insert_session
insert into auth.sessions (id, user_id) values (%(session_id)s, %(user_id)s);

-- name: standin_insert_refresh_token
insert into auth.refresh_tokens (token, user_id, session_id, parent)
values (%(token)s, %(user_id)s, %(session_id)s, %(parent)s);

-- name: standin_take_refresh_token
-- Rotation: a refresh token is used once. The conditional update claims it atomically, so two
-- concurrent refreshes with the same token cannot both succeed.
update auth.refresh_tokens set revoked = true, updated_at = now()
where token = %(token)s and not revoked
returning user_id, session_id;

-- name: standin_refresh_token_revoked
select exists (select 1 from auth.refresh_tokens where token = %(token)s) as known;

-- name: standin_touch_session
update auth.sessions set updated_at = now() where id = %(session_id)s returning id;

-- name: standin_session_exists
select exists (select 1 from auth.sessions where id = %(session_id)s) as found;

-- name: standin_logout
-- scope global: every session of the user; local: this one; others: all but this one.
-- Deleting a session deletes its refresh tokens (on delete cascade).
delete from auth.sessions
where user_id = %(user_id)s
  and case %(scope)s when 'local' then id = %(session_id)s
                     when 'others' then id <> %(session_id)s
                     else true end;
