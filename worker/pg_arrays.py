"""One-dimensional arrays in Postgres' binary format, each built in one pass (the worker's insert of
metric rows sends one array per column: sql/queries.sql, insert_metrics).

psycopg dumps a Python list element by element in Python (a dumper lookup, a call and a struct.pack
per element): 6.3 µs of the writer thread's CPU per poll row for the insert's 12 arrays, the largest
cost per row on the client side (tests/bench/bench_ingest.py). A list wrapped in one of these types
(`UuidArray(ids)`) names its element type, and its dumper writes the whole array at once: header,
dimension, then each element as length + bytes (-1 for NULL), the layout of Postgres' array_send().

Only what insert_metrics sends: uuid (str or uuid.UUID), timestamptz (aware datetime), boolean,
integer (int4) and text, each element possibly None. A value that does not fit its type raises
psycopg.DataError naming it, before anything is sent.
"""

from __future__ import annotations

import struct
import uuid
from datetime import datetime, timezone

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper

# Postgres type oids: the array type and its element type.
_UUID, _UUID_ARRAY = 2950, 2951
_TIMESTAMPTZ, _TIMESTAMPTZ_ARRAY = 1184, 1185
_BOOL, _BOOL_ARRAY = 16, 1000
_INT4, _INT4_ARRAY = 23, 1007
_TEXT, _TEXT_ARRAY = 25, 1009

_HEADER = struct.Struct(">iiIii")  # ndim = 1, has nulls, element oid, length, lower bound = 1
_EMPTY = struct.Struct(">iiI")     # ndim = 0, no nulls, element oid
_NULL = b"\xff\xff\xff\xff"
_TRUE, _FALSE = b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x01\x00"
_LEN = struct.Struct(">i").pack
_INT4_ITEM = struct.Struct(">ii").pack
_INT8_ITEM = struct.Struct(">iq").pack
_UUID_LEN = _LEN(16)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


class UuidArray(list):
    """uuid[]: str or uuid.UUID elements."""


class TimestamptzArray(list):
    """timestamptz[]: timezone-aware datetimes."""


class BoolArray(list):
    """boolean[]."""


class Int4Array(list):
    """integer[]."""


class TextArray(list):
    """text[]."""


def _array(values: list, oid: int, items: list[bytes]) -> bytes:
    if not values:
        return _EMPTY.pack(0, 0, oid)
    has_null = 1 if None in values else 0
    return _HEADER.pack(1, has_null, oid, len(values), 1) + b"".join(items)


def _uuid(v) -> bytes:
    if isinstance(v, uuid.UUID):
        return _UUID_LEN + v.bytes
    try:
        raw = bytes.fromhex(v.replace("-", ""))
    except (AttributeError, ValueError, TypeError):
        raw = b""
    if len(raw) != 16:
        raise psycopg.DataError(f"{v!r} is not a uuid")
    return _UUID_LEN + raw


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


class _ArrayDumper(Dumper):
    format = pq.Format.BINARY


class UuidArrayDumper(_ArrayDumper):
    oid = _UUID_ARRAY

    def dump(self, obj: list) -> bytes:
        return _array(obj, _UUID, [_NULL if v is None else _uuid(v) for v in obj])


class TimestamptzArrayDumper(_ArrayDumper):
    oid = _TIMESTAMPTZ_ARRAY

    def dump(self, obj: list) -> bytes:
        return _array(obj, _TIMESTAMPTZ, [_NULL if v is None else _timestamptz(v) for v in obj])


class BoolArrayDumper(_ArrayDumper):
    oid = _BOOL_ARRAY

    def dump(self, obj: list) -> bytes:
        return _array(obj, _BOOL, [_NULL if v is None else _TRUE if v else _FALSE for v in obj])


class Int4ArrayDumper(_ArrayDumper):
    oid = _INT4_ARRAY

    def dump(self, obj: list) -> bytes:
        return _array(obj, _INT4, [_NULL if v is None else _int4(v) for v in obj])


class TextArrayDumper(_ArrayDumper):
    oid = _TEXT_ARRAY

    def dump(self, obj: list) -> bytes:
        return _array(obj, _TEXT, [_NULL if v is None else _text(v) for v in obj])


def register(adapters=None) -> None:
    """Make psycopg use these dumpers (in `adapters`, else for every connection made afterwards)."""
    adapters = adapters if adapters is not None else psycopg.adapters
    for cls, dumper in ((UuidArray, UuidArrayDumper), (TimestamptzArray, TimestamptzArrayDumper),
                        (BoolArray, BoolArrayDumper), (Int4Array, Int4ArrayDumper), (TextArray, TextArrayDumper)):
        adapters.register_dumper(cls, dumper)


register()
