#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets (fuzz/seeds/<target>/). Run from anywhere;
the files are committed, this script is how they were made. peer_request's inputs are in
`arbitrary`'s format, so its seeds are picked from a fuzzing run's corpus instead."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(tag, data):
    return varint(tag << 3 | 2) + varint(len(data)) + data


def get_response(value=None, minute_qps=None, expire=None):
    out = b""
    if value is not None:
        out += field_bytes(1, value)
    if minute_qps is not None:
        out += varint(2 << 3 | 1) + struct.pack("<d", minute_qps)
    if expire is not None:
        out += varint(3 << 3 | 0) + varint(expire)
    return out


def set_request(group, key, value=None, expire=None):
    out = field_bytes(1, group) + field_bytes(2, key)
    if value is not None:
        out += field_bytes(3, value)
    if expire is not None:
        out += varint(4 << 3 | 0) + varint(expire)
    return out


def get_request(group, key):
    return field_bytes(1, group) + field_bytes(2, key)


def response(status, headers, body):
    head = f"HTTP/1.1 {status}\r\n".encode()
    for name, value in headers:
        head += f"{name}: {value}\r\n".encode()
    return head + b"\r\n" + body


def chunked(body, size=3):
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def write(target, name, data):
    directory = os.path.join(HERE, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


PB = "application/x-protobuf"
TEXT = "text/plain; charset=utf-8"
value = get_response(b"hello from the owner", 1.5, 1_700_000_000_000_000_000)

# peer_answer: the first byte picks the call (R remove, S set, G or anything else get).
answers = {
    "ok_content_length": response("200 OK", [("Content-Type", PB), ("Content-Length", len(value))], value),
    "ok_chunked": response("200 OK", [("Content-Type", PB), ("Transfer-Encoding", "chunked")], chunked(value)),
    "ok_until_close": response("200 OK", [("Content-Type", PB)], value),
    "ok_empty": response("200 OK", [("Content-Type", PB), ("Content-Length", 0)], b""),
    "ok_http10": response("200 OK", [("Content-Type", PB), ("Content-Length", len(value))], value).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "ok_wrong_type": response("200 OK", [("Content-Type", TEXT), ("Content-Length", len(value))], value),
    "ok_cut_short": response("200 OK", [("Content-Type", PB), ("Content-Length", len(value) + 10)], value),
    "ok_too_large": response("200 OK", [("Content-Type", PB), ("Content-Length", 2000)], get_response(b"x" * 1990)),
    "loader_error": response("500 Internal Server Error", [("Content-Type", TEXT), ("groupcache-error", "loader"), ("Content-Length", 20)], b"loader failed: boom\n"),
    "internal_error": response("500 Internal Server Error", [("Content-Type", TEXT), ("Content-Length", 8)], b"oh dear\n"),
    "no_such_group": response("404 Not Found", [("Content-Type", TEXT), ("Content-Length", 19)], b"no such group: fuzz"),
    "overloaded": response("503 Service Unavailable", [("Content-Length", 0)], b""),
    "continue_then_ok": b"HTTP/1.1 100 Continue\r\n\r\n" + response("200 OK", [("Content-Type", PB), ("Content-Length", len(value))], value),
    "redirect": response("302 Found", [("Location", "http://127.0.0.1:1/"), ("Content-Length", 0)], b""),
    "remove_ok": b"R" + response("200 OK", [("Content-Length", 0)], b""),
    "remove_refused": b"R" + response("401 Unauthorized", [("Content-Length", 13)], b"unauthorized\n"),
    "set_ok": b"S" + response("200 OK", [("Content-Length", 0)], b""),
    "set_bad_request": b"S" + response("400 Bad Request", [("Content-Length", 4)], b"bad\n"),
}
for name, data in answers.items():
    write("peer_answer", name, data)

messages = {
    "get_request": get_request(b"fuzz", b"k0"),
    "get_response": value,
    "get_response_value_only": get_response(b"hi"),
    "set_request": set_request(b"fuzz", b"k0", b"v", 5),
    "set_request_no_value": set_request(b"fuzz", b"k0"),
}
for name, data in messages.items():
    write("messages", name, data)

values = {
    "json_object": b'{"name":"alice","age":42,"tags":["a","b"],"score":1.5e300,"ok":true,"none":null}',
    "json_numbers": b"[0,-0,-0.0,1e-320,18446744073709551615,-9223372036854775808,3.141592653589793]",
    "json_escapes": '"\\u00e9\\ud83d\\ude00\\n\\"\\\\ ключ"'.encode(),
    "utf8": "ключ 🔑".encode(),
    "not_utf8": b"\xff\xfe\x00abc",
    # serde_json (without float_roundtrip) reads these a few units in the last place off.
    "json_lossy_float": b"[1843.17300268503459]",
    "json_lossy_float_2": b"2076845753589e-025",
}
for name, data in values.items():
    write("values", name, data)


def batch_request(keys, group=None, max_answer_bytes=None):
    out = b"" if group is None else field_bytes(1, group)
    for key in keys:
        out += field_bytes(2, key)
    if max_answer_bytes is not None:
        out += varint(3 << 3 | 0) + varint(max_answer_bytes)
    return out


# batch: the body of a POST /_groupcache/fuzz/_batch (and the batch messages' bytes).
batches = {
    "two_keys": batch_request([b"k0", b"k1"], b"fuzz"),
    "no_group": batch_request([b"a"]),
    "empty": b"",
    "room_for_one": batch_request([b"k0", b"k1", b"k2"], b"fuzz", 12),
    "over_the_room": batch_request([b"%d" % i for i in range(8)], b"fuzz"),
    "duplicate": batch_request([b"k0", b"k0"], b"fuzz"),
    "too_many": batch_request([b"%d" % i for i in range(9)], b"fuzz"),
    "long_key": batch_request([b"x" * 17], b"fuzz"),
    "other_group": batch_request([b"k0"], b"other"),
    "dot_keys": batch_request([b".", b"..", b"_batch", b""], b"fuzz"),
    "truncated": batch_request([b"k0", b"k1"], b"fuzz")[:-1],
    "entries": varint(3) + field_bytes(1, b"v") + varint(8) + field_bytes(3, b"no row"),
}
for name, data in batches.items():
    write("batch", name, data)
