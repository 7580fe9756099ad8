"""NATS with JetStream (``nats://``): live delivery, history, resume by sequence and
reconnects that lose nothing within the window the stream keeps.

Every channel of an alias is a subject under ``OPTIONS["prefix"]`` (default
``"broadcast"``), each dot-separated part of the channel name a token of its own
(``_`` doubled, an empty part a lone ``_``, so that no two channels share a
subject), and one JetStream stream per alias holds them all (subjects
``<prefix>.>``). One stream rather than one per channel: JetStream keeps a per-subject
limit (``max_msgs_per_subject``, OPTIONS ``history``), so each channel still keeps
its own window; the ids are the stream's sequences, increasing for the whole alias
(so per channel too); patterns are consumers of the same stream with a subject
filter; and the server holds one stream whatever the number of channels.

Publishing waits for JetStream's acknowledgement; the id is ``<epoch>-<sequence>``,
where the epoch is the stream's creation time in microseconds (a stream made anew,
after a restart without its data, has a later epoch, so positions of the old one are
recognised). Sync publishing runs on one event loop thread per process (nats-py is
asyncio only), async publishing on one connection per event loop; a receiver holds
a connection of its own with one ephemeral push consumer per channel and per
pattern, started right after the subscriber's position. nats-py's own reconnection
is off: the hub's reconnect policy connects again (to any server of a
comma-separated list) and resumes every consumer from its position.

The stream is created on first use and, where it exists with other limits, brought
to the alias's OPTIONS: ``history`` (messages kept per channel, default 1000),
``max_age`` (seconds, default unlimited), ``replicas`` (default 1; 3 on a
three-node cluster), ``storage`` (``"file"``, default, or ``"memory"``) and
``stream`` (its name; default the prefix with ``.`` as ``_``). Logger:
``django_broadcast.backends.nats``.

Work queues (the Channels layer's plain channels) are a second stream per alias,
``<stream>_queues``, with retention ``workqueue``: see :mod:`.queues`.
"""

from .backend import NatsBackend

__all__ = ["NatsBackend"]
