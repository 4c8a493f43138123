"""Malformed and hostile input on raw sockets. After each case the broker must still serve a
real client (Metadata, then a produce/consume round trip with confluent-kafka).

Kafka wire basics used below (all integers big-endian):

    frame            int32 size | size bytes (request or response)
    request header   v1: int16 api_key | int16 api_version | int32 correlation_id
                         | string client_id (int16 length, -1 = null, + UTF-8 bytes)
                     v2 (flexible versions): v1 + tagged fields (unsigned varint count, 0 here)
    response header  v0: int32 correlation_id
                     (ApiVersions responses always use v0, whatever the request version)

Expected behaviour, as Apache Kafka's:
- garbage, a declared size over the maximum request size (Kafka: socket.request.max.bytes,
  100 MiB by default; we send 200 MiB) or a negative size: the broker closes the connection
  without waiting for the body;
- a truncated frame: the broker waits, the client goes away, nothing else is affected;
- an unknown API key: the connection is closed (or answered with an error), never hung;
- ApiVersions with an unsupported version (v99): error 35 UNSUPPORTED_VERSION, with the
  ApiVersions key's supported range, in a v0 response body (KIP-511); the connection stays
  usable for a retry with v0;
- Produce with a record batch whose CRC32C does not match: error 2 CORRUPT_MESSAGE for that
  partition, nothing appended.

A misbehaving client is not a broker fault: none of this may produce an ` ERROR ` log line
(the fixture fails the test on one); log it at WARN or below.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, TopicPartition

API_PRODUCE = 0
API_METADATA = 3
API_VERSIONS = 18
ERR_NONE = 0
ERR_CORRUPT_MESSAGE = 2
ERR_UNSUPPORTED_VERSION = 35

IO_TIMEOUT_S = 10


# --------------------------------------------------------------------------------------------
# encoding


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    """STRING / NULLABLE_STRING: int16 length (-1 = null) + UTF-8 bytes."""
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b: bytes | None) -> bytes:
    """BYTES / NULLABLE_BYTES / RECORDS: int32 length (-1 = null) + bytes."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def uvarint(n: int) -> bytes:
    """Unsigned LEB128 varint (compact lengths, tagged-field counts)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(n: int) -> bytes:
    """Signed zig-zag varint/varlong (record fields)."""
    return uvarint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


def compact_string(s: str) -> bytes:
    """COMPACT_STRING: unsigned varint (length + 1) + UTF-8 bytes."""
    b = s.encode()
    return uvarint(len(b) + 1) + b


def header_v1(api_key, version, corr, client_id="ringlog-it-raw") -> bytes:
    return i16(api_key) + i16(version) + i32(corr) + string(client_id)


def header_v2(api_key, version, corr, client_id="ringlog-it-raw") -> bytes:
    return header_v1(api_key, version, corr, client_id) + uvarint(0)  # no tagged fields


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the RecordBatch v2 checksum."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def encode_record(offset_delta, ts_delta, key, value, headers) -> bytes:
    """Record (inside a v2 batch):
    varint length (of what follows) | int8 attributes (0) | varlong timestampDelta
    | varint offsetDelta | varint keyLength (-1 = null) | key | varint valueLength
    | value | varint headerCount | headers: [varint keyLength | key (UTF-8)
    | varint valueLength (-1 = null) | value]
    """
    body = i8(0) + varint(ts_delta) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(len(headers))
    for hk, hv in headers:
        hkb = hk.encode()
        body += varint(len(hkb)) + hkb
        body += varint(-1) if hv is None else varint(len(hv)) + hv
    return varint(len(body)) + body


def encode_batch(records, base_ts: int) -> bytes:
    """RecordBatch v2 (magic 2), uncompressed, no producer id:
        int64 baseOffset (0; the broker assigns) | int32 batchLength (bytes after this field)
        | int32 partitionLeaderEpoch (-1) | int8 magic (2) | uint32 crc
        | int16 attributes (0: no compression, CreateTime, not transactional, not control)
        | int32 lastOffsetDelta | int64 baseTimestamp | int64 maxTimestamp
        | int64 producerId (-1) | int16 producerEpoch (-1) | int32 baseSequence (-1)
        | int32 recordCount | records
    crc = CRC-32C of everything from attributes to the end.
    records: [(key, value, headers, timestamp)].
    """
    recs = b"".join(
        encode_record(i, ts - base_ts, k, v, h) for i, (k, v, h, ts) in enumerate(records)
    )
    after_crc = (
        i16(0)
        + i32(len(records) - 1)
        + i64(base_ts)
        + i64(max(r[3] for r in records))
        + i64(-1)
        + i16(-1)
        + i32(-1)
        + i32(len(records))
        + recs
    )
    after_length = i32(-1) + i8(2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(after_length)) + after_length


# offsets inside an encoded batch
BATCH_CRC_OFFSET = 8 + 4 + 4 + 1  # baseOffset, batchLength, partitionLeaderEpoch, magic
BATCH_RECORDS_OFFSET = BATCH_CRC_OFFSET + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4


def produce_body(topic: str, partition: int, batch: bytes, acks: int = -1) -> bytes:
    """Produce request v3..v8 body (non-flexible):
    nullable string transactional_id (null) | int16 acks | int32 timeout_ms
    | [topic_data] string name | [partition_data] int32 index | records (int32 length +
    RecordBatch bytes)
    """
    return (
        string(None)
        + i16(acks)
        + i32(30_000)
        + i32(1)
        + string(topic)
        + i32(1)
        + i32(partition)
        + nbytes(batch)
    )


# --------------------------------------------------------------------------------------------
# decoding


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def i16(self):
        return self._take(">h")

    def i32(self):
        return self._take(">i")

    def i64(self):
        return self._take(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s


def parse_produce_response(body: bytes, version: int):
    """Produce response v3..v8 body:
        [responses] string name | [partition_responses] int32 index | int16 error_code
            | int64 base_offset | int64 log_append_time_ms (v2+) | int64 log_start_offset (v5+)
            | [record_errors] (v8+: int32 batch_index | nullable string message)
            | nullable string error_message (v8+)
        | int32 throttle_time_ms
    Returns {(topic, partition): (error_code, base_offset)}."""
    r = Reader(body)
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            index, err, base = r.i32(), r.i16(), r.i64()
            r.i64()  # log_append_time_ms
            if version >= 5:
                r.i64()  # log_start_offset
            if version >= 8:
                for _ in range(r.i32()):
                    r.i32()
                    r.string()
                r.string()
            out[(name, index)] = (err, base)
    r.i32()  # throttle_time_ms
    return out


def parse_api_versions_v0(body: bytes):
    """ApiVersions response v0 body: int16 error_code | [api_keys] int16 api_key
    | int16 min_version | int16 max_version. Returns (error_code, {key: (min, max)})."""
    r = Reader(body)
    err = r.i16()
    ranges = {}
    for _ in range(r.i32()):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        ranges[k] = (lo, hi)
    return err, ranges


# --------------------------------------------------------------------------------------------
# socket helpers


def connect(b) -> socket.socket:
    s = socket.create_connection((b.host, b.port), timeout=IO_TIMEOUT_S)
    s.settimeout(IO_TIMEOUT_S)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(s: socket.socket) -> bytes | None:
    """One response frame's payload, or None if the connection was closed (EOF or reset).
    A broker that neither answers nor closes within IO_TIMEOUT_S fails the test."""
    try:
        head = recv_exact(s, 4)
        if head is None:
            return None
        (size,) = struct.unpack(">i", head)
        assert 0 <= size < 64 << 20, f"absurd response size {size}"
        payload = recv_exact(s, size)
        assert payload is not None, "connection closed in the middle of a response"
        return payload
    except (ConnectionResetError, BrokenPipeError):
        return None
    except socket.timeout:
        raise AssertionError(
            f"broker neither answered nor closed the connection within {IO_TIMEOUT_S} s"
        ) from None


def call(s, api_key, version, corr, body, flexible_header=False) -> bytes:
    """Send one request, return the response body (after the v0 response header)."""
    hdr = (header_v2 if flexible_header else header_v1)(api_key, version, corr)
    s.sendall(frame(hdr + body))
    payload = recv_frame(s)
    assert payload is not None, f"connection closed instead of answering api {api_key} v{version}"
    (rcorr,) = struct.unpack_from(">i", payload)
    assert rcorr == corr, f"correlation id {rcorr}, expected {corr}"
    return payload[4:]


def expect_closed(s: socket.socket, what: str):
    """The broker must close the connection (it may write an error first)."""
    deadline = time.monotonic() + IO_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return
    except (ConnectionResetError, BrokenPipeError):
        return
    except socket.timeout:
        pass
    raise AssertionError(f"{what}: the broker kept the connection open for {IO_TIMEOUT_S} s")


def api_ranges(b) -> dict[int, tuple[int, int]]:
    with connect(b) as s:
        err, ranges = parse_api_versions_v0(call(s, API_VERSIONS, 0, 1, b""))
    assert err == ERR_NONE, err
    return ranges


# --------------------------------------------------------------------------------------------
# tests


def test_crc32c_reference():
    # The check value of CRC-32C, and the encoder's own sanity.
    assert crc32c(b"123456789") == 0xE3069283
    assert varint(0) == b"\x00" and varint(-1) == b"\x01" and varint(1) == b"\x02"
    assert varint(300) == b"\xd8\x04" and uvarint(300) == b"\xac\x02"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="http"),  # size 1.2 GB
        pytest.param(i32(16) + b"\xff" * 16, id="api-key-minus-1"),
        pytest.param(i32(3) + b"\x00\x03\x00", id="frame-shorter-than-header"),
        pytest.param(bytes(range(256)) * 4, id="byte-ramp"),  # size 0x00010203, then junk
        pytest.param(i32(-5) + b"\x00" * 8, id="negative-size"),
    ],
)
def test_garbage_is_rejected(broker, payload):
    b = broker(cores=1)
    with connect(b) as s:
        try:
            s.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            pass
        if payload.startswith(bytes(range(4))):
            # Declared size 66051 with 1020 bytes sent: a broker may wait for the rest;
            # send the rest as junk so the frame is complete and must be rejected.
            try:
                s.sendall(b"\xfe" * (0x00010203 - (len(payload) - 4)))
            except (ConnectionResetError, BrokenPipeError):
                pass
        expect_closed(s, f"garbage {payload[:16]!r}")
    b.assert_serves_clients()


def test_huge_declared_size(broker):
    b = broker(cores=1)
    with connect(b) as s:
        # A 200 MiB frame (over any sane max request size) that starts like an ApiVersions
        # request; only the first bytes are sent: the broker must refuse on the size alone.
        s.sendall(i32(200 << 20) + header_v1(API_VERSIONS, 0, 7))
        expect_closed(s, "200 MiB declared size")
    b.assert_serves_clients()


def test_truncated_frame(broker):
    b = broker(cores=1)
    # Size 100, 20 bytes sent, then the client goes away.
    with connect(b) as s:
        s.sendall(i32(100) + header_v1(API_VERSIONS, 0, 3) + b"\x00" * 2)
    b.assert_serves_clients()
    # The same, but the client stays connected (stalled) while others are served.
    with connect(b) as stalled:
        stalled.sendall(i32(100) + header_v1(API_VERSIONS, 0, 4) + b"\x00" * 2)
        b.assert_serves_clients()
        # It is still a connection: completing the frame gets a normal close or an answer;
        # what matters is that the broker did not block on it.
    b.assert_serves_clients()


def test_unknown_api_key(broker):
    b = broker(cores=1)
    with connect(b) as s:
        s.sendall(frame(header_v1(9999, 0, 42) + b"\x00" * 8))
        payload = recv_frame(s)
        if payload is not None:
            # Kafka closes the connection; a broker that answers must answer this request.
            (rcorr,) = struct.unpack_from(">i", payload)
            assert rcorr == 42, rcorr
    b.assert_serves_clients()


def test_unsupported_api_versions_version(broker):
    b = broker(cores=1)
    with connect(b) as s:
        # ApiVersions v99 as a new client would send it: request header v2 (flexible), body as
        # v3+: compact_string client_software_name | compact_string client_software_version
        # | tagged fields.
        body = compact_string("ringlog-it") + compact_string("1.0") + uvarint(0)
        resp = call(s, API_VERSIONS, 99, 5, body, flexible_header=True)
        try:
            err, ranges = parse_api_versions_v0(resp)
        except struct.error:
            raise AssertionError(
                f"ApiVersions v99 response is not a v0 body (error_code, int32-counted "
                f"[key, min, max]): {resp[:64].hex()}..."
            ) from None
        assert err == ERR_UNSUPPORTED_VERSION, err
        assert API_VERSIONS in ranges, ranges
        lo, hi = ranges[API_VERSIONS]
        assert lo == 0 and 3 <= hi < 99, ranges[API_VERSIONS]

        # The connection is still usable: retry with v0 and get the full list.
        err, ranges = parse_api_versions_v0(call(s, API_VERSIONS, 0, 6, b""))
        assert err == ERR_NONE, err
        for key in (API_PRODUCE, 1, 2, API_METADATA, API_VERSIONS):  # Produce, Fetch,
            assert key in ranges, (key, ranges)  # ListOffsets, Metadata, ApiVersions
    b.assert_serves_clients()


def test_produce_corrupt_crc(broker):
    b = broker(cores=1)
    topic = "raw-produce"
    b.create_topic(topic, partitions=1)
    lo, hi = api_ranges(b)[API_PRODUCE]
    usable = [v for v in range(3, 9) if lo <= v <= hi]
    assert usable, f"Produce versions {lo}..{hi} share none with 3..8"
    version = max(usable)

    base_ts = 1_720_000_000_000
    records = [
        (b"k0", b"v0", [("h", b"x")], base_ts),
        (None, b"no key", [], base_ts + 5),
        (b"k2", None, [("a", b"1"), ("nullh", None)], base_ts - 3),
    ]
    good = encode_batch(records, base_ts)

    with connect(b) as s:
        # A valid batch first: proves the encoding (and the CRC) right.
        resp = parse_produce_response(
            call(s, API_PRODUCE, version, 10, produce_body(topic, 0, good)), version
        )
        assert resp == {(topic, 0): (ERR_NONE, 0)}, resp

        # A record's value byte flipped after the CRC was computed.
        bad = bytearray(good)
        bad[BATCH_RECORDS_OFFSET + 8] ^= 0x01
        resp = parse_produce_response(
            call(s, API_PRODUCE, version, 11, produce_body(topic, 0, bytes(bad))), version
        )
        assert resp[(topic, 0)][0] == ERR_CORRUPT_MESSAGE, resp

        # The CRC field itself damaged.
        bad = bytearray(good)
        bad[BATCH_CRC_OFFSET] ^= 0x80
        resp = parse_produce_response(
            call(s, API_PRODUCE, version, 12, produce_body(topic, 0, bytes(bad))), version
        )
        assert resp[(topic, 0)][0] == ERR_CORRUPT_MESSAGE, resp

        # Nothing was appended: the next valid batch lands at offset 3.
        resp = parse_produce_response(
            call(s, API_PRODUCE, version, 13, produce_body(topic, 0, good)), version
        )
        assert resp == {(topic, 0): (ERR_NONE, 3)}, resp

    # A real consumer reads exactly the two valid batches.
    c = Consumer(
        b.client_config(
            {"group.id": "it-raw", "enable.auto.commit": False, "enable.partition.eof": True}
        )
    )
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 6)
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 6 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.offset(), m.key(), m.value(), m.headers(), m.timestamp()))
    finally:
        c.close()
    want = [
        (o, k, v, h or None, (TIMESTAMP_CREATE_TIME, ts))
        for o, (k, v, h, ts) in enumerate(records + records)
    ]
    assert got == want
    b.assert_serves_clients()
