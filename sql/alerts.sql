-- Alerts (worker/alerts.py): channels, rules, silences, draining the outbox, deliveries, the log.

-- name: alert_tenants_due
-- Tenants with an event whose group window has passed, or a held-back (silenced) event to look at again.
select tenant_id from public.alert_events
where state = 'pending' and created_at <= %(now)s::timestamptz - make_interval(secs => %(window_s)s)
union
select tenant_id from public.alert_events where state = 'silenced';

-- name: alert_lock_tenant
-- One drain per tenant at a time (others skip it this round): held until the transaction ends.
select pg_try_advisory_xact_lock(hashtextextended('proxwatch.alerts:' || %(tenant_id)s::text, 0)) as locked;

-- name: alert_open_events
-- The tenant's undecided events (pending ones created by now, and silenced ones), with the server's
-- tags and whether the event's incident is still open; locked for this drain.
select e.*, coalesce(s.tags, '{}') as tags,
       case when e.incident_id is not null then (i.id is not null and i.ended_at is null)
            when e.kind = 'cert_expiry' then exists (
              select 1 from public.node_certificates c
              where c.server_id = e.server_id and c.node = e.node and c.expiring_since is not null
                and format('cert:%%s:%%s:%%s', c.server_id, c.node, (extract(epoch from c.expiring_since) * 1000000)::bigint)
                    = e.problem_key)
            else false end as problem_open
from public.alert_events e
left join public.proxmox_servers s on s.id = e.server_id
left join public.incidents i on i.id = e.incident_id
where e.tenant_id = %(tenant_id)s and (e.state = 'pending' and e.created_at <= %(now)s or e.state = 'silenced')
order by e.created_at, e.id
for update of e skip locked;

-- name: alert_notified_problems
-- Which of these problems had their start sent (an end is sent only for those).
select distinct problem_key from public.alert_events
where problem_key = any(%(keys)s::text[]) and problem and state = 'sent';

-- name: alert_tenant_rules
select * from public.alert_rules where tenant_id = %(tenant_id)s;

-- name: alert_active_silences
select * from public.alert_silences
where tenant_id = %(tenant_id)s and starts_at <= %(now)s and ends_at > %(now)s;

-- name: alert_decide
-- Record the drain's decision for some events.
update public.alert_events set state = %(state)s, reason = %(reason)s, batch_id = %(batch_id)s,
       decided_at = %(now)s
where id = any(%(ids)s::uuid[]);

-- name: alert_queue_deliveries
-- One delivery of a batch per channel of the tenant; the key (channel, batch) makes a retried drain a no-op.
insert into public.alert_deliveries (tenant_id, channel_id, channel_name, batch_id, title, body, notify_type,
                                     next_attempt_at)
select c.tenant_id, c.id, c.name, %(batch_id)s, %(title)s, %(body)s, %(notify_type)s, %(now)s
from public.alert_channels c where c.tenant_id = %(tenant_id)s
on conflict (channel_id, batch_id) do nothing
returning id;

-- name: alert_claim_deliveries
-- Due deliveries, claimed for one try each: pending ones whose time has come, and ones whose sender
-- died (its lease ran out). SKIP LOCKED + the conditional state: two workers never take the same.
update public.alert_deliveries d
set state = 'sending', attempts = d.attempts + 1, lease_until = %(now)s::timestamptz + make_interval(secs => %(lease_s)s)
where d.id in (select id from public.alert_deliveries
               where (state = 'pending' and next_attempt_at <= %(now)s) or (state = 'sending' and lease_until < %(now)s)
               order by next_attempt_at
               limit %(limit)s
               for update skip locked)
returning d.*;

-- name: alert_due_deliveries
-- The deliveries due now (the scheduled job sends one actor message per id; the actor claims it).
select id from public.alert_deliveries
where (state = 'pending' and next_attempt_at <= %(now)s) or (state = 'sending' and lease_until < %(now)s)
order by next_attempt_at limit %(limit)s;

