"""One call shows as one trace across client and worker, with the JSON-RPC conventions."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from micromessaging import AsyncClient, RemoteError, Worker
from tests.transports.contract import Probe

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry's rule


@pytest.fixture(autouse=True)
def _clear() -> None:
    EXPORTER.clear()


async def test_a_call_is_one_trace_from_client_to_worker() -> None:
    url, queue = f"memory://trace-{uuid.uuid4().hex[:8]}", "calc"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        assert await client.add(1, 5.1) == 6.1
    spans = EXPORTER.get_finished_spans()
    [client_span] = [s for s in spans if s.kind == SpanKind.CLIENT]
    [server_span] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server_span.context.trace_id == client_span.context.trace_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    for span in (client_span, server_span):
        assert span.name == "calc/add"
        attributes = dict(span.attributes or {})
        assert attributes["rpc.system"] == "jsonrpc"
        assert attributes["rpc.method"] == "add"
        assert attributes["rpc.service"] == "calc"
        assert attributes["rpc.jsonrpc.version"] == "2.0"
        assert attributes["messaging.destination.name"] == "calc"
        assert attributes["rpc.jsonrpc.request_id"]
    assert (
        client_span.attributes["rpc.jsonrpc.request_id"]
        == (server_span.attributes["rpc.jsonrpc.request_id"])
    )


async def test_an_error_is_marked_on_both_spans() -> None:
    url, queue = f"memory://trace-{uuid.uuid4().hex[:8]}", "calc"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        with pytest.raises(RemoteError):
            await client.fail("boom")
    spans = EXPORTER.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        assert span.attributes["rpc.jsonrpc.error_code"] == -32000
        assert not span.status.is_ok


def test_without_opentelemetry_nothing_of_it_is_imported() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ModuleNotFoundError(name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import asyncio\n"
        "from micromessaging import AsyncClient, Worker\n"
        "from micromessaging.examples.calculator import Calculator\n"
        "async def main():\n"
        "    async with Worker(Calculator(), 'memory://x', 'calc'), "
        "AsyncClient('memory://x', 'calc') as c:\n"
        "        assert await c.add(1, 2) == 3\n"
        "        assert c._tracing is None\n"
        "asyncio.run(main())\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
