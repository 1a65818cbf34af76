"""OpenTelemetry traces for every Shunter service: one trace per request, router → worker.

Off unless an OTLP endpoint is given (``--otlp-endpoint`` on each service and on ``shunter
up``, or the standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``). Off means off: no tracer
exists, no interceptor joins the edge's chain, and every hook below returns a shared no-op
(``NO_TRACE``) without creating a span object.

On, the SDK is set up the standard way: a TracerProvider whose resource takes
``OTEL_SERVICE_NAME`` (default ``shunter-<service>``) and ``OTEL_RESOURCE_ATTRIBUTES``, a
BatchSpanProcessor (``OTEL_BSP_*``) and the OTLP/gRPC exporter. The sampler comes from
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default: every request) and is
always parent-based: a request that arrives with a sampled ``traceparent`` is traced
whatever the ratio, one that arrives unsampled is not, and only requests with no parent
are sampled at the ratio.

The spans of one request:

- ``router ModelInfer`` (server): events ``auth``, ``split`` (the chosen variant) and
  ``validated``; children ``rate_limit`` and ``cache`` around the Redis round trips, and
  ``forward`` (client) around the call to a worker. Its context is what travels on.
- ``worker ModelInfer`` / ``worker ModelStreamInfer`` (server), a child of ``forward``:
  children ``queue`` (enqueued → its batch started) and, for the first traced request of a
  batch, ``compute``, which links to the worker span of every traced request the batch
  served, so each request finds the batch that computed it.

The context travels as W3C ``traceparent`` / ``tracestate``: from clients in gRPC
metadata, from routers to workers in the request's ``parameters`` (``carrier_fields``),
so a traced request stays on the router's multiplexed stream link. Workers read either.

A call's server span is made lazily, on the first hook that needs it or when the call
ends, so that a worker can first take the parent from the request's parameters, which it
only sees once the edge has handed it the message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from services.common import edge, wire

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: RPCs never traced: probes that would drown the requests in traces.
HEALTH_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})

_tracer: Any = None
_provider: Any = None
_state_key = "tracing"


class TracingConfigError(ValueError):
    """An endpoint or sampler setting that cannot work (a CLI usage error)."""


def endpoint_from(flag: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP/gRPC endpoint to export to: the flag, else the standard variables; "" when off.

    A bare HOST:PORT means plaintext (``http://``), as an OpenTelemetry Collector listens
    by default; give ``https://`` for TLS.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return ""
    value = (flag or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
             or "").strip()
    if not value:
        return ""
    if "://" not in value:
        value = "http://" + value
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
        raise TracingConfigError(
            f"OTLP endpoint {value!r}: expected HOST:PORT, http://HOST:PORT or https://HOST:PORT "
            "(the OTLP/gRPC port of a collector, usually 4317)"
        )
    return value.rstrip("/")


def configure(service: str, otlp_endpoint: str | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Set up tracing for this process when an endpoint is configured; True when it is on.

    Call once, before the service's servicer (and its edge) is built.
    """
    global _tracer, _provider
    endpoint = endpoint_from(otlp_endpoint, environ)
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({} if environ.get("OTEL_SERVICE_NAME") else {"service.name": f"shunter-{service}"})
    provider = TracerProvider(resource=resource, sampler=parent_based_sampler(environ))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider = provider
    _tracer = provider.get_tracer("shunter")
    logger.info("tracing on: OTLP/gRPC to %s, sampler %s", endpoint, provider.sampler.get_description())
    return True


def parent_based_sampler(environ: Mapping[str, str] = os.environ) -> Any:
    """The sampler ``OTEL_TRACES_SAMPLER`` names, made parent-based if it is not already."""
    from opentelemetry.sdk.trace import sampling

    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio = 1.0
    if "traceidratio" in name:
        try:
            ratio = float(arg) if arg else 1.0
        except ValueError:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio from 0 to 1") from None
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio from 0 to 1")
    roots: dict[str, sampling.Sampler | None] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": None,
    }
    base = name.removeprefix("parentbased_")
    if base not in roots:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={name!r}: expected one of always_on, always_off, traceidratio "
            "(or parentbased_ of those)"
        )
    root = roots[base] if base != "traceidratio" else sampling.TraceIdRatioBased(ratio)
    assert root is not None
    return sampling.ParentBased(root)


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered and stop (also done at interpreter exit by the SDK)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


# -- context on the wire ---------------------------------------------------------------


def _hex(value: str, length: int) -> int | None:
    if len(value) != length:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def parse_traceparent(traceparent: str, tracestate: str | None = None) -> Any:
    """An OpenTelemetry Context holding the remote parent ``traceparent`` names; None if invalid.

    Hand-parsed (version 00 layout, later versions read by their first four fields, as W3C
    asks) because a worker reads one on nearly every request.
    """
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    trace_id, span_id, flags = _hex(parts[1], 32), _hex(parts[2], 16), _hex(parts[3], 2)
    if not trace_id or not span_id or flags is None:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(context))


