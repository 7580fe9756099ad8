# settings.py, before: channels_redis's core layer.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": ["redis://127.0.0.1:6379/0"],
            "prefix": "myproject",
            "expiry": 30,
            "group_expiry": 3600,
            "capacity": 200,
            "channel_capacity": {"thumbnails": 1000, "websocket.send*": 50},
        },
    }
}
