"""Request and response parameters that routers and workers both read.

``timeout`` is Triton's: how long the server may hold a request, in microseconds (0 or
less: no limit). ``shunter_status_code`` is ours: on a failed ModelStreamInfer response
it carries the gRPC status code the same request would have failed with as a ModelInfer
call, since the protocol's stream errors are only a message. Both sides of that
convention live here, so the worker, the router and the router's link agree on it.
"""

from __future__ import annotations

import grpc

from services.gen.inference import grpc_service_pb2 as pb

TIMEOUT = "timeout"
STATUS_CODE = "shunter_status_code"
#: A router's liveness ping on a ModelStreamInfer link: a request that names no model and
#: sets this; the worker answers it at once, unqueued (services/router/worker_client.py).
PING = "shunter_ping"

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def timeout_us(request: pb.ModelInferRequest) -> int | None:
    """The request's ``timeout`` in µs; None when it sets none, or 0 or less (no limit, as in Triton)."""
    parameters = request.parameters
    if TIMEOUT not in parameters:
        return None
    value = parameters[TIMEOUT].int64_param
    return value if value > 0 else None


def failed_stream_response(
    request: pb.ModelInferRequest, message: str, code: grpc.StatusCode
) -> pb.ModelStreamInferResponse:
    """The stream response for a failed request: its id and model, and the status code."""
    echo = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    echo.parameters[STATUS_CODE].int64_param = code.value[0]
    return pb.ModelStreamInferResponse(error_message=message, infer_response=echo)


def failed_stream_response_bytes(raw: bytes, code: grpc.StatusCode, message: str) -> bytes:
    """failed_stream_response for a request still in its wire form (no id when it does not parse)."""
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except Exception:
        request = pb.ModelInferRequest()
    return failed_stream_response(request, message, code).SerializeToString()


def status_of_failed(infer_response: bytes) -> grpc.StatusCode:
    """The code on a failed stream response's infer_response; UNKNOWN when it names none."""
    try:
        parameters = pb.ModelInferResponse.FromString(infer_response).parameters
    except Exception:  # a garbled error still is an error
        return grpc.StatusCode.UNKNOWN
    if STATUS_CODE not in parameters:
        return grpc.StatusCode.UNKNOWN
    return _CODES_BY_VALUE.get(parameters[STATUS_CODE].int64_param, grpc.StatusCode.UNKNOWN)
