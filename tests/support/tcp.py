"""The machine's TCP connections as the kernel lists them (/proc/net/tcp), e.g. to see whether a
client kept its connection to a server or opened a new one."""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlsplit

ESTABLISHED = "01"


def _address(hex_pair: str) -> tuple[str, int]:
    host, port = hex_pair.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(host, 16))), int(port, 16)


def client_ports(url: str) -> set[int]:
    """The local ports of the established IPv4 connections to the host and port of `url`."""
    parts = urlsplit(url)
    server = (socket.gethostbyname(parts.hostname), parts.port or 443)
    ports = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[3] == ESTABLISHED and _address(fields[2]) == server:
                ports.add(_address(fields[1])[1])
    return ports
