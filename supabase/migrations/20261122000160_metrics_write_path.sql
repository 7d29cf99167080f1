-- The metric write path: connection_metrics.tenant_id (and the rollup's) is copied from the
-- server row on insert, and deleting a tenant already cascades through its servers. The extra
-- foreign keys to tenants cost a lookup per inserted row (~14 % of a bulk load) and guard nothing.
alter table public.connection_metrics drop constraint connection_metrics_tenant_id_fkey;
alter table public.connection_metrics_hourly drop constraint connection_metrics_hourly_tenant_id_fkey;
