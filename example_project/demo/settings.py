"""Settings of the example project.

Environment:

- ``BROADCAST_URL`` picks the broker (default ``memory://``, which needs nothing else;
  try ``redis://127.0.0.1:6379/0`` or ``redis+streams://127.0.0.1:6379/0``);
  ``BROADCAST_PREFIX`` is a key prefix, to share a broker with other projects.
- ``DEMO_DATABASE``: the SQLite file (default ``example_project/db.sqlite3``).
- ``DEMO_HEARTBEAT``: seconds between the server heartbeats the live dashboard shows
  (default 2).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

# settings-apps-start
INSTALLED_APPS = [
    "daphne",  # first: runserver serves ASGI, with WebSocket and SSE
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_broadcast",
    "django_broadcast.contrib.admin",  # the real-time admin
    "demo",
]
# settings-apps-end
MIDDLEWARE = [
    "django_broadcast.contrib.admin.middleware.RequestStatsMiddleware",  # first
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "demo.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "demo.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE", BASE_DIR / "db.sqlite3"),
        # Concurrent writers (two people taking one seat) wait for each other.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# settings-broadcast-start
BROADCAST = {"default": {"URL": os.environ.get("BROADCAST_URL", "memory://")}}
if "BROADCAST_PREFIX" in os.environ and not BROADCAST["default"]["URL"].startswith("memory:"):
    # A key prefix, to share a Redis with other projects.
    BROADCAST["default"]["OPTIONS"] = {"prefix": os.environ["BROADCAST_PREFIX"]}
# Browsers may read the chat rooms and the seat map; they publish only presence
# beats: messages go through a view, which saves them first.
BROADCAST_AUTH = {"PUBLIC": ["chat.*", "seats"], "PUBLISH": ["chat.*.presence"]}
# settings-broadcast-end
# Each server process tells the live dashboard how it is doing this often.
BROADCAST_CLIENTS = {"HEARTBEAT": float(os.environ.get("DEMO_HEARTBEAT", "2"))}
# Plain Channels consumers and group_send share the same events.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
        "CONFIG": {"using": "default"},
    }
}
