"""The server side of the end-to-end benchmark: one settings module, one ASGI app,
the case chosen by the ``E2E_CASE`` environment variable."""

#: case -> what it is
CASES = {
    "ceiling": "minimal websockets server (ceiling)",
    "anchor": "Channels consumer, channels_redis pubsub layer (anchor)",
    "layer": "Channels consumer, BroadcastChannelLayer redis://",
    "consumer": "BroadcastWebsocketConsumer redis://",
    "anchor-nodb": "diagnostic: Channels consumer minus DB clean-up, channels_redis pubsub",
    "layer-nodb": "diagnostic: Channels consumer minus DB clean-up, BroadcastChannelLayer",
}
