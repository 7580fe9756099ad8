# settings.py, before: channels_redis's pub/sub layer.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": ["redis://127.0.0.1:6379/0"],
            "prefix": "myproject",
        },
    }
}
