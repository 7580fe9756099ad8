# settings.py, after: the URL moves to settings (redis-stream:// is redis+streams://).
BROADCAST = {"default": {"URL": "redis://127.0.0.1:6379/0"}}
