"""Settings for the test suite."""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = "tests-only"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_broadcast",
    "django_broadcast.contrib.admin",
    "tests.testapp",
]
MIDDLEWARE = [
    "django_broadcast.contrib.admin.middleware.RequestStatsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.testapp.urls"
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
STATIC_URL = "static/"
_PG = urlsplit(os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    # For the tests of transactional publish (tests/test_postgres.py), only: the rest of
    # the suite does not need PostgreSQL. Its test database is this run's own.
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _PG.path.lstrip("/") or "postgres",
        "USER": unquote(_PG.username or ""),
        "PASSWORD": unquote(_PG.password or ""),
        "HOST": _PG.hostname or "127.0.0.1",
        "PORT": str(_PG.port or 5432),
        "TEST": {"NAME": f"test_broadcast_{os.getpid()}", "DEPENDENCIES": []},
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


class OnlyBroadcastOnPostgres:
    """The ``"pg"`` test database holds the tables of django_broadcast's migration
    only (the test app's models point at tables that live in ``"default"``)."""

    def allow_migrate(self, db: str, app_label: str, **hints: object) -> bool | None:
        if db == "pg":
            return app_label == "django_broadcast"
        return None


DATABASE_ROUTERS = ["tests.settings.OnlyBroadcastOnPostgres"]
