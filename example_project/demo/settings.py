"""Settings of the example project.

``BROADCAST_URL`` picks the broker (default ``memory://``, which needs nothing else;
try ``redis://127.0.0.1:6379/0`` or ``redis+streams://127.0.0.1:6379/0``).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",  # first: runserver serves ASGI, with WebSocket and SSE
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "channels",
    "django_broadcast",
    "demo",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "demo.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
ASGI_APPLICATION = "demo.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"

BROADCAST = {"default": {"URL": os.environ.get("BROADCAST_URL", "memory://")}}
if "BROADCAST_PREFIX" in os.environ and not BROADCAST["default"]["URL"].startswith("memory:"):
    # A key prefix, to share a Redis with other projects.
    BROADCAST["default"]["OPTIONS"] = {"prefix": os.environ["BROADCAST_PREFIX"]}
# Browsers may read and publish the "demo" channel, nothing else.
BROADCAST_AUTH = {"PUBLIC": ["demo"], "PUBLISH": ["demo"]}
# Plain Channels consumers and group_send share the same events.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
        "CONFIG": {"using": "default"},
    }
}
