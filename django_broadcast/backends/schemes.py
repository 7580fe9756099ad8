"""The URL schemes of ``BROADCAST`` aliases: which backend each names, and what to
install when that backend's driver is missing.

The schemes django_broadcast ships are registered here. A third-party package adds
its own with an entry point in the group ``django_broadcast.schemes``, named after the
scheme, whose value is the backend class; in ``setup.cfg``::

    [options.entry_points]
    django_broadcast.schemes =
        kafka = mypackage.backends:KafkaBackend

or in ``pyproject.toml``::

    [project.entry-points."django_broadcast.schemes"]
    kafka = "mypackage.backends:KafkaBackend"

after which ``{"URL": "kafka://..."}`` picks that backend. The error for a missing
driver names the distribution that declared the entry point. Code can also call
:func:`register` (from an ``AppConfig.ready()``, say).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib.metadata import entry_points

from django.utils.module_loading import import_string

__all__ = [
    "ENTRY_POINT_GROUP",
    "Scheme",
    "describe",
    "get",
    "install_hint",
    "register",
    "registered",
]

#: The entry-point group third-party backends register their schemes in.
ENTRY_POINT_GROUP = "django_broadcast.schemes"

_EXTRA = 'pip install "django-broadcast-bridge[{}]"'


@dataclass(frozen=True)
class Scheme:
    """One URL scheme: ``{"URL": f"{name}://..."}`` builds a ``backend``."""

    name: str
    #: The dotted path of the backend class.
    backend: str
    #: What to run when the backend cannot be imported (its driver is missing).
    install: str = ""


_schemes: dict[str, Scheme] = {}
_lock = threading.Lock()
_loaded = False


def register(name: str, backend: str, install: str = "") -> Scheme:
    """Make ``name://`` URLs build the backend at dotted path ``backend``."""
    scheme = Scheme(name.lower(), backend, install)
    with _lock:
        _schemes[scheme.name] = scheme
    return scheme


def _load_entry_points() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        backend = entry.value.replace(":", ".")
        package = entry.dist.name if entry.dist is not None else "the package that provides it"
        register(entry.name, backend, install=f"pip install {package}")


def get(name: str) -> Scheme | None:
    """The scheme ``name`` (case-insensitive), or None where none is registered."""
    _load_entry_points()
    return _schemes.get(name.lower())


def registered() -> list[Scheme]:
    """Every registered scheme, the shipped ones first."""
    _load_entry_points()
    with _lock:
        return list(_schemes.values())


def install_hint(backend: str) -> str:
    """What to install for the backend at dotted path ``backend``, if it is known."""
    for scheme in registered():
        if scheme.backend == backend and scheme.install:
            return scheme.install
    return ""


def describe(feature: str) -> str:
    """The schemes whose backends have ``feature`` (a field of
    :class:`~django_broadcast.backends.base.Features`), for error messages."""
    names = []
    for scheme in registered():
        try:
            backend = import_string(scheme.backend)
        except ImportError:
            continue
        if getattr(backend.features, feature, False):
            names.append(f"{scheme.name}://")
    return "such as " + ", ".join(names) if names else "none is installed"


register("memory", "django_broadcast.backends.memory.MemoryBackend")
for _name in ("redis", "rediss"):
    register(_name, "django_broadcast.backends.redis.RedisBackend", _EXTRA.format("redis"))
    register(
        f"{_name}+streams", "django_broadcast.backends.redis.RedisStreamsBackend",
        _EXTRA.format("redis"),
    )  # fmt: skip
for _name, _backend in (
    ("redis+sentinel", "redis.RedisBackend"),
    ("redis+sentinel+streams", "redis.RedisStreamsBackend"),
    ("redis+cluster", "redis.RedisClusterBackend"),
    ("redis+cluster+streams", "redis.RedisClusterStreamsBackend"),
):
    register(_name, f"django_broadcast.backends.{_backend}", _EXTRA.format("redis"))
register("nats", "django_broadcast.backends.nats.NatsBackend", _EXTRA.format("nats"))
for _name in ("postgres", "postgresql"):
    register(_name, "django_broadcast.backends.postgres.PostgresBackend", _EXTRA.format("postgres"))
