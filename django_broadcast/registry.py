"""The ``broadcasts`` registry: alias -> :class:`Broadcast`, like ``django.core.cache.caches``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .broadcast import Broadcast
from .conf import AliasConfig, get_aliases

__all__ = ["BroadcastRegistry", "broadcasts"]


class BroadcastRegistry:
    """Builds each alias of ``settings.BROADCAST`` lazily, once per process.

    ``override_settings(BROADCAST=...)`` resets it: the old aliases are closed and the
    next access builds the new ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._configs: dict[str, AliasConfig] | None = None
        self._instances: dict[str, Broadcast] = {}

    def _aliases(self) -> dict[str, AliasConfig]:
        if self._configs is None:
            self._configs = get_aliases()
        return self._configs

    def __getitem__(self, alias: str) -> Broadcast:
        try:
            return self._instances[alias]
        except KeyError:
            pass
        with self._lock:
            if alias not in self._instances:
                configs = self._aliases()
                if alias not in configs:
                    raise ImproperlyConfigured(
                        f"there is no broadcast alias {alias!r}: BROADCAST defines "
                        f"{', '.join(map(repr, configs))}"
                    )
                self._instances[alias] = Broadcast(configs[alias])
            return self._instances[alias]

    def __iter__(self) -> Iterator[str]:
        return iter(self._aliases())

    def all(self, initialized_only: bool = False) -> list[Broadcast]:
        """Every alias, or only those already built."""
        if initialized_only:
            return list(self._instances.values())
        return [self[alias] for alias in self]

    def stats(self) -> dict[str, dict[str, Any]]:
        """:meth:`Broadcast.stats` of every alias built in this process, by alias."""
        return {instance.alias: instance.stats() for instance in self.all(initialized_only=True)}

    def close_all(self) -> None:
        """Close every built alias."""
        for instance in self.all(initialized_only=True):
            instance.close()

    def reset(self) -> None:
        """Close every built alias and forget the settings, to read them anew."""
        with self._lock:
            instances, self._instances = self._instances, {}
            self._configs = None
        for instance in instances.values():
            instance.close()


broadcasts = BroadcastRegistry()


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "BROADCAST":
        broadcasts.reset()
