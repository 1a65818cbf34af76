"""services.common.tracing without a collector: configuration, the wire format, tracing off."""

from __future__ import annotations

import pytest

from services.common import tracing
from services.gen.inference import grpc_service_pb2 as pb

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_endpoint_comes_from_the_flag_then_the_standard_variables():
    assert tracing.endpoint_from(None, {}) == ""
    assert tracing.endpoint_from("collector:4317", {}) == "http://collector:4317"
    assert tracing.endpoint_from("https://collector:4317/", {}) == "https://collector:4317"
    assert tracing.endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317"}) == "http://a:4317"
    assert tracing.endpoint_from(
        None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "b:1"}
    ) == "http://b:1"
    assert tracing.endpoint_from("a:4317", {"OTEL_SDK_DISABLED": "true"}) == ""
    assert tracing.endpoint_from("a:4317", {"OTEL_TRACES_EXPORTER": "none"}) == ""


@pytest.mark.parametrize("bad", ["ftp://a:1", "http://", "http://a:4318/v1/traces"])
def test_an_endpoint_that_cannot_be_otlp_grpc_is_refused(bad):
    with pytest.raises(tracing.TracingConfigError, match="expected HOST:PORT"):
        tracing.endpoint_from(bad, {})


def test_the_sampler_is_always_parent_based():
    ratio = tracing.parent_based_sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})
    assert ratio.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.01}")
    assert "AlwaysOnSampler" in tracing.parent_based_sampler({}).get_description()
    with pytest.raises(tracing.TracingConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing.parent_based_sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(tracing.TracingConfigError, match="expected one of"):
        tracing.parent_based_sampler({"OTEL_TRACES_SAMPLER": "jaeger_remote"})


def test_traceparent_parses_and_formats_back():
    from opentelemetry import trace

    context = tracing.parse_traceparent(TRACEPARENT, "vendor=x")
    span = trace.get_current_span(context)
    assert span.get_span_context().trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert tracing.format_traceparent(span) == (TRACEPARENT, "vendor=x")


@pytest.mark.parametrize("bad", [
    "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "ff-" + TRACEPARENT[3:],
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
    TRACEPARENT + "-extra",
])
def test_an_invalid_traceparent_is_ignored(bad):
    assert tracing.parse_traceparent(bad) is None


def test_carrier_fields_are_request_parameters_that_override_the_callers():
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["traceparent"].string_param = "from the caller"
    raw = request.SerializeToString() + tracing.carrier_fields(TRACEPARENT, "vendor=x")
    parsed = pb.ModelInferRequest.FromString(raw)
    assert parsed.parameters["traceparent"].string_param == TRACEPARENT
    assert parsed.parameters["tracestate"].string_param == "vendor=x"
    assert tracing.carrier_fields(None) == b""


def test_off_means_no_interceptor_and_no_span():
    assert not tracing.enabled()
    assert tracing.interceptors("router") == []
    assert tracing.current() is tracing.NO_TRACE
    assert tracing.queued() is None
    # Off, a caller's own context is passed on untouched.
    assert tracing.NO_TRACE.outgoing({"traceparent": TRACEPARENT}) == tracing.carrier_fields(TRACEPARENT)

