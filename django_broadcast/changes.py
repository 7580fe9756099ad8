"""Model change streams: publish a model's creates, updates and deletes, on commit.

.. code-block:: python

    from django_broadcast.changes import broadcast_changes

    broadcast_changes(Seat, fields=["number", "taken"])

or, on the model itself::

    @broadcast_changes(fields=["number", "taken"])
    class Seat(models.Model): ...

Every save and delete of a ``Seat`` then publishes, when its transaction commits (at
once outside a transaction; never on a rollback), an event of type ``"created"``,
``"updated"`` or ``"deleted"`` whose data is ``{"model": "theatre.seat", "pk": 3,
"fields": {"number": "A3", "taken": true}}``, on the model's channel
``theatre.seat`` and on the object's channel ``theatre.seat.3``.

Only the fields named are sent, never the whole row: name them explicitly (an empty
list sends the primary key alone). A foreign key sends the related object's primary
key, a file field its name. ``channel`` may be a callable of the instance returning a
channel name or a list of them (``lambda seat: f"show.{seat.show_id}.seats"``, a
stream per parent); ``object_channel=False`` leaves the per-object channel out.

What browsers may read is up to ``BROADCAST_AUTH`` as for any channel (for example
``{"PUBLIC": ["theatre.seat", "theatre.seat.*"]}``, or a policy for per-object rules).

Saves and deletes are seen through Django's ``post_save`` and ``post_delete`` signals
of the model itself (not of its proxies or subclasses), so ``QuerySet.update()``,
``bulk_create()``, ``bulk_update()`` and raw SQL publish nothing, and neither does
``loaddata`` (raw saves). A broker that cannot be reached never breaks a save: as for
any publish at a commit, the failure is logged on the ``django_broadcast.broadcast``
logger, counted in ``failed_publishes`` and sent as the
:data:`~django_broadcast.signals.publish_failed` signal. A value the codec cannot
encode raises ``TypeError`` in the save, before anything is written to the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar, overload

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models
from django.db.models.fields.files import FieldFile
from django.db.models.signals import post_delete, post_save

from .conf import DEFAULT_ALIAS
from .events import validate_channel
from .registry import broadcasts

__all__ = ["Action", "ChangeStream", "broadcast_changes"]

logger = logging.getLogger("django_broadcast.changes")

#: The event types of a change stream.
Action = Literal["created", "updated", "deleted"]

ModelT = TypeVar("ModelT", bound=type[models.Model])
Channels = str | Callable[[Any], str | Iterable[str]]

_streams: dict[type[models.Model], list[ChangeStream]] = {}


class ChangeStream:
    """Publishes one model's creates, updates and deletes; made by
    :func:`broadcast_changes`. Subclass it and override :meth:`payload` or
    :meth:`channels` to send something else."""

    def __init__(
        self,
        model: type[models.Model],
        *,
        fields: Sequence[str],
        channel: Channels | None = None,
        object_channel: bool = True,
        using: str = DEFAULT_ALIAS,
    ) -> None:
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise TypeError(f"{model!r} is not a model class: pass a Django model")
        if isinstance(fields, str):
            raise TypeError(f'fields is a list of field names, not a string: ["{fields}"]')
        self.model = model
        self.label = model._meta.label_lower
        self.fields = [self._field(name) for name in fields]
        self.channel = channel if channel is not None else self.label
        if isinstance(self.channel, str):
            validate_channel(self.channel)
        self.object_channel = object_channel
        self.using = using

    def _field(self, name: str) -> models.Field[Any, Any]:
        opts = self.model._meta
        try:
            field = opts.get_field(name)
        except FieldDoesNotExist:
            names = ", ".join(f.name for f in opts.concrete_fields)
            raise ImproperlyConfigured(
                f"{self.model.__name__} has no field {name!r} for its change stream: "
                f"choose among {names}"
            ) from None
        if field.many_to_many or field.one_to_many or not getattr(field, "concrete", False):
            raise ImproperlyConfigured(
                f"{self.model.__name__}.{name!r} is a many-to-many or reverse relation: a "
                f"change stream sends the model's own columns; publish related changes "
                f"from the related model's stream"
            )
        if isinstance(field, models.BinaryField):
            raise ImproperlyConfigured(
                f"{self.model.__name__}.{name!r} is a BinaryField: bytes cannot be sent as "
                f"JSON; send a name or a URL of the data instead"
            )
        assert isinstance(field, models.Field)
        return field

    # What is sent ---------------------------------------------------------------------

    def payload(self, instance: models.Model, action: Action) -> dict[str, Any]:
        """The event's data: the model's label, the primary key and the chosen fields."""
        values = {}
        for field in self.fields:
            value = field.value_from_object(instance)
            values[field.name] = value.name if isinstance(value, FieldFile) else value
        return {"model": self.label, "pk": _plain(instance.pk), "fields": values}

    def channels(self, instance: models.Model) -> list[str]:
        """The channels an event of ``instance`` goes to."""
        if callable(self.channel):
            named = self.channel(instance)
            names = [named] if isinstance(named, str) else list(named)
            for name in names:
                try:
                    validate_channel(name)
                except (TypeError, ValueError) as exc:
                    raise ValueError(
                        f"the channel of the change stream of {self.label} is not valid: {exc}"
                    ) from None
        else:
            names = [self.channel]
        if self.object_channel:
            name = self.object_channel_name(instance.pk)
            try:
                names.append(validate_channel(name))
            except ValueError:
                logger.warning(
                    "%s %r: its primary key cannot be part of a channel name (letters, "
                    "digits, '-', '_', '.'); only the model's channel was sent",
                    self.label,
                    instance.pk,
                )
        return names

    def object_channel_name(self, pk: Any) -> str:
        """The per-object channel: the model's label and the primary key."""
        return f"{self.label}.{pk}"

    # Publishing -----------------------------------------------------------------------

    def publish(self, instance: models.Model, action: Action, db: str) -> None:
        """Publish ``action`` on ``instance`` when the transaction of database ``db``
        commits (at once in autocommit)."""
        data = self.payload(instance, action)
        bc = broadcasts[self.using]
        for channel in self.channels(instance):
            try:
                bc.publish_on_commit(channel, data, type=action, using=db)
            except TypeError as exc:
                raise TypeError(
                    f"the change stream of {self.label} cannot send {action} "
                    f"{instance.pk!r}: {exc} (fields: {', '.join(f.name for f in self.fields)})"
                ) from exc

    def _saved(self, sender: Any, instance: models.Model, created: bool, **kwargs: Any) -> None:
        if not kwargs.get("raw"):
            self.publish(instance, "created" if created else "updated", kwargs["using"])

    def _deleted(self, sender: Any, instance: models.Model, **kwargs: Any) -> None:
        self.publish(instance, "deleted", kwargs["using"])

    # Registry -------------------------------------------------------------------------

    def connect(self) -> None:
        """Start publishing (:func:`broadcast_changes` does it)."""
        uid = f"django_broadcast.changes.{id(self)}"
        post_save.connect(self._saved, sender=self.model, weak=False, dispatch_uid=uid)
        post_delete.connect(self._deleted, sender=self.model, weak=False, dispatch_uid=uid)
        _streams.setdefault(self.model, []).append(self)

    def disconnect(self) -> None:
        """Stop publishing."""
        uid = f"django_broadcast.changes.{id(self)}"
        post_save.disconnect(sender=self.model, dispatch_uid=uid)
        post_delete.disconnect(sender=self.model, dispatch_uid=uid)
        streams = _streams.get(self.model, [])
        if self in streams:
            streams.remove(self)

    @classmethod
    def of(cls, model: type[models.Model]) -> list[ChangeStream]:
        """The streams connected for ``model``."""
        return list(_streams.get(model, []))

    def __repr__(self) -> str:
        names = [f.name for f in self.fields]
        return f"<{type(self).__name__} {self.label} fields={names!r} using={self.using!r}>"


