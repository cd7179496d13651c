"""The Grafana dashboard and docs/operations.md name only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from micromessaging.observability.metrics import GatewayMetrics, WorkerMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs"


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    GatewayMetrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names |= {f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum")}
    return names


def test_the_dashboard_queries_metrics_that_exist() -> None:
    dashboard = json.loads((DOCS / "grafana" / "micromessaging.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"micromessaging_\w+", target["expr"])
    }
    assert used
    assert used <= exported_names()


def test_the_operations_page_documents_every_metric() -> None:
    text = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"`(micromessaging_\w+)`", text))
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    GatewayMetrics(registry)
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in registry.collect()
    }
    assert documented == families
