"""A PVE API address as people type it → the one form proxwatch stores: `https://HOST:PORT`.

Steps (server_url):
1. refuse spaces, control and non-ASCII characters (host names in punycode), more than 300 characters;
2. refuse every scheme but https, then split with urllib.parse (never by hand: `https://host?x=1`
   is a host and a query, not a host named `host?x=1`);
3. refuse a user name or password (`https://root:pw@host`: credentials go to --token, and the
   sentence never repeats them), a query, a fragment, and any path but `/`;
4. check the host: a DNS name (ASCII letters, digits, hyphens; labels of at most 63), a dotted
   IPv4 address, or an IPv6 literal in brackets (`[fd00::1]`, kept in brackets);
5. the port: 1-65535, PVE's 8006 when none is given.

public.server_url() (supabase/migrations/20261130000310_server_urls.sql) applies the same rules to
what update_server() receives; tests/integration/test_input_urls.py feeds both the same cases.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from worker.errors import ProxwatchError

DEFAULT_PORT = 8006
MAX_LENGTH = 300
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_OCTET = re.compile(r"0|[1-9][0-9]{0,2}")
_PORT = re.compile(r"[0-9]{1,5}")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_ASCII_SPACE = " \t\n\r\x0b\x0c"   # what is trimmed (SQL's btrim trims exactly these too)


class UrlError(ProxwatchError, ValueError):
    """The address is not https://HOST[:PORT]."""


def _shown(url: str) -> str:
    """The URL as a sentence may repeat it: short, and without anything before an '@'."""
    if "@" in url:
        scheme, sep, rest = url.partition("://")
        url = (scheme + sep if sep else "") + "***@" + rest.rsplit("@", 1)[-1]
    return repr(url if len(url) <= 80 else url[:77] + "...")


def _host_error(host: str) -> str | None:
    """Why host (lower case, without brackets) is not a host name or address; None when it is."""
    if not host:
        return "has no host"
    if len(host) > 253:
        return "has a host name longer than 253 characters"
    if re.fullmatch(r"[0-9.]+", host):
        parts = host.split(".")
        if len(parts) != 4 or not all(_OCTET.fullmatch(p) and int(p) <= 255 for p in parts):
            return f"has a host {host!r} that is not an IPv4 address (four numbers 0-255, like 192.0.2.10)"
        return None
    if not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return (f"has a host {host[:80]!r} that is not a host name (letters, digits and hyphens; "
                "write other names in punycode, xn--…)")
    return None


def server_url(raw: str, what: str = "URL") -> str:
    """`https://HOST[:PORT][/]` → `https://host:port`, or UrlError with a sentence."""
    if not isinstance(raw, str):
        raise UrlError(f"the {what} must be text, like https://pve.example.com:8006")
    url = raw.strip(_ASCII_SPACE)
    if not url:
        raise UrlError(f"the {what} is empty: give https://HOST[:PORT]")
    if len(url) > MAX_LENGTH:
        raise UrlError(f"the {what} is longer than {MAX_LENGTH} characters")
    if not _VISIBLE_ASCII.fullmatch(url):
        raise UrlError(f"the {what} {_shown(url)} contains spaces, control characters or non-ASCII characters "
                       "(write host names in punycode, xn--…)")
    if url[:8].lower() != "https://":
        raise UrlError(f"the {what} {_shown(url)} must start with https:// (the PVE API is served over HTTPS, "
                       "port 8006)")
    authority = re.split(r"[/?#]", url[8:], maxsplit=1)[0]
    if "@" in authority:
        raise UrlError(f"the {what} {_shown(url)} has a user name or password in it: give credentials with "
                       "--token or --user/--password, never in the address")
    if "?" in url:
        raise UrlError(f"the {what} {_shown(url)} has a query (?…): give only https://HOST[:PORT]")
    if "#" in url:
        raise UrlError(f"the {what} {_shown(url)} has a fragment (#…): give only https://HOST[:PORT]")
    if authority.count("[") != authority.count("]") or authority.count("[") > 1 \
            or ("[" in authority and not authority.startswith("[")):
        raise UrlError(f"the {what} {_shown(url)} has brackets that do not enclose one IPv6 address, "
                       "like https://[fd00::1]:8006")
    ipv6 = None
    if authority.startswith("["):
        inside, _, after = authority[1:].partition("]")
        try:
            ipaddress.IPv6Address(inside)
            valid = "%" not in inside
        except ValueError:
            valid = False
        if not valid:
            raise UrlError(f"the {what} {_shown(url)} has {inside[:60]!r} in brackets, which is not an IPv6 "
                           "address (like [fd00::1]; zone ids are not supported)")
        if after and not after.startswith(":"):
            raise UrlError(f"the {what} {_shown(url)} has something after the IPv6 address that is not a port")
        ipv6 = (inside.lower(), f"[{inside.lower()}]", after[1:] if after else None)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # urllib's own checks (e.g. of the bracketed address)
        raise UrlError(f"the {what} {_shown(url)} is not a URL ({exc})") from None
    netloc = parts.netloc
    if parts.path not in ("", "/"):
        raise UrlError(f"the {what} {_shown(url)} has a path ({parts.path[:40]}): give only https://HOST[:PORT] "
                       "(proxwatch adds /api2/json)")
    if ipv6 is not None:
        host, shown_host, port_text = ipv6
    else:
        if netloc.count(":") > 1:
            raise UrlError(f"the {what} {_shown(url)} looks like an IPv6 address: write it in brackets, "
                           "like https://[fd00::1]:8006")
        host, colon, port_text = netloc.partition(":")
        host = host.lower()
        port_text = port_text if colon else None
        problem = _host_error(host)
        if problem:
            raise UrlError(f"the {what} {_shown(url)} {problem}")
        shown_host = host
    if port_text is None:
        port = DEFAULT_PORT
    elif not _PORT.fullmatch(port_text):
        raise UrlError(f"the {what} {_shown(url)} has a port that is not a number from 1 to 65535")
    else:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise UrlError(f"the {what} {_shown(url)} has a port outside 1-65535")
    return f"https://{shown_host}:{port}"
