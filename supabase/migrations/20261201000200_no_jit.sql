-- No statement of proxwatch is compiled by JIT (issue 12), and the rollup rows the fold rewrites in place
-- leave room on their pages for the new version.
--
-- Postgres compiles a statement with LLVM when the planner's estimate passes jit_above_cost (100,000
-- by default). proxwatch's functions read the raw polls through lateral lookups over every daily
-- partition, whose estimates are far above that however few rows they touch; compiling then costs far
-- more than running. Measured on a database of 1,000 servers, 16 M polls in 15 partitions and a year of
-- rollups (auto_explain; wall time median of 5, JIT on / off):
--   alert_check()            (the worker, every 30 s)          397 ms of JIT: 332 / 6.2 ms
--   connection_history(s, 1) (the fleet page's "1 h" chart)     54 ms of JIT:  57 / 2.4 ms
--   fleet_heartbeats(30)     (every server's beats)             73 ms of JIT: 201 / 135 ms
--   refresh_fleet_uptime()   (hourly)                           34 ms of JIT: 130 / 97 ms
--   fold_connection_metrics_rollup(...)  91 ms of its 199 (migration fold_lookup set it off already)
-- On a 50-server database alert_check still compiled for 274 ms (277 / 3.9 ms): the estimates, not the
-- data, decide. So every function of the schema runs with `jit = off` (as a function setting: the
-- database's and the roles' settings stay the owner's). A later `create or replace function` resets a
-- function's settings: it must say `set jit = off` again (tests/integration/test_no_jit.py checks
-- every function).
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure
    from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    join pg_language l on l.oid = p.prolang
    where n.nspname = 'public' and l.lanname in ('sql', 'plpgsql') and p.proowner = current_user::regrole
      and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                                                  and d.deptype = 'e')
  loop
    execute format('alter function %s set jit = off', f);
  end loop;
end
$$;

-- The fold adds each server's deltas to its hourly and daily rows about once a poll (every 10 s), and
-- rewrites its server row when the status changes or is stale: with full pages (fillfactor 100) every
-- such update puts the new row version on another page, with new entries in every index. With a fifth
-- of each page free the new version stays on its page (a HOT update, no index entries) and the old
-- ones are pruned in place: a fold of 500 polls took 19-22 ms instead of 23-25 ms, and 91-93 % of the
-- hourly updates were HOT instead of 49-56 % (Recorder.write() of 500 polls, each folded, 40,000 polls).
-- New pages only: existing ones keep their rows until they are rewritten.
alter table public.connection_metrics_hourly set (fillfactor = 80);
alter table public.connection_metrics_daily set (fillfactor = 80);
alter table public.proxmox_servers set (fillfactor = 80);
