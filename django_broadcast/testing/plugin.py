"""The pytest plugin of django_broadcast, loaded by pytest through the ``pytest11``
entry point wherever django-broadcast-bridge is installed.

It adds one fixture, ``broadcasts_captured``. Loading it reads no settings, so a
project whose tests do not use it is not affected.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import BroadcastCapture, capture_broadcasts, reset_broadcasts

__all__ = ["broadcasts_captured"]


@pytest.fixture
def broadcasts_captured() -> Iterator[BroadcastCapture]:
    """The events the test publishes through the ``"default"`` alias, on a clean
    broker: :func:`~django_broadcast.testing.reset_broadcasts` first, then
    :func:`~django_broadcast.testing.capture_broadcasts` for the whole test.

    Ask for it after any fixture that changes ``BROADCAST`` (pytest-django's
    ``settings``, say), so that it captures the alias the test uses.
    """
    reset_broadcasts()
    with capture_broadcasts() as captured:
        yield captured