def format_traceparent(span: Any) -> tuple[str, str | None]:
    """(traceparent, tracestate or None) for ``span``'s context."""
    context = span.get_span_context()
    state = context.trace_state.to_header() if context.trace_state else None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 0xFF:02x}", state or None


def carrier_fields(traceparent: str | None, tracestate: str | None = None) -> bytes:
    """``parameters[traceparent]`` (and ``tracestate``) encoded to append to a ModelInferRequest."""
    if not traceparent:
        return b""
    if len(traceparent) == _TRACEPARENT_LENGTH:
        out = _TRACEPARENT_PREFIX + traceparent.encode()  # version 00: every field but the value is fixed
    else:
        out = wire.string_parameter_field(TRACEPARENT, traceparent)
    if tracestate:
        out += wire.string_parameter_field(TRACESTATE, tracestate)
    return out


#: len("00-" + 32 hex + "-" + 16 hex + "-" + 2 hex), and its encoded parameter up to the value.
_TRACEPARENT_LENGTH = 55
_TRACEPARENT_PREFIX = wire.string_parameter_field(TRACEPARENT, "x" * _TRACEPARENT_LENGTH)[:-_TRACEPARENT_LENGTH]


# -- one call's trace ------------------------------------------------------------------


class _NoSpan:
    """What ``child`` gives when nothing is recorded: a context manager doing nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Off:
    """The hooks when tracing is off or the call is not traced: each does nothing."""

    __slots__ = ()
    recording = False

    def adopt(self, parameters: Any) -> None:
        return None

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        return None

    def set(self, key: str, value: Any) -> None:
        return None

    def child(self, name: str, client: bool = False) -> _NoSpan:
        return _NO_SPAN

    def outgoing(self, headers: Mapping[str, str]) -> bytes:
        """Tracing off: pass on the caller's own context, if it sent one."""
        return carrier_fields(headers.get(TRACEPARENT), headers.get(TRACESTATE))

    def trace_id(self) -> str:
        return ""


NO_TRACE = _Off()


class _Child:
    """A child span, current for the call's hooks while its ``with`` block runs."""

    __slots__ = ("_call", "_kind", "_name", "_previous", "span")

    def __init__(self, call: CallTrace, name: str, kind: Any) -> None:
        self._call, self._name, self._kind = call, name, kind

    def __enter__(self) -> Any:
        call = self._call
        self._previous = call.active
        self.span = _tracer.start_span(self._name, trace.set_span_in_context(call.active), kind=self._kind)
        call.active = self.span
        return self.span

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.span.set_attribute("error.type", type(exc).__name__)
        self.span.end()
        self._call.active = self._previous


class CallTrace:
    """The trace of one traced RPC (or one stream message): its server span and the hooks."""

    __slots__ = ("_context", "_span", "active", "name", "parent", "start_ns")

    def __init__(self, name: str, context: Any, start_ns: int) -> None:
        self.name = name
        self.start_ns = start_ns
        #: The call's gRPC context; its metadata is read only if no parameters gave a parent.
        self._context = context
        self._span: Any = None
        #: The remote parent: from the request's parameters (adopt) or the call's metadata.
        self.parent: Any = None
        #: The innermost span open on this call (the server span, or a child in a ``with``).
        self.active: Any = None

    @property
    def span(self) -> Any:
        span = self._span
        if span is None:
            span = self._span = self._start()
        return span

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    def _start(self) -> Any:
        parent = self.parent
        if parent is None:
            parent = self.parent = self._from_metadata()
        span = _tracer.start_span(self.name, parent, kind=SpanKind.SERVER, start_time=self.start_ns)
        self.active = span
        return span

    def _from_metadata(self) -> Any:
        traceparent = tracestate = None
        for key, value in self._context.invocation_metadata() or ():
            if key == TRACEPARENT:
                traceparent = value
            elif key == TRACESTATE:
                tracestate = value
        return parse_traceparent(traceparent, tracestate) if traceparent else None

    def adopt(self, parameters: Any) -> None:
        """Take the parent from a request's ``parameters`` (how routers send it), if it has one.

        A parent the router did not sample (flags ``00``, nearly every request at a low
        ratio) is not parsed: under the parent-based sampler its child records nothing, and
        the worker passes the context on to no one.
        """
        if self._span is None and TRACEPARENT in parameters:
            traceparent = parameters[TRACEPARENT].string_param
            if traceparent.endswith("-00") and len(traceparent) == _TRACEPARENT_LENGTH:
                self._span = self.active = INVALID_SPAN
                return
            state = parameters[TRACESTATE].string_param if TRACESTATE in parameters else None
            parent = parse_traceparent(traceparent, state)
            if parent is not None:
                self.parent = parent

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        span = self.span
        if span.is_recording():
            span.add_event(name, attributes)

    def set(self, key: str, value: Any) -> None:
        span = self.span
        if span.is_recording():
            span.set_attribute(key, value)

    def child(self, name: str, client: bool = False) -> _Child | _NoSpan:
        if not self.span.is_recording():
            return _NO_SPAN
        return _Child(self, name, SpanKind.CLIENT if client else SpanKind.INTERNAL)

    def outgoing(self, headers: Mapping[str, str]) -> bytes:
        """The parameters that carry this call's current span on to a worker."""
        self.span  # noqa: B018 - made here if not yet
        return carrier_fields(*format_traceparent(self.active))

    def trace_id(self) -> str:
        span = self.span
        return f"{span.get_span_context().trace_id:032x}" if span.is_recording() else ""

    def finish(self, call: edge.RpcCall) -> None:
        span = self.span
        if span.is_recording():
            attributes: dict[str, Any] = {
                "rpc.system": "grpc",
                "rpc.method": call.method,
                "rpc.grpc.status_code": call.code.value[0],
            }
            if call.model:
                attributes["shunter.model"] = call.model
            if call.version:
                attributes["shunter.version"] = call.version
            span.set_attributes(attributes)
            if call.code.value[0] != 0:
                span.set_status(Status(StatusCode.ERROR, call.code.name))
        span.end()


