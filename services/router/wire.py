"""Protobuf wire helpers for forwarding requests as bytes.

The router parses each ModelInferRequest once (to validate it and read the model name)
but forwards the caller's original bytes. Where it must change a field it appends the
field's encoding instead of re-serialising: for a singular scalar field the last
occurrence on the wire wins, so ``raw + field`` overrides whatever ``raw`` held.
"""

from __future__ import annotations

#: Wire tags (field number << 3 | wire type 2, length-delimited) used below.
_TAG_MODEL_VERSION = b"\x12"  # ModelInferRequest/Response.model_version = 2
_TAG_ID = b"\x1a"  # ModelInferRequest/Response.id = 3
_TAG_STREAM_ERROR = b"\x0a"  # ModelStreamInferResponse.error_message = 1
_TAG_STREAM_RESPONSE = b"\x12"  # ModelStreamInferResponse.infer_response = 2


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


def with_model_version(raw: bytes, version: str) -> bytes:
    """The request (or response) ``raw`` with ``model_version`` overridden."""
    return raw + _field(_TAG_MODEL_VERSION, version.encode())


def with_id(raw: bytes, request_id: str) -> bytes:
    """The message ``raw`` with its ``id`` overridden (a cached response gets the caller's id)."""
    return raw + _field(_TAG_ID, request_id.encode())


def stream_response(infer_response: bytes) -> bytes:
    """A ModelStreamInferResponse wrapping an already-serialised ModelInferResponse."""
    return _field(_TAG_STREAM_RESPONSE, infer_response)


def stream_error(message: str, infer_response: bytes = b"") -> bytes:
    """A ModelStreamInferResponse carrying an error (and the request's id, for matching)."""
    out = _field(_TAG_STREAM_ERROR, message.encode())
    if infer_response:
        out += _field(_TAG_STREAM_RESPONSE, infer_response)
    return out
