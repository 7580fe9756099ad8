"""Requests per second and response times of this process, for the live dashboard.

Put :class:`RequestStatsMiddleware` first in ``MIDDLEWARE``, so that it times
everything after it. It counts every request Django answers in this process (the
WebSocket and Server-Sent Events connections of the shipped consumers do not go
through Django's middleware; the dashboard counts them as connections) and the time
to the response (to its first byte, for a streaming one). Every heartbeat of the
process (:mod:`django_broadcast.presence`) carries what was counted since the one
before: the number of requests, the rate, and a histogram of the times, which the
dashboard adds up over every server into the deployment's rate and percentiles.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from django_broadcast import presence

__all__ = ["BOUNDS_MS", "RequestStats", "RequestStatsMiddleware", "requests"]

#: Upper bounds of the histogram's buckets, in milliseconds; a last bucket holds the rest.
BOUNDS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class RequestStats:
    """The requests counted in this process since the last :meth:`take`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._buckets = [0] * (len(BOUNDS_MS) + 1)
        self._since = time.monotonic()

    def record(self, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        bucket = bisect_left(BOUNDS_MS, seconds * 1000)
        with self._lock:
            self._count += 1
            self._buckets[bucket] += 1

    def take(self) -> dict[str, Any]:
        """What was counted since the last call, and start counting again:
        ``count``, ``per_second``, ``buckets`` (counts per bucket of
        ``bounds_ms``, the last one unbounded) and ``bounds_ms``."""
        with self._lock:
            count, buckets, since = self._count, self._buckets, self._since
            self._count, self._buckets = 0, [0] * (len(BOUNDS_MS) + 1)
            self._since = time.monotonic()
        elapsed = max(self._since - since, 1e-9)
        return {
            "count": count,
            "per_second": round(count / elapsed, 2),
            "buckets": buckets,
            "bounds_ms": list(BOUNDS_MS),
        }


#: This process's counts.
requests = RequestStats()


class RequestStatsMiddleware:
    """Count and time every request for the live dashboard; sync and async."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        presence.add_section("requests", requests.take)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        started = time.perf_counter()
        try:
            response: HttpResponseBase = self.get_response(request)
            return response
        finally:
            requests.record(time.perf_counter() - started)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        try:
            response: HttpResponseBase = await self.get_response(request)
            return response
        finally:
            requests.record(time.perf_counter() - started)
