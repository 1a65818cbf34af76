"""Protobuf wire helpers for forwarding requests as bytes.

The router parses each ModelInferRequest once (to validate it and read the model name)
but forwards the caller's original bytes. Where it must change a field it appends the
field's encoding instead of re-serialising: for a singular scalar field the last
occurrence on the wire wins, so ``raw + field`` overrides whatever ``raw`` held.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

#: Wire tags (field number << 3 | wire type 2, length-delimited) used below.
_TAG_MODEL_VERSION = b"\x12"  # ModelInferRequest/Response.model_version = 2
_TAG_ID = b"\x1a"  # ModelInferRequest/Response.id = 3
_TAG_STREAM_RESPONSE = b"\x12"  # ModelStreamInferResponse.infer_response = 2
_TAG_PARAMETERS = b"\x22"  # ModelInferRequest.parameters = 4 (map entries)
_TAG_MAP_KEY = b"\x0a"  # map entry key = 1
_TAG_MAP_VALUE = b"\x12"  # map entry value = 2
_TAG_INT64_PARAM = b"\x10"  # InferParameter.int64_param = 2 (varint)
_TAG_STRING_PARAM = b"\x1a"  # InferParameter.string_param = 3
_FIELD_ID = 3  # ModelInferResponse.id
_FIELD_STREAM_ERROR = 1
_FIELD_STREAM_RESPONSE = 2


class WireError(ValueError):
    """Bytes that are not the protobuf message they should be (a worker's bug, not a caller's)."""


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    if pos < len(buf) and buf[pos] < 0x80:  # one byte: tags and short lengths, the usual case
        return buf[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, memoryview]]:
    """Yield (field number, payload) for each top-level length-delimited field; skip the rest.

    Only what the router needs to read without parsing whole messages: strings and
    sub-messages. Varint and fixed-width fields are stepped over. Payloads are views,
    so stepping over a large tensor copies nothing.
    """
    view = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise WireError("truncated field")
            yield key >> 3, view[pos : pos + length]
            pos += length
        elif wire_type == 0:
            _, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def model_version_field(version: str) -> bytes:
    """The encoded ``model_version`` field; appended to a message it overrides the message's version."""
    return _field(_TAG_MODEL_VERSION, version.encode())


def id_field(request_id: str) -> bytes:
    """The encoded ``id`` field; appended to a message it overrides the message's id."""
    return _field(_TAG_ID, request_id.encode())


def with_id(raw: bytes, request_id: str) -> bytes:
    """The message ``raw`` with its ``id`` overridden (a cached response gets the caller's id)."""
    return raw + id_field(request_id)


def stream_response(infer_response: bytes) -> bytes:
    """A ModelStreamInferResponse wrapping an already-serialised ModelInferResponse."""
    return _field(_TAG_STREAM_RESPONSE, infer_response)


@functools.lru_cache(maxsize=64)
def _map_key(name: str) -> bytes:
    # The key part of a parameters entry: the router sends the same few names on every request.
    return _field(_TAG_MAP_KEY, name.encode())


def int64_parameter_field(name: str, value: int) -> bytes:
    """The encoded map entry ``parameters[name] = value``; appended, it overrides an earlier one."""
    param = _TAG_INT64_PARAM + varint(value & 0xFFFFFFFFFFFFFFFF)
    entry = _map_key(name) + _TAG_MAP_VALUE + varint(len(param)) + param
    return _TAG_PARAMETERS + varint(len(entry)) + entry


def string_parameter_field(name: str, value: str) -> bytes:
    """The encoded map entry ``parameters[name] = value`` (a string); appended, it overrides."""
    param = _field(_TAG_STRING_PARAM, value.encode())
    entry = _field(_TAG_MAP_KEY, name.encode()) + _field(_TAG_MAP_VALUE, param)
    return _field(_TAG_PARAMETERS, entry)


def split_stream_response(buf: bytes) -> tuple[str | None, bytes | memoryview]:
    """A serialised ModelStreamInferResponse as (error message or None, infer_response bytes).

    Repeated occurrences merge as protobuf does: the last error wins, and the
    infer_response payloads concatenate (a sub-message's fields merge). The usual single
    part comes back as a view into ``buf``, uncopied (replace_id makes the one copy).
    """
    if buf[:1] == _TAG_STREAM_RESPONSE:
        # What a worker sends: one infer_response field and nothing else.
        length, pos = _read_varint(buf, 1)
        if pos + length == len(buf):
            return None, memoryview(buf)[pos:]
    error: str | None = None
    parts: list[memoryview] = []
    for number, payload in _fields(buf):
        if number == _FIELD_STREAM_ERROR:
            error = str(payload, "utf-8", "replace") or None
        elif number == _FIELD_STREAM_RESPONSE:
            parts.append(payload)
    if len(parts) == 1:
        return error, parts[0]
    return error, b"".join(parts)


def find_id(infer_response: bytes | memoryview) -> tuple[str, int, int]:
    """The id a worker put on a serialised ModelInferResponse, and where its field lies.

    Returns (id, start, stop) with ``infer_response[start:stop]`` the whole field (an
    empty span when there is none). Serialisers write fields in number order, so the scan
    stops at the first field past ``id`` instead of stepping over the output tensors.
    """
    pos, end = 0, len(infer_response)
    while pos < end:
        start = pos
        key, pos = _read_varint(infer_response, pos)
        number, wire_type = key >> 3, key & 7
        if number > _FIELD_ID or wire_type != 2:
            return "", start, start
        length, pos = _read_varint(infer_response, pos)
        if pos + length > end:
            raise WireError("truncated field")
        if number == _FIELD_ID:
            return str(infer_response[pos : pos + length], "utf-8", "replace"), start, pos + length
        pos += length
    return "", end, end


def replace_id(infer_response: bytes | memoryview, start: int, stop: int, new_id: str, *, wrap: bool = False) -> bytes:
    """The response with the id field found by find_id replaced by ``new_id``: one copy.

    The result is the bytes the worker would have sent for a request with ``new_id``
    (an empty id is left out, as serialisers do). With ``wrap`` it comes inside a
    ModelStreamInferResponse (as ``stream_response`` would put it), in the same one copy:
    what a stream client is sent.
    """
    view = memoryview(infer_response)
    new_field = id_field(new_id) if new_id else b""
    if not wrap:
        return b"".join((view[:start], new_field, view[stop:]))
    length = len(view) - (stop - start) + len(new_field)
    return b"".join((_TAG_STREAM_RESPONSE, varint(length), view[:start], new_field, view[stop:]))


def stream_payload(stream_response_bytes: bytes) -> bytes | memoryview:
    """The ModelInferResponse inside a ModelStreamInferResponse (a view, uncopied, as a rule)."""
    return split_stream_response(stream_response_bytes)[1]
