"""Reading a process's Prometheus endpoint back in tests."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def scrape(address: str) -> dict[str, dict[Labels, float]]:
    """GET /metrics: sample name -> labels (without the otel_scope_* ones) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kept = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
            samples.setdefault(sample.name, {})[frozenset(kept.items())] = sample.value
    return samples


def value(samples: Mapping[str, Mapping[Labels, float]], name: str, **wanted: str) -> float | None:
    return samples.get(name, {}).get(labels(**wanted))
