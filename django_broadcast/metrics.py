"""Prometheus metrics of every alias built in this process (the ``prometheus`` extra:
``pip install "django-broadcast-bridge[prometheus]"``).

Serve them from a URL of your own::

    # urls.py
    from django_broadcast.metrics import metrics_view

    urlpatterns = [..., path("metrics/", metrics_view)]

or add :class:`BroadcastCollector` to a registry you already serve
(``register(your_registry)``). Each process serves its own figures: point Prometheus
at every server process (each uvicorn or daphne worker), and protect the URL as you
would any internal one (the view itself asks for no login). The figures are those of
:meth:`django_broadcast.Broadcast.stats`, labelled by alias:

``django_broadcast_events_published_total``, ``..._events_delivered_total``,
``..._events_dropped_total``, ``..._gap_notices_total``, ``..._reconnects_total``,
``..._failed_publishes_total`` (counters); ``django_broadcast_subscribers``,
``django_broadcast_broker_subscriptions``, ``django_broadcast_connections`` (with a
``kind`` label, ``websocket`` or ``sse``) and ``django_broadcast_publish_latency_seconds``
(with a ``quantile`` label, 0.5, 0.9 and 0.99) (gauges).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .registry import broadcasts

__all__ = ["BroadcastCollector", "metrics_view", "register"]

_COUNTERS = [
    ("events_published", "published", "Events published from this process."),
    ("events_delivered", "delivered", "Events handed to local subscriptions."),
    ("events_dropped", "dropped", "Events lost by local subscribers that fell behind."),
    ("gap_notices", "gaps", "Gap notices handed to local subscriptions."),
    ("reconnects", "reconnects", "Reconnections to the broker."),
    ("failed_publishes", "failed_publishes", "Publishes that failed at a commit."),
]


class BroadcastCollector:
    """Collects the figures of every alias built in this process, at each scrape."""

    def collect(self) -> Iterator[Metric]:
        stats = broadcasts.stats()
        for name, key, documentation in _COUNTERS:
            counter = CounterMetricFamily(
                f"django_broadcast_{name}", documentation, labels=["alias"]
            )
            for alias, figures in stats.items():
                counter.add_metric([alias], figures[key])
            yield counter
        for key, documentation in (
            ("subscribers", "Local subscriptions."),
            ("broker_subscriptions", "Subscriptions this process holds at the broker."),
        ):
            gauge = GaugeMetricFamily(f"django_broadcast_{key}", documentation, labels=["alias"])
            for alias, figures in stats.items():
                gauge.add_metric([alias], figures[key])
            yield gauge
        connections = GaugeMetricFamily(
            "django_broadcast_connections",
            "Open connections of the shipped consumers.",
            labels=["alias", "kind"],
        )
        latency = GaugeMetricFamily(
            "django_broadcast_publish_latency_seconds",
            "Publish latency of the latest publishes, by quantile.",
            labels=["alias", "quantile"],
        )
        for alias, figures in stats.items():
            for kind, count in figures["connections"].items():
                connections.add_metric([alias, kind], count)
            for quantile, key in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
                latency.add_metric([alias, quantile], figures["publish_latency_ms"][key] / 1000)
        yield connections
        yield latency

    def describe(self) -> list[Metric]:
        """Nothing up front: the figures are read at each scrape."""
        return []


_registered: set[int] = set()
_lock = threading.Lock()


def register(registry: CollectorRegistry = REGISTRY) -> None:
    """Add the collector to ``registry`` (the default one unless given); once."""
    with _lock:
        if id(registry) not in _registered:
            registry.register(BroadcastCollector())
            _registered.add(id(registry))


def metrics_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """The Prometheus text exposition of the default registry, with these metrics."""
    register()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
