"""Signals django_broadcast sends.

``publish_failed``: an event published inside ``transaction.atomic()`` could not be
sent when the transaction committed. The data is already committed, so nothing is
raised: the failure is logged at ERROR on the ``django_broadcast.broadcast`` logger,
counted in ``Broadcast.failed_publishes`` and sent as this signal, so that an
application can store the event or retry it. Receivers get these keyword arguments:

- ``broadcast``: the :class:`~django_broadcast.Broadcast` of the alias (call its
  ``publish()`` to retry);
- ``channel``, ``type`` and ``data``: the event as it was published;
- ``exception``: the error, usually a :class:`~django_broadcast.BroadcastUnavailable`;
- ``maybe_sent``: False when the event was certainly not sent (the broker refused the
  connection); True when the broker did not answer in time and may still deliver it.

The sender is the :class:`~django_broadcast.Broadcast` class. A receiver that raises
is logged and does not stop the others.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["publish_failed"]

publish_failed = Signal()
