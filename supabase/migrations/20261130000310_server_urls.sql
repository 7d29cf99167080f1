-- A PVE API address as update_server() accepts it: the rules of worker/urls.py server_url(), step
-- for step, so the CLI and the API agree (tests/integration/test_input_urls.py feeds both the same
-- cases). The old version matched one regular expression and stored `https://host?x=1` as
-- `https://host?x=1:8006`; it refused IPv6 literals.
--
-- https only; no user name or password (never repeated in the sentence), no query, no fragment, no
-- path but `/`; the host a DNS name (ASCII labels of at most 63), a dotted IPv4 address or an IPv6
-- literal in brackets (kept in brackets, lower case); the port 1-65535, 8006 when none is given.
-- Result: https://host:port. Raises 22023 with a sentence otherwise.
create or replace function public.server_url(p_url text, p_what text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v_url text := btrim(coalesce(p_url, ''), E' \t\n\r\x0b\x0c');
  v_shown text;
  v_auth text;
  v_path text;
  v_inside text;
  v_after text;
  v_host text;
  v_port_text text;
  v_port integer;
  v_ok boolean;
begin
  if v_url = '' then
    raise exception 'the % is empty: give https://HOST[:PORT]', p_what using errcode = '22023';
  end if;
  if length(v_url) > 300 then
    raise exception 'the % is longer than 300 characters', p_what using errcode = '22023';
  end if;
  -- As the sentence may repeat it: short, and nothing before an '@'.
  v_shown := regexp_replace(v_url, '^([^:]*://)?.*@', '\1***@');
  v_shown := quote_literal(case when length(v_shown) <= 80 then v_shown else left(v_shown, 77) || '...' end);
  if v_url !~ '^[!-~]+$' then
    raise exception 'the % % contains spaces, control characters or non-ASCII characters (write host names in punycode, xn--…)',
      p_what, v_shown using errcode = '22023';
  end if;
  if lower(left(v_url, 8)) <> 'https://' then
    raise exception 'the % % must start with https:// (the PVE API is served over HTTPS, port 8006)', p_what, v_shown
      using errcode = '22023';
  end if;
  v_auth := substring(substr(v_url, 9) from '^[^/?#]*');
  v_path := substr(v_url, 9 + length(v_auth));
  if position('@' in v_auth) > 0 then
    raise exception 'the % % has a user name or password in it: give credentials with --token or --user/--password, never in the address',
      p_what, v_shown using errcode = '22023';
  end if;
  if position('?' in v_url) > 0 then
    raise exception 'the % % has a query (?…): give only https://HOST[:PORT]', p_what, v_shown using errcode = '22023';
  end if;
  if position('#' in v_url) > 0 then
    raise exception 'the % % has a fragment (#…): give only https://HOST[:PORT]', p_what, v_shown
      using errcode = '22023';
  end if;
  if length(v_auth) - length(replace(v_auth, '[', '')) <> length(v_auth) - length(replace(v_auth, ']', ''))
     or length(v_auth) - length(replace(v_auth, '[', '')) > 1
     or (position('[' in v_auth) > 0 and left(v_auth, 1) <> '[') then
    raise exception 'the % % has brackets that do not enclose one IPv6 address, like https://[fd00::1]:8006',
      p_what, v_shown using errcode = '22023';
  end if;
  if left(v_auth, 1) = '[' then
    v_inside := split_part(substr(v_auth, 2), ']', 1);
    v_after := substr(v_auth, length(v_inside) + 3);
    begin
      v_ok := position(':' in v_inside) > 0 and position('%' in v_inside) = 0
              and family(v_inside::inet) = 6 and masklen(v_inside::inet) = 128;
    exception when others then
      v_ok := false;
    end;
    if not v_ok then
      raise exception 'the % % has % in brackets, which is not an IPv6 address (like [fd00::1]; zone ids are not supported)',
        p_what, v_shown, quote_literal(left(v_inside, 60)) using errcode = '22023';
    end if;
    if v_after <> '' and left(v_after, 1) <> ':' then
      raise exception 'the % % has something after the IPv6 address that is not a port', p_what, v_shown
        using errcode = '22023';
    end if;
  end if;
  if v_path not in ('', '/') then
    raise exception 'the % % has a path (%): give only https://HOST[:PORT] (proxwatch adds /api2/json)',
      p_what, v_shown, left(v_path, 40) using errcode = '22023';
  end if;
  if v_inside is not null then
    v_host := '[' || lower(v_inside) || ']';
    v_port_text := case when v_after = '' then null else substr(v_after, 2) end;
  else
    if length(v_auth) - length(replace(v_auth, ':', '')) > 1 then
      raise exception 'the % % looks like an IPv6 address: write it in brackets, like https://[fd00::1]:8006',
        p_what, v_shown using errcode = '22023';
    end if;
    v_host := lower(split_part(v_auth, ':', 1));
    v_port_text := case when position(':' in v_auth) > 0 then split_part(v_auth, ':', 2) end;
    if v_host = '' then
      raise exception 'the % % has no host', p_what, v_shown using errcode = '22023';
    end if;
    if length(v_host) > 253 then
      raise exception 'the % % has a host name longer than 253 characters', p_what, v_shown using errcode = '22023';
    end if;
    if v_host ~ '^[0-9.]+$' then
      if v_host !~ '^(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}$'
         or exists (select 1 from unnest(string_to_array(v_host, '.')) o where o::integer > 255) then
        raise exception 'the % % has a host % that is not an IPv4 address (four numbers 0-255, like 192.0.2.10)',
          p_what, v_shown, quote_literal(v_host) using errcode = '22023';
      end if;
    elsif v_host !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$' then
      raise exception 'the % % has a host % that is not a host name (letters, digits and hyphens; write other names in punycode, xn--…)',
        p_what, v_shown, quote_literal(left(v_host, 80)) using errcode = '22023';
    end if;
  end if;
  if v_port_text is null then
    v_port := 8006;
  elsif v_port_text !~ '^[0-9]{1,5}$' then
    raise exception 'the % % has a port that is not a number from 1 to 65535', p_what, v_shown using errcode = '22023';
  else
    v_port := v_port_text::integer;
    if v_port not between 1 and 65535 then
      raise exception 'the % % has a port outside 1-65535', p_what, v_shown using errcode = '22023';
    end if;
  end if;
  return 'https://' || v_host || ':' || v_port;
end
$$;
