"""The edge's bidirectional streams and the wire edits the router's stream path makes.

The stream handler is driven through grpc's public handler API (``GenericRpcHandler.service``)
with an in-memory request iterator and a minimal servicer context; no sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.common import edge, wire
from services.common.errors import InvalidArgument
from services.gen.inference import grpc_service_pb2 as pb


class Context:
    """What the edge reads of a grpc.aio.ServicerContext for a stream."""

    def invocation_metadata(self):
        return (("authorization", "Bearer k"),)

    def time_remaining(self):
        return None


class Details:
    method = "/t.S/Stream"
    invocation_metadata = ()


def failed(raw: bytes, code: grpc.StatusCode, message: str) -> bytes:
    return b"failed:" + raw + b":" + code.name.encode() + b":" + message.encode()


def stream_handler(spec: edge.BidiStream, service: edge.Edge | None = None):
    handler = (service or edge.Edge("test")).handler("t.S", {"Stream": spec})
    return handler.service(Details()).stream_stream


class Requests:
    """An async iterator of messages that counts how many the edge has taken."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)
        self.taken = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.taken == len(self.messages):
            raise StopAsyncIteration
        self.taken += 1
        return self.messages[self.taken - 1]


async def test_per_stream_runs_once_and_answers_come_as_they_complete():
    opened = []
    gates = {b"slow": asyncio.Event()}

    def per_stream(context):
        opened.append(dict(context.invocation_metadata()))

        async def one(raw: bytes) -> bytes:
            if raw in gates:
                await gates[raw].wait()
            if raw == b"bad":
                raise InvalidArgument("no good")
            return b"ok:" + raw

        return one

    handler = stream_handler(edge.BidiStream(None, failed, per_stream=per_stream))
    answers = handler(Requests([b"slow", b"a", b"bad", b"b"]), Context())
    first = [await answers.__anext__() for _ in range(3)]
    gates[b"slow"].set()
    rest = [message async for message in answers]
    assert opened == [{"authorization": "Bearer k"}]
    # The slow message does not hold back those after it; a failure is one answer among them.
    assert sorted(first) == sorted([b"ok:a", b"ok:b", b"failed:bad:INVALID_ARGUMENT:no good"])
    assert rest == [b"ok:slow"]


async def test_max_in_flight_stops_reading_until_an_answer_is_out():
    release = asyncio.Event()
    running = 0
    most = 0

    async def one(raw: bytes, context) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return raw

    requests = Requests([str(i).encode() for i in range(10)])
    answers = stream_handler(edge.BidiStream(one, failed, max_in_flight=2))(requests, Context())
    first = asyncio.ensure_future(answers.__anext__())
    for _ in range(20):
        await asyncio.sleep(0)
    # Two messages taken and being served; the third waits in the client's stream.
    assert (requests.taken, running) == (3, 2)
    release.set()
    got = [await first] + [message async for message in answers]
    assert sorted(got) == sorted(str(i).encode() for i in range(10))
    assert most == 2


async def test_closing_the_stream_cancels_what_is_in_flight():
    started, cancelled = [], []

    async def one(raw: bytes, context) -> bytes:
        started.append(raw)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(raw)
            raise
        return raw

    ended = []

    class Ends(edge.Interceptor):
        def end(self, call: edge.RpcCall) -> None:
            ended.append(call.code)

    service = edge.Edge("test", [Ends()])
    answers = stream_handler(edge.BidiStream(one, failed), service)(Requests([b"x", b"y"]), Context())
    waiting = asyncio.ensure_future(answers.__anext__())
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [b"x", b"y"]
    waiting.cancel()  # as grpc does when the client cancels
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await answers.aclose()
    for _ in range(20):
        await asyncio.sleep(0)
    assert sorted(cancelled) == [b"x", b"y"]
    assert ended == [grpc.StatusCode.CANCELLED, grpc.StatusCode.CANCELLED]


def test_bidi_stream_takes_one_of_one_and_per_stream():
    with pytest.raises(ValueError):
        edge.BidiStream(None, failed)


@pytest.mark.parametrize("new_id", ["caller-7", ""])
def test_replace_id_wrapped_is_the_stream_response_with_the_callers_id(new_id: str):
    worker = pb.ModelInferResponse(model_name="digits", model_version="3", id="17")
    worker.outputs.add(name="output__0", datatype="FP32", shape=[1, 2])
    worker.raw_output_contents.append(b"\x00" * 8)
    raw = pb.ModelStreamInferResponse(infer_response=worker).SerializeToString()
    _, inner = wire.split_stream_response(raw)
    _, start, stop = wire.find_id(inner)
    wrapped = wire.replace_id(inner, start, stop, new_id, wrap=True)
    expected = pb.ModelInferResponse()
    expected.CopyFrom(worker)
    expected.id = new_id
    assert wrapped == pb.ModelStreamInferResponse(infer_response=expected).SerializeToString()
    assert bytes(wire.stream_payload(wrapped)) == wire.replace_id(inner, start, stop, new_id)


def test_overrides_appended_to_the_callers_bytes_win():
    caller = pb.ModelInferRequest(model_name="digits", id="mine").SerializeToString()
    sent = b"".join((caller, wire.model_version_field("3"), wire.id_field("41")))
    parsed = pb.ModelInferRequest.FromString(sent)
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("digits", "3", "41")
