"""Settings of the servers (and publisher processes) that tests start as subprocesses.

Everything that varies comes from the environment, so that every process of one test
shares it and no two runs collide:

- ``BROADCAST_URL`` (default ``REDIS_URL``) and ``MULTIPROCESS_PREFIX`` (the key prefix);
- ``BROADCAST_ENTRY``: JSON merged into the alias (``QUEUE_SIZE``, ``TIMEOUT``...);
- ``BROADCAST_CLIENTS``: JSON, the setting of the same name;
- ``WITH_LAYER``: ``"0"`` to run without ``CHANNEL_LAYERS``.
"""

import json
import os

from tests.settings import *  # noqa: F403

_url = os.environ.get("BROADCAST_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
_entry = {"URL": _url, **json.loads(os.environ.get("BROADCAST_ENTRY", "{}"))}
if not _url.startswith("memory:"):
    _entry.setdefault("OPTIONS", {})["prefix"] = os.environ.get(
        "MULTIPROCESS_PREFIX", "test-broadcast:mp:"
    )
BROADCAST = {"default": _entry}
if os.environ.get("WITH_LAYER", "1") == "1":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
            "CONFIG": {"using": "default"},
        }
    }
BROADCAST_CLIENTS = json.loads(os.environ.get("BROADCAST_CLIENTS", "{}"))
BROADCAST_AUTH = {
    "POLICY": "tests.multiprocess.views.policy",
    "PUBLIC": ["mp-*", "t-*"],
    "PUBLISH": ["mp-*", "t-*"],
}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.multiprocess.urls"
SILENCED_SYSTEM_CHECKS = ["django_broadcast.W001"]
# For manage.py runworker.
ASGI_APPLICATION = "tests.multiprocess.asgi.application"
INSTALLED_APPS = [*INSTALLED_APPS, "channels"]  # noqa: F405 (its runworker command)