def current() -> CallTrace | _Off:
    """The trace of the call this task serves; ``NO_TRACE`` when off or not traced."""
    if _tracer is None:
        return NO_TRACE
    call = edge.CURRENT.get()
    if call is None or call.state is None:
        return NO_TRACE
    return call.state.get(_state_key, NO_TRACE)


class TracingInterceptor(edge.Interceptor):
    """Opens each call's trace at ``begin`` and ends its server span at ``end``."""

    def __init__(self, service: str, exclude: Iterable[str] = HEALTH_METHODS) -> None:
        self._service = service
        self._exclude = frozenset(exclude)

    def begin(self, call: edge.RpcCall) -> None:
        if call.method in self._exclude:
            return
        if call.state is None:
            call.state = {}
        call.state[_state_key] = CallTrace(f"{self._service} {call.method}", call.context, time.time_ns())

    def end(self, call: edge.RpcCall) -> None:
        state = call.state
        trace = state.get(_state_key) if state else None
        if trace is not None:
            try:
                trace_id = trace.trace_id()  # before finish: an ended span no longer records
                trace.finish(call)
                if trace_id and state is not None:
                    state[edge.EXEMPLAR] = {"trace_id": trace_id}
            except Exception:  # a hook must not raise
                logger.exception("ending the span of %s %s", self._service, call.method)


def interceptors(service: str, exclude: Iterable[str] = HEALTH_METHODS) -> list[edge.Interceptor]:
    """The tracing interceptor for a service's edge when tracing is on; nothing when off."""
    return [TracingInterceptor(service, exclude)] if _tracer is not None else []


# -- batches ---------------------------------------------------------------------------


#: What the batcher keeps of a traced request: its span, enqueue time, model and version.
Queued = tuple[Any, int, str, str]


def queued() -> Queued | None:
    """For the batcher: the current call's recording span and the enqueue time; None if untraced."""
    trace = current()
    if not isinstance(trace, CallTrace) or not trace.recording:
        return None
    call = edge.CURRENT.get()
    model, version = (call.model, call.version) if call is not None else ("", "")
    return trace.span, time.time_ns(), model, version


def record_batch(entries: Sequence[Queued | None], rows: int, compute_ns: int) -> None:
    """Spans for a batch that just finished: ``queue`` per traced request, one linked ``compute``.

    ``entries`` are the batch's ``queued()`` results; the batch ran for ``compute_ns`` and
    ended now. The compute span is a child of the first traced request and links to every
    traced request's span (its own included).
    """
    traced = [entry for entry in entries if entry is not None]
    if not traced or _tracer is None:
        return
    end_ns = time.time_ns()
    start_ns = end_ns - compute_ns
    for span, enqueued_ns, _, _ in traced:
        queue = _tracer.start_span("queue", trace.set_span_in_context(span), start_time=min(enqueued_ns, start_ns))
        queue.end(end_time=start_ns)
    first, _, model, version = traced[0]
    compute = _tracer.start_span(
        "compute",
        trace.set_span_in_context(first),
        links=[Link(entry[0].get_span_context()) for entry in traced],
        attributes={
            "shunter.model": model,
            "shunter.version": version,
            "shunter.batch_rows": rows,
            "shunter.batch_requests": len(entries),
        },
        start_time=start_ns,
    )
    compute.end(end_time=end_ns)
