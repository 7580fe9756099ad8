"""Settings of the daphne servers (and the publisher process) of the multi-process test.

The broker and the key prefix come from the environment, so every process of one test
run shares them and no two runs collide.
"""

import os

from tests.settings import *  # noqa: F403

BROADCAST = {
    "default": {
        "URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "OPTIONS": {"prefix": os.environ.get("MULTIPROCESS_PREFIX", "test-broadcast:mp:")},
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
        "CONFIG": {"using": "default"},
    }
}
BROADCAST_AUTH = {"PUBLIC": ["mp-*"]}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.multiprocess.urls"
