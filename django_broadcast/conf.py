"""Reading and validating ``settings.BROADCAST``.

Each alias is either ``{"URL": "scheme://..."}``, whose scheme picks the backend, or
``{"BACKEND": "dotted.path.Class", "LOCATION": "..."}``, plus optional ``OPTIONS``
(backend-specific) and the hub settings ``CODEC``, ``QUEUE_SIZE``, ``OVERFLOW``,
``TIMEOUT`` and ``RECONNECT_TIMEOUT``. The same validation feeds the system checks
(at startup) and :func:`get_aliases` (at first use), so a bad setting is reported
once, with the id of its check and a hint naming the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .backends import schemes
from .backends.base import Backend

__all__ = ["DEFAULT_ALIAS", "AliasConfig", "Problem", "get_aliases", "validate"]

DEFAULT_ALIAS = "default"
DEFAULT_SETTING: dict[str, dict[str, Any]] = {DEFAULT_ALIAS: {"URL": "memory://"}}

OVERFLOW_POLICIES = ("drop-oldest", "disconnect")
_ALIAS_KEYS = {
    "URL", "BACKEND", "LOCATION", "OPTIONS", "CODEC",
    "QUEUE_SIZE", "OVERFLOW", "TIMEOUT", "RECONNECT_TIMEOUT",
}  # fmt: skip


@dataclass(frozen=True)
class AliasConfig:
    """One alias of ``settings.BROADCAST``, validated and with defaults filled in."""

    alias: str
    backend: type[Backend]
    location: str
    options: Mapping[str, Any] = field(default_factory=dict)
    codec: str = "django_broadcast.codec.JSONCodec"
    queue_size: int = 1000
    overflow: Literal["drop-oldest", "disconnect"] = "drop-oldest"
    timeout: float = 5.0
    reconnect_timeout: float | None = 60.0


@dataclass(frozen=True)
class Problem:
    """A setting that cannot work: ``id`` is the system check's (``E001``...)."""

    id: str
    msg: str
    hint: str


def _setting() -> Any:
    return getattr(settings, "BROADCAST", DEFAULT_SETTING)


def validate() -> tuple[dict[str, AliasConfig], list[Problem]]:
    """Validate ``settings.BROADCAST``: the aliases that are sound, and the problems."""
    setting = _setting()
    if not isinstance(setting, Mapping):
        return {}, [
            Problem(
                "E005",
                f"BROADCAST must be a dict of aliases, not {type(setting).__name__}.",
                'Write BROADCAST = {"default": {"URL": "redis://127.0.0.1:6379/0"}}.',
            )
        ]
    problems: list[Problem] = []
    if DEFAULT_ALIAS not in setting:
        problems.append(
            Problem(
                "E005",
                'BROADCAST has no "default" alias.',
                'Add one, e.g. "default": {"URL": "memory://"}.',
            )
        )
    aliases = {}
    for alias, entry in setting.items():
        config = _validate_alias(alias, entry, problems)
        if config is not None:
            aliases[alias] = config
    return aliases, problems


def get_aliases() -> dict[str, AliasConfig]:
    """The validated aliases; raise ``ImproperlyConfigured`` on any problem."""
    aliases, problems = validate()
    if problems:
        raise ImproperlyConfigured(
            "; ".join(f"django_broadcast.{p.id}: {p.msg} {p.hint}" for p in problems)
        )
    return aliases


def _validate_alias(alias: str, entry: Any, problems: list[Problem]) -> AliasConfig | None:
    where = f"BROADCAST[{alias!r}]"
    if not isinstance(entry, Mapping):
        problems.append(
            Problem(
                "E005",
                f"{where} must be a dict, not {type(entry).__name__}.",
                'Write {"URL": "memory://"} or {"BACKEND": ..., "LOCATION": ...}.',
            )
        )
        return None
    before = len(problems)
    unknown = set(entry) - _ALIAS_KEYS
    if unknown:
        problems.append(
            Problem(
                "E004",
                f"{where} has unknown keys: {', '.join(sorted(map(str, unknown)))}.",
                f"Use only {', '.join(sorted(_ALIAS_KEYS))}; backend settings go in OPTIONS.",
            )
        )

    backend_path, location = _resolve_backend(where, entry, problems)
    backend = None
    if backend_path is not None:
        try:
            backend = import_string(backend_path)
        except ImportError as exc:
            install = schemes.install_hint(backend_path)
            hint = f"Install its driver: {install}." if install else f"Check the path ({exc})."
            problems.append(Problem("E002", f"{where}: cannot import {backend_path!r}.", hint))
        else:
            if not (isinstance(backend, type) and issubclass(backend, Backend)):
                problems.append(
                    Problem(
                        "E002",
                        f"{where}: {backend_path!r} is not a django_broadcast backend.",
                        "Name a subclass of django_broadcast.backends.base.Backend.",
                    )
                )
                backend = None
    if backend is not None and backend.requires_location and not location:
        problems.append(
            Problem(
                "E003",
                f"{where} names no broker location.",
                'Add "LOCATION" (or use "URL"), e.g. "redis://127.0.0.1:6379/0".',
            )
        )

    options = entry.get("OPTIONS", {})
    if not isinstance(options, Mapping):
        problems.append(
            Problem(
                "E004",
                f"{where}['OPTIONS'] must be a dict, not {type(options).__name__}.",
                'Write "OPTIONS": {"history": 1000}, for example.',
            )
        )
    elif backend is not None:
        for sentence in backend.validate_options(options):
            problems.append(
                Problem("E004", f"{where}['OPTIONS']: {sentence}.", _options_hint(backend))
            )

    hub = _validate_hub_settings(where, entry, problems)
    if len(problems) > before or backend is None:
        return None
    return AliasConfig(alias=alias, backend=backend, location=location, options=options, **hub)


