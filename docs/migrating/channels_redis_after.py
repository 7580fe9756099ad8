# settings.py, after: the broker is a BROADCAST alias; the layer travels through it.
BROADCAST = {
    "default": {
        "URL": "redis://127.0.0.1:6379/0",  # was CONFIG["hosts"]
        "OPTIONS": {"prefix": "myproject:"},  # was CONFIG["prefix"]
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
        "CONFIG": {
            "using": "default",  # the BROADCAST alias
            "expiry": 30,
            "capacity": 200,
            "channel_capacity": {"thumbnails": 1000, "websocket.send*": 50},
        },
    }
}
