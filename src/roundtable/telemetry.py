"""OpenTelemetry traces across processes: one trace follows a conversation turn from the
terminal or page through the manager and the agent to the model and back.

AutoGen 0.7.5 starts spans for publish and process but does not carry the trace
context across the wire, so the runtime puts `traceparent` on each event and restores
it on arrival (see `runtime.py`). Off by default: then AutoGen's runtime tracing is
switched off too, since its spans cost time even when nobody records them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .config import TelemetryConfig

log = logging.getLogger("roundtable.telemetry")
_propagator = TraceContextTextMapPropagator()
_enabled = False


def setup_tracing(cfg: TelemetryConfig, service: str) -> bool:
    """Install a tracer provider for this process if the config asks for traces."""
    global _enabled
    endpoint = cfg.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (endpoint or cfg.console):
        os.environ.setdefault("AUTOGEN_DISABLE_RUNTIME_TRACING", "true")
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"roundtable-{service}"}))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=cfg.otlp_insecure)))
    if cfg.console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("tracing on (%s)", "OTLP " + endpoint if endpoint else "console")
    return True


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context (if any) into `carrier`."""
    if _enabled:
        _propagator.inject(carrier)


@contextmanager
def restored(carrier: Mapping[str, str]) -> Iterator[None]:
    """Make the trace context found in `carrier` current, so what happens next joins that trace."""
    if not _enabled or "traceparent" not in carrier:
        yield
        return
    token = otel_context.attach(_propagator.extract(dict(carrier)))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def span(name: str, **attributes: str) -> Iterator[None]:
    """A span of roundtable's own work (a model call, a manager decision), current while it lasts."""
    if not _enabled:
        yield
        return
    with trace.get_tracer("roundtable").start_as_current_span(name, attributes=attributes):
        yield
