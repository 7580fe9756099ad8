"""The server side of the end-to-end benchmark: one settings module, one ASGI app,
three cases chosen by the ``E2E_CASE`` environment variable."""

#: case -> what it is
CASES = {
    "anchor": "Channels consumer, channels_redis pubsub layer (anchor)",
    "layer": "Channels consumer, BroadcastChannelLayer redis://",
    "consumer": "BroadcastWebsocketConsumer redis://",
}