def _resolve_backend(
    where: str, entry: Mapping[str, Any], problems: list[Problem]
) -> tuple[str | None, str]:
    url = entry.get("URL")
    if url is not None:
        if "BACKEND" in entry or "LOCATION" in entry:
            problems.append(
                Problem(
                    "E004",
                    f"{where} has URL and also BACKEND or LOCATION.",
                    "Use either URL alone or BACKEND with LOCATION.",
                )
            )
        if not isinstance(url, str) or "://" not in url:
            problems.append(
                Problem(
                    "E001",
                    f"{where}['URL'] = {url!r} is not a URL.",
                    f"Write scheme://..., with a scheme among {_schemes()}.",
                )
            )
            return None, ""
        scheme = schemes.get(url.split("://", 1)[0])
        if scheme is None:
            problems.append(
                Problem(
                    "E001",
                    f"{where}['URL'] has the unknown scheme {url.split('://', 1)[0]!r}.",
                    f"Use one of {_schemes()}, or BACKEND with a dotted path.",
                )
            )
            return None, ""
        return scheme.backend, url
    backend_path = entry.get("BACKEND")
    location = entry.get("LOCATION", "")
    if backend_path is None:
        problems.append(
            Problem(
                "E003",
                f"{where} has neither URL nor BACKEND.",
                'Add "URL": "memory://" (or a broker URL).',
            )
        )
        return None, ""
    if not isinstance(backend_path, str):
        problems.append(
            Problem(
                "E002",
                f"{where}['BACKEND'] must be a dotted path string.",
                'Write e.g. "django_broadcast.backends.redis.RedisStreamsBackend".',
            )
        )
        return None, ""
    if not isinstance(location, str):
        problems.append(
            Problem(
                "E004",
                f"{where}['LOCATION'] must be a string, not {location!r}.",
                'Write the broker URL, e.g. "redis://127.0.0.1:6379/0".',
            )
        )
        location = ""
    return backend_path, location


def _validate_hub_settings(
    where: str, entry: Mapping[str, Any], problems: list[Problem]
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def bad(key: str, value: Any, must: str) -> None:
        problems.append(
            Problem(
                "E004",
                f"{where}[{key!r}] = {value!r}: must be {must}.",
                f"Set {key} to {must}, or leave it out for its default.",
            )
        )

    if "QUEUE_SIZE" in entry:
        value = entry["QUEUE_SIZE"]
        if type(value) is not int or value < 1:
            bad("QUEUE_SIZE", value, "a positive int")
        found["queue_size"] = value
    if "OVERFLOW" in entry:
        value = entry["OVERFLOW"]
        if value not in OVERFLOW_POLICIES:
            bad("OVERFLOW", value, " or ".join(map(repr, OVERFLOW_POLICIES)))
        found["overflow"] = value
    for key, none_ok in (("TIMEOUT", False), ("RECONNECT_TIMEOUT", True)):
        if key in entry:
            value = entry[key]
            if value is None and none_ok:
                pass
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                bad(key, value, "a positive number of seconds" + (" or None" if none_ok else ""))
            found[key.lower()] = value
    if "CODEC" in entry:
        value = entry["CODEC"]
        try:
            import_string(value)
        except (ImportError, TypeError, ValueError):
            problems.append(
                Problem(
                    "E002",
                    f"{where}['CODEC'] = {value!r} does not import.",
                    "Name a class with encode() and decode(), or drop CODEC for JSON.",
                )
            )
        found["codec"] = value
    return found


def _schemes() -> str:
    return ", ".join(f"{s.name}://" for s in schemes.registered())


def _options_hint(backend: type[Backend]) -> str:
    known = "Known options: " + ", ".join(
        f"{k} ({getattr(t, '__name__', t)})" for k, t in sorted(backend.option_types.items())
    )
    needs = [
        f"{option} needs a backend with {feature} ({schemes.describe(feature)})"
        for option, feature in backend.option_features.items()
        if not getattr(backend.features, feature) and option not in backend.option_types
    ]
    return "; ".join([known, *needs]) + "."
