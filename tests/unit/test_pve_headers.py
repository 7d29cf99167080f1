"""The worker reads HTTP answer headers with a short path (worker.pve._parse_headers); whatever a
server sends, the headers it gives to the HTTP client are the ones the standard parser gives."""

from __future__ import annotations

import io

import pytest

from worker import pve

ANSWERS = [
    b"Cache-Control: max-age=0\r\nConnection: Keep-Alive\r\nDate: Mon, 30 Nov 2026 18:00:00 GMT\r\n"
    b"Pragma: no-cache\r\nServer: pve-api-daemon/3.0\r\nContent-Length: 83\r\n"
    b"Content-Type: application/json;charset=UTF-8\r\nExpires: Mon, 30 Nov 2026 18:00:00 GMT\r\n\r\n{\"data\":1}",
    b"Content-Type: application/json\nContent-Length: 2\n\n{}",          # bare LF line ends
    b"X-Blank:\r\nX-Spaces:   padded   \r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n",
    b"X-Folded: first\r\n  second line\r\n\r\n",                          # obsolete line folding
    b"Not a header line\r\nX-A: b\r\n\r\n",                               # a line without a colon
    b"X-Latin: caf\xe9\r\n\r\n",                                          # ISO-8859-1 bytes
    b"X-Cr: a\rb\r\n\r\n",                                                # a stray CR inside a value
    b"X-Cut: the answer ends here\r\n",                                   # no blank line: cut short
    b"\r\n",                                                              # no headers at all
]


@pytest.mark.parametrize("raw", ANSWERS)
def test_headers_are_read_as_the_standard_parser_reads_them(raw):
    fast, standard = io.BytesIO(raw), io.BytesIO(raw)
    got, want = pve._parse_headers(fast), pve._email_parse_headers(standard)
    assert got.items() == want.items()
    assert got.get_payload() == want.get_payload() and [type(d) for d in got.defects] == [type(d) for d in want.defects]
    assert fast.read() == standard.read()  # the body is left to read, byte for byte