-- name: alert_claim_delivery
-- The same, for one delivery (the actor's message names it).
update public.alert_deliveries d
set state = 'sending', attempts = d.attempts + 1, lease_until = %(now)s::timestamptz + make_interval(secs => %(lease_s)s)
where d.id = (select id from public.alert_deliveries
              where id = %(id)s and ((state = 'pending' and next_attempt_at <= %(now)s)
                                     or (state = 'sending' and lease_until < %(now)s))
              for update skip locked)
returning d.*;

-- name: alert_channel_secret
select id, tenant_id, name, kind, url_ciphertext, failing, consecutive_failures
from public.alert_channels where id = %(id)s;

-- name: alert_delivery_done
-- The outcome of a try, only by the sender that holds the claim (same attempt number, still sending).
update public.alert_deliveries
set state = %(state)s, next_attempt_at = %(next_attempt_at)s, lease_until = null, last_answer = %(answer)s,
    delivered_at = case when %(state)s = 'delivered' then %(now)s end
where id = %(id)s and state = 'sending' and attempts = %(attempt)s
returning id;

-- name: alert_channel_outcome
update public.alert_channels
set consecutive_failures = case when %(ok)s then 0 else consecutive_failures + 1 end,
    failing = case when %(ok)s then false else consecutive_failures + 1 >= %(max_attempts)s end,
    last_error = case when %(ok)s then last_error else %(answer)s end,
    last_success_at = case when %(ok)s then %(now)s else last_success_at end,
    last_failure_at = case when %(ok)s then last_failure_at else %(now)s end
where id = %(id)s
returning failing, consecutive_failures;

-- name: alert_log_attempt
insert into public.alert_attempts (tenant_id, delivery_id, channel_id, channel_name, attempt, outcome, answer,
                                   duration_ms, attempted_at)
values (%(tenant_id)s, %(delivery_id)s, %(channel_id)s, %(channel_name)s, %(attempt)s, %(outcome)s, %(answer)s,
        %(duration_ms)s, %(now)s);

-- name: alert_channel_add
insert into public.alert_channels (tenant_id, name, kind, url_ciphertext, url_masked)
values (%(tenant_id)s, %(name)s, %(kind)s, %(url_ciphertext)s, %(url_masked)s)
returning id, name, kind, url_masked;

-- name: alert_channel_by_name
select c.id, c.tenant_id, c.name, c.kind, c.url_masked, c.url_ciphertext, t.name as tenant_name
from public.alert_channels c join public.tenants t on t.id = c.tenant_id
where c.name = %(name)s and (%(tenant)s::text is null or t.name = %(tenant)s);

-- name: alert_channels_list
select * from public.alert_channels_list();

-- name: alert_channel_remove
select public.alert_channel_remove(%(id)s) as removed;

-- name: alert_rules_list
select r.*, t.name as tenant_name, s.name as server_name
from public.alert_rules r join public.tenants t on t.id = r.tenant_id
left join public.proxmox_servers s on s.id = r.server_id
where %(tenant)s::text is null or t.name = %(tenant)s
order by t.name, r.server_id nulls first, r.tag nulls first;

-- name: alert_rule_upsert
-- Create or change the rule of a scope (tenant, server or tag); only the fields given change.
insert into public.alert_rules as r (tenant_id, server_id, tag, offline, recovered, degraded, cert_expiry,
                                     operation_failed, latency_ms, latency_polls, success_rate_pct, repeat_interval_s,
                                     flaps)
values (%(tenant_id)s, %(server_id)s, %(tag)s, coalesce(%(offline)s, true), coalesce(%(recovered)s, true),
        coalesce(%(degraded)s, false), coalesce(%(cert_expiry)s, true), coalesce(%(operation_failed)s, true),
        nullif(%(latency_ms)s, 0), coalesce(%(latency_polls)s, 3), nullif(%(success_rate_pct)s, 0),
        nullif(%(repeat_interval_s)s, 0), coalesce(%(flaps)s, false))
on conflict (tenant_id, coalesce(server_id, '00000000-0000-0000-0000-000000000000'::uuid), coalesce(tag, ''))
do update set
  offline = coalesce(%(offline)s, r.offline), recovered = coalesce(%(recovered)s, r.recovered),
  degraded = coalesce(%(degraded)s, r.degraded), cert_expiry = coalesce(%(cert_expiry)s, r.cert_expiry),
  operation_failed = coalesce(%(operation_failed)s, r.operation_failed),
  latency_ms = case when %(latency_ms)s::integer is null then r.latency_ms else nullif(%(latency_ms)s, 0) end,
  latency_polls = coalesce(%(latency_polls)s, r.latency_polls),
  success_rate_pct = case when %(success_rate_pct)s::numeric is null then r.success_rate_pct
                          else nullif(%(success_rate_pct)s, 0) end,
  repeat_interval_s = case when %(repeat_interval_s)s::integer is null then r.repeat_interval_s
                           else nullif(%(repeat_interval_s)s, 0) end,
  flaps = coalesce(%(flaps)s, r.flaps),
  updated_at = now()
returning *;

-- name: alert_silence_add
select public.alert_silence_add(%(tenant_id)s, %(server_id)s, %(tag)s, %(for_s)s, %(reason)s) as id;

-- name: alert_silences_list
select a.*, t.name as tenant_name, s.name as server_name, (a.ends_at > now()) as active
from public.alert_silences a join public.tenants t on t.id = a.tenant_id
left join public.proxmox_servers s on s.id = a.server_id
where (%(all)s or a.ends_at > now()) and (%(tenant)s::text is null or t.name = %(tenant)s)
order by a.ends_at desc;

-- name: alert_silence_find
select id from public.alert_silences where id::text like %(prefix)s || '%%';

-- name: alert_silence_end
select public.alert_silence_end(%(id)s) as ended;

-- name: alert_log
-- The delivery log, newest first: every try of every channel.
select a.attempted_at, t.name as tenant_name, a.channel_name, a.attempt, a.outcome, a.answer, a.duration_ms,
       d.title, d.state as delivery_state
from public.alert_attempts a join public.tenants t on t.id = a.tenant_id
left join public.alert_deliveries d on d.id = a.delivery_id
where %(tenant)s::text is null or t.name = %(tenant)s
order by a.attempted_at desc, a.id desc
limit %(limit)s;

-- name: node_certificate_store
-- The certificate a node serves, as just read; its trigger opens or closes the "expires within
-- 14 days" problem (and writes its alert event) in this statement's transaction.
insert into public.node_certificates as c (server_id, node, tenant_id, filename, subject, san, fingerprint, not_after,
                                           checked_at)
select s.id, %(node)s, s.tenant_id, %(filename)s, %(subject)s, %(san)s, %(fingerprint)s, %(not_after)s, %(checked_at)s
from public.proxmox_servers s where s.id = %(server_id)s
on conflict (server_id, node) do update set
  filename = excluded.filename, subject = excluded.subject, san = excluded.san, fingerprint = excluded.fingerprint,
  not_after = excluded.not_after, checked_at = excluded.checked_at
returning node, filename, not_after, expiring_since;

-- name: node_certificates_of_server
select node, filename, subject, not_after, checked_at, expiring_since from public.node_certificates
where server_id = %(server_id)s order by node;

-- name: alert_check
-- Threshold conditions opened and closed, reminders queued (see the migration alert_conditions).
select * from public.alert_check(%(now)s);

-- name: server_set_tags
-- A server's tags (what alert rules and silences can address by --tag).
update public.proxmox_servers set tags = %(tags)s::text[], updated_at = now() where id = %(id)s
returning name, tags;

-- name: alert_purge
-- Alert history past its retention: decided events, finished deliveries (their tries go with them),
-- and test tries. Open problems' events stay while pending or silenced.
with events as (
  delete from public.alert_events
  where state in ('sent', 'dropped') and decided_at < now() - make_interval(days => %(days)s)
  returning 1
), deliveries as (
  delete from public.alert_deliveries
  where state in ('delivered', 'failed') and created_at < now() - make_interval(days => %(days)s)
  returning 1
), attempts as (
  delete from public.alert_attempts
  where delivery_id is null and attempted_at < now() - make_interval(days => %(days)s)
  returning 1
)
select (select count(*) from events) as events, (select count(*) from deliveries) as deliveries,
       (select count(*) from attempts) as attempts;