def _plain(pk: Any) -> Any:
    """A primary key as JSON carries it: ints stay ints, the rest become text."""
    return pk if isinstance(pk, int) else str(pk)


@overload
def broadcast_changes(
    model: ModelT,
    *,
    fields: Sequence[str],
    channel: Channels | None = ...,
    object_channel: bool = ...,
    using: str = ...,
) -> ChangeStream: ...


@overload
def broadcast_changes(
    model: None = ...,
    *,
    fields: Sequence[str],
    channel: Channels | None = ...,
    object_channel: bool = ...,
    using: str = ...,
) -> Callable[[ModelT], ModelT]: ...


def broadcast_changes(
    model: ModelT | None = None,
    *,
    fields: Sequence[str],
    channel: Channels | None = None,
    object_channel: bool = True,
    using: str = DEFAULT_ALIAS,
) -> ChangeStream | Callable[[ModelT], ModelT]:
    """Publish ``model``'s creates, updates and deletes on commit (see the module).

    Called with the model, connect and return the :class:`ChangeStream` (keep it to
    :meth:`~ChangeStream.disconnect`); called without, return a class decorator.
    Raise ``ImproperlyConfigured`` for a field that does not exist or cannot be sent.
    """
    if model is None:

        def decorate(cls: ModelT) -> ModelT:
            broadcast_changes(
                cls, fields=fields, channel=channel, object_channel=object_channel, using=using
            )
            return cls

        return decorate
    stream = ChangeStream(
        model, fields=fields, channel=channel, object_channel=object_channel, using=using
    )
    stream.connect()
    return stream
