"""Settings of the benchmark servers and publishers; ``E2E_CASE`` picks the layer."""

import os

SECRET_KEY = "benchmark-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "channels",
    "django_broadcast",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
ROOT_URLCONF = "benchmarks.e2e.urls"
SILENCED_SYSTEM_CHECKS = ["django_broadcast.W001"]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("E2E_PREFIX", "bench:e2e:")
CASE = os.environ.get("E2E_CASE", "consumer")

BROADCAST = {
    "default": {
        "URL": os.environ.get("E2E_URL", REDIS_URL),
        "OPTIONS": {"prefix": PREFIX},
        "QUEUE_SIZE": int(os.environ.get("E2E_QUEUE_SIZE", "1000")),
    }
}
BROADCAST_AUTH = {"PUBLIC": ["bench", "soak-*"]}
BROADCAST_CLIENTS = {"MAX_SUBSCRIPTIONS": 60}
if CASE.startswith("anchor"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": PREFIX + "ps"},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
            "CONFIG": {"using": "default"},
        }
    }
