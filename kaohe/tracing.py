"""Optional OpenTelemetry tracing through the SDK's interceptor (`KAOHE_OTEL_TRACING=true`).

Spans cover starting workflows, updates and signals from a client and running workflows and
activities on the worker, linked across processes through Temporal headers. The exporter
reads the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers); OTEL_SERVICE_NAME
names the service (default: kaohe). Span attributes hold ids only: never payloads.
"""

from __future__ import annotations

import os
from typing import Any

from kaohe.settings import Settings

_provider_installed = False


def tracing_interceptors(settings: Settings, service: str = "kaohe") -> list[Any]:
    """The client (and so worker) interceptors the settings ask for: none, or the SDK's
    TracingInterceptor with an OTLP/HTTP exporter installed as the global provider."""
    if not settings.otel_tracing:
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as err:
        raise RuntimeError(
            "KAOHE_OTEL_TRACING needs the otel extra: pip install 'kaohe[otel]'"
        ) from err
    global _provider_installed
    if not _provider_installed:
        # The global provider can be set once per process; every client shares it.
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
        named = "OTEL_SERVICE_NAME" in os.environ
        resource = Resource.create({} if named else {"service.name": service})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider_installed = True
    # Units run for weeks: the interceptor's spans show at once (the plugin's only when a
    # workflow completes). Workflows started by an untraced integrator are traced too.
    return [TracingInterceptor(always_create_workflow_spans=True)]


def flush_traces() -> None:
    """Exports the spans still buffered (at worker shutdown)."""
    if _provider_installed:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush()
