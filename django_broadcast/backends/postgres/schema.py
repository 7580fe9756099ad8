"""The tables of the PostgreSQL backend, as SQL: shared by the backend (which creates
them where they are missing) and the app's migration. Imports nothing, so that the
migration runs on any PostgreSQL driver Django uses."""

__all__ = [
    "CREATE",
    "CREATE_QUEUED",
    "DROP",
    "DROP_QUEUED",
    "QUEUED",
    "SEQUENCE",
    "TABLE",
    "TRIMMED",
]

#: One row per event: its id, channel (with the alias's prefix), payload and time.
TABLE = "django_broadcast_event"
#: Per channel, the newest id that retention has deleted: what proves continuity.
TRIMMED = "django_broadcast_trimmed"
#: The ids. It starts at the microseconds since the epoch of its creation, so that a
#: table made anew (a database restored empty) never reuses an id it had before.
SEQUENCE = "django_broadcast_event_id_seq"
#: One row per message of a work queue: its id (the order of the queue), queue (with
#: the alias's prefix), payload and expiry (a ``time.time()`` value).
QUEUED = "django_broadcast_queued"

#: Creates whatever is missing, under a lock so that processes may race; takes no
#: lock at all where the tables exist (the last one made says so).
CREATE = f"""
DO $$ BEGIN
    IF to_regclass('{TRIMMED}') IS NULL THEN
        PERFORM pg_advisory_xact_lock(8410725349218);
        IF to_regclass('{SEQUENCE}') IS NULL THEN
            EXECUTE 'CREATE SEQUENCE {SEQUENCE} START WITH '
                || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        END IF;
        CREATE TABLE IF NOT EXISTS {TABLE} (
            id bigint PRIMARY KEY DEFAULT nextval('{SEQUENCE}'),
            channel text NOT NULL,
            payload bytea NOT NULL,
            created timestamptz NOT NULL DEFAULT now()
        );
        ALTER SEQUENCE {SEQUENCE} OWNED BY {TABLE}.id;
        CREATE INDEX IF NOT EXISTS {TABLE}_channel_id ON {TABLE} (channel, id);
        CREATE TABLE IF NOT EXISTS {TRIMMED} (channel text PRIMARY KEY, upto bigint NOT NULL);
    END IF;
END $$
"""

DROP = f"DROP TABLE IF EXISTS {TABLE}, {TRIMMED}"

#: Creates the queues' table where it is missing (the app's second migration).
CREATE_QUEUED = f"""
DO $$ BEGIN
    IF to_regclass('{QUEUED}') IS NULL THEN
        PERFORM pg_advisory_xact_lock(8410725349218);
        CREATE TABLE IF NOT EXISTS {QUEUED} (
            id bigserial PRIMARY KEY,
            queue text NOT NULL,
            payload bytea NOT NULL,
            expires float8 NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {QUEUED}_queue_id ON {QUEUED} (queue, id);
    END IF;
END $$
"""

DROP_QUEUED = f"DROP TABLE IF EXISTS {QUEUED}"
