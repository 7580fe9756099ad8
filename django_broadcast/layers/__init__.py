"""The Channels bridge: a channel layer whose groups are broadcast channels.

Configure it in place of ``channels_redis``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
            "CONFIG": {"using": "default"},  # the BROADCAST alias to travel through
        }
    }

and existing Channels code keeps working, sharing its events with the rest of the site:

- **Groups are broadcast channels.** ``group_send("chat.lobby", {"type": "chat.message",
  "text": "hi"})`` publishes the event ``type="chat.message"``, ``data={"text": "hi"}``
  on the broadcast channel ``chat.lobby``, so ``broadcast.subscribe("chat.lobby")``
  subscribers and browser clients receive it; and ``broadcast.publish("chat.lobby",
  data, type="chat.message")`` from a sync view reaches every consumer in the group.
  A member receives ``{**data, "type": ..., "channel": group, "id": event id, "data":
  data}``: exactly the keys a ``group_send`` sent, plus ``channel``, ``id`` and ``data``
  (where the sent message has its own ``channel``, ``id`` or ``data`` key, it wins).
- **Membership is local to the process.** ``group_add`` holds one broadcast
  subscription per group per process (however many consumers join) and returns once
  the broker has confirmed it; the last ``group_discard`` releases it. A membership
  ends with ``group_discard``, ``flush`` or ``group_expiry`` seconds after its last
  ``group_add``; a message that expired unreceived does not end it.
- **Process-specific channels** (``new_channel()``, a consumer's ``channel_name``) are
  served by one inbox subscription per layer: ``send()`` to a channel of this process
  is a local hand-off (``ChannelFull`` past ``capacity``); to another process's, it
  is published on that process's inbox channel. ``new_channel()`` needs no broker:
  the inbox is subscribed in the background, again and again while the broker is
  away, so a consumer starts whether or not the broker is up.
- **Other channels** (``send("thumbnails", ...)`` to a worker) travel as in
  channels_redis's pub/sub layer: the message reaches every process that is receiving
  on that name at the time, and is lost if none is.
- The layer's own broadcast channels (the inboxes and the other channels) live in the
  reserved ``broadcast.layer.`` namespace, which browsers can never read or write.
- **Every receiver gets its own copy** of a message, never a dict shared with other
  consumers.
- **Bytes survive the trip.** Channel-layer messages may carry ``bytes`` (WebSocket
  binary frames); the alias's JSON codec cannot, so the layer sends them as
  ``{"__bytes__": "<base64>"}`` and turns them back into ``bytes`` for layer receivers.
  ``broadcast.subscribe()`` subscribers see the tagged form.
- Gap notices of the hub (``broadcast.gap``) are not delivered to consumers, which
  would have no handler for them; they are logged.
- **Outages end nothing for good.** The layer's subscriptions are persistent: when the
  broker stays away for longer than the alias's ``RECONNECT_TIMEOUT``, they wait for
  it (the core keeps reconnecting), and what was published meanwhile is lost, logged.
- ``receive()`` takes a plain name or a channel made by this layer's
  ``new_channel()``; another process's channel is an ``AssertionError``, as in
  channels_redis.
- **Plain channels are queues** in the broker (``Broadcast.aqueue_put`` and
  ``aqueue_take``), as in channels_redis's core layer: a message waits until one
  receiver in any process takes it; ``ChannelFull`` at capacity.
- Messages expire after ``expiry`` seconds (default 60) unreceived.
"""

from .layer import BroadcastChannelLayer, LayerMessageTooLarge

__all__ = ["BroadcastChannelLayer", "LayerMessageTooLarge"]
