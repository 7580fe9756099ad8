"""PostgreSQL (``postgres://``, ``postgresql://``): LISTEN/NOTIFY carries live events,
a table keeps their history, and a publish can be written in the caller's database
transaction, so that the event leaves exactly when the data commits.

What it guarantees:

- One listening connection per event loop (per receiver) carries every channel of the
  process. Channel names become NOTIFY channels of at most 63 bytes: the alias's
  prefix and the name where they fit, else their start and a hash of the whole.
- Every event is a row of the table ``django_broadcast_event`` (id from one sequence,
  channel, payload, time) and a notification carrying its id and, where the payload
  is UTF-8 text under NOTIFY's 8,000-byte limit, the payload too; a larger one is read
  from the table by the receiver, in order with the others.
- Ids increase per channel in the order of commit: a publish takes a per-channel
  transaction-level advisory lock before it takes its id (publishers to one channel
  are serialized until each commits).
- Retention: ``OPTIONS["history"]`` rows kept per channel and ``OPTIONS["max_age"]``
  seconds, applied every ``history // 10`` publishes or so per channel; the newest
  id deleted is recorded per channel, so a resume past it is reported as a gap (as is
  one from an id older than the table itself: the table was made anew).
- ``subscribe`` LISTENs, then returns the channel's newest id (``"0"`` if it has
  none); a reconnect LISTENs again and reads what was missed from the table.
- With ``OPTIONS["database"]`` (a ``DATABASES`` alias on the same database), a
  publish inside ``transaction.atomic()`` on that database is written in that
  transaction: the NOTIFY is delivered at the commit and never on rollback.

- Work queues (the channel layer's plain channels) are rows of
  ``django_broadcast_queued``: a put inserts below the capacity under the queue's
  advisory lock, a take deletes the oldest unexpired row ``FOR UPDATE SKIP LOCKED``
  and waits for the queue's NOTIFY when there is none (see ``queues``).

The tables are created where missing by the backend's own connections, and by the
app's migration on PostgreSQL databases.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["PostgresBackend"]

if TYPE_CHECKING:
    from .backend import PostgresBackend


def __getattr__(name: str) -> Any:
    # Lazy, so that the migration can read .schema without psycopg installed.
    if name == "PostgresBackend":
        from .backend import PostgresBackend

        return PostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
