"""One-dimensional arrays in Postgres' binary format, each built in one pass (the worker's insert of
metric rows sends one array per column: sql/queries.sql, insert_metrics).

psycopg dumps a Python list element by element in Python (a dumper lookup, a call and a struct.pack
per element), and does it while the write's transaction is open: 3.2 µs of CPU per poll row for the
insert's 12 arrays, plus 0.3 µs to gather them (batches of 112 rows; a loop over metric_params and
psycopg's PostgresQuery.dump). A list wrapped in one of these types (`UuidArray(ids)`) is encoded
whole when it is made — header, dimension, then each element as length + bytes (-1 for NULL), the
layout of Postgres' array_send() — and its dumper returns those bytes: 2.5 µs per row for the whole
parameter set, spent before the transaction begins, so the backend does not wait inside it for the
client to encode them.

Only what insert_metrics sends: uuid (str or uuid.UUID), timestamptz (aware datetime), boolean,
integer (int4) and text, each element possibly None. A value that does not fit its type raises
psycopg.DataError naming it when the array is made, before anything is sent.
"""

from __future__ import annotations

import struct
import uuid
from datetime import datetime, timezone

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper

_HEADER = struct.Struct(">iiIii")  # ndim = 1, has nulls, element oid, length, lower bound = 1
_EMPTY = struct.Struct(">iiI")     # ndim = 0, no nulls, element oid
_NULL = b"\xff\xff\xff\xff"
_TRUE, _FALSE = b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x01\x00"
_LEN = struct.Struct(">i").pack
_INT4_ITEM = struct.Struct(">ii").pack
_INT8_ITEM = struct.Struct(">iq").pack
_UUID_LEN = _LEN(16)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


# A worker writes the same few thousand server ids over and over: their encodings are kept (a dict
# lookup instead of a hex parse), up to _UUIDS_MAX of them.
_UUIDS: dict[str, bytes] = {}
_UUIDS_MAX = 100_000


def _uuid(v) -> bytes:
    if isinstance(v, uuid.UUID):
        return _UUID_LEN + v.bytes
    try:
        return _UUIDS[v]
    except (KeyError, TypeError):
        pass
    try:
        raw = bytes.fromhex(v.replace("-", ""))
    except (AttributeError, ValueError, TypeError):
        raw = b""
    if len(raw) != 16:
        raise psycopg.DataError(f"{v!r} is not a uuid")
    if len(_UUIDS) >= _UUIDS_MAX:
        _UUIDS.clear()
    _UUIDS[v] = item = _UUID_LEN + raw
    return item


def _timestamptz(v: datetime) -> bytes:
    if not isinstance(v, datetime) or v.tzinfo is None:
        raise psycopg.DataError(f"{v!r} is not a timezone-aware datetime")
    d = v - _PG_EPOCH
    return _INT8_ITEM(8, (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds)


def _int4(v) -> bytes:
    try:
        return _INT4_ITEM(4, v)
    except struct.error:
        raise psycopg.DataError(f"{v!r} is not an integer within the integer type's range") from None


def _text(v) -> bytes:
    if not isinstance(v, str):
        raise psycopg.DataError(f"{v!r} is not text")
    try:
        raw = v.encode()
    except UnicodeEncodeError:
        raise psycopg.DataError(f"{v!r} cannot be encoded as UTF-8") from None
    return _LEN(len(raw)) + raw


def _bool(v) -> bytes:
    return _TRUE if v else _FALSE


class _Array:
    """An array of one element type, encoded when it is made (so a write's parameters cost nothing more
    once its transaction has begun): `data` is what psycopg sends."""
    __slots__ = ("data",)
    oid = 0            # the array type
    element = 0        # its element type
    encode = None      # one element (not None) -> length + bytes

    def __init__(self, values) -> None:
        encode = type(self).encode
        items = [_NULL if v is None else encode(v) for v in values]
        if not items:
            self.data = _EMPTY.pack(0, 0, self.element)
        else:
            self.data = _HEADER.pack(1, 1 if _NULL in items else 0, self.element, len(items), 1) + b"".join(items)


class UuidArray(_Array):
    """uuid[]: str or uuid.UUID elements."""
    oid, element, encode = 2951, 2950, staticmethod(_uuid)


class TimestamptzArray(_Array):
    """timestamptz[]: timezone-aware datetimes."""
    oid, element, encode = 1185, 1184, staticmethod(_timestamptz)


class BoolArray(_Array):
    """boolean[]."""
    oid, element, encode = 1000, 16, staticmethod(_bool)


class Int4Array(_Array):
    """integer[]."""
    oid, element, encode = 1007, 23, staticmethod(_int4)


class TextArray(_Array):
    """text[]."""
    oid, element, encode = 1009, 25, staticmethod(_text)


def register(adapters=None) -> None:
    """Make psycopg send these arrays as they are (in `adapters`, else for every connection made
    afterwards): a binary dumper per array type that returns the encoded bytes."""
    adapters = adapters if adapters is not None else psycopg.adapters
    for cls in (UuidArray, TimestamptzArray, BoolArray, Int4Array, TextArray):
        dumper = type(f"{cls.__name__}Dumper", (Dumper,), {"format": pq.Format.BINARY, "oid": cls.oid,
                                                           "dump": lambda self, obj: obj.data})
        adapters.register_dumper(cls, dumper)


register()
