-- The audit trail shared by consoles, sessions and operations: who did what, to which target, when.
-- Written by the workers (service role) or by SECURITY DEFINER functions; never published.

create table public.audit_log (
  id bigint generated always as identity primary key,
  tenant_id uuid references public.tenants (id) on delete cascade,
  user_id uuid references auth.users (id) on delete set null,
  -- who acted: a person (user), the daily jobs (cron), proxwatch on its own (auto), or the system
  actor text not null default 'user' check (actor in ('user', 'cron', 'auto', 'system')),
  action text not null check (action ~ '^[a-z_]+(\.[a-z_]+)+$'),  -- e.g. connection.session.open
  server_id uuid references public.proxmox_servers (id) on delete set null,
  target_type text,
  target_id text,
  details jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);
create index audit_log_tenant_idx on public.audit_log (tenant_id, created_at desc);
create index audit_log_action_idx on public.audit_log (action, created_at desc);

alter table public.audit_log enable row level security;
-- Admins of a tenant read its trail; nobody but the service role writes it.
create policy audit_admin_read on public.audit_log for select to authenticated
  using (public.has_role(tenant_id, 'admin'));
revoke all on public.audit_log from anon;
revoke insert, update, delete, truncate on public.audit_log from authenticated;
