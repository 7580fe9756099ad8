"""``.. broadcast-features::``: the capability table of the shipped backends, and
``.. broadcast-guarantees::``: what each one guarantees a subscriber, both made from
what each backend class declares (``Backend.features``), so the docs cannot drift from
the code."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string
from docutils import nodes
from docutils.parsers.rst import Directive

from django_broadcast.backends import schemes

COLUMNS = [
    ("history", "history & resume"),
    ("patterns", "patterns"),
    ("transactional", "transactional publish"),
    ("queues", "queues (layer plain channels)"),
    ("crosses_processes", "crosses processes"),
    ("id_order", "ids increase per"),
    ("max_payload", "hard payload limit"),
    ("max_name_length", "broker name limit"),
]


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, int):
        return f"{value:,} bytes"
    return str(value)


def _backends() -> dict[str, list[str]]:
    """Each registered backend's dotted path and its URL schemes."""
    rows: dict[str, list[str]] = {}
    for scheme in schemes.registered():
        rows.setdefault(scheme.backend, []).append(f"{scheme.name}://")
    return rows


def _table(header: list[str], body: list[list[str]]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    widths = [min(30, max(len(row[i]) for row in [header, *body])) for i in range(len(header))]
    group.extend(nodes.colspec(colwidth=width) for width in widths)
    group += nodes.thead("", _row(header))
    group += nodes.tbody("", *(_row(row) for row in body))
    return table


def _row(cells: list[str]) -> nodes.row:
    row = nodes.row()
    for text in cells:
        row += nodes.entry("", nodes.paragraph(text=text))
    return row


class FeaturesTable(Directive):
    """A table: one row per backend, its URL schemes, and its declared features."""

    def run(self) -> list[nodes.Node]:
        header = ["URL", *(title for _, title in COLUMNS)]
        body = []
        for path, names in _backends().items():
            features = import_string(path).features
            body.append([", ".join(names), *(_cell(getattr(features, f)) for f, _ in COLUMNS)])
        return [_table(header, body)]


def guarantees(features: Any) -> list[str]:
    """What a subscriber can count on with a backend that declares ``features``: who
    receives, live delivery, resuming, a lost broker connection, and event ids."""
    if features.crosses_processes:
        reach = "every process and server using the broker"
        lost = (
            "nothing lost, every event once and in order, as long as the broker kept it; "
            "a gap notice where it did not"
            if features.history
            else 'a "reconnect" gap notice, then live (what was published meanwhile is lost)'
        )
    else:
        reach = "the publishing process only"
        lost = "(no broker connection to lose)"
    live = "every event" if features.history else "at most once"
    resume = (
        "replayed in order within the kept history; a gap notice beyond it, or where "
        "continuity cannot be proven"
        if features.history
        else 'a "history" gap notice (nothing is kept)'
    )
    ids = {
        "channel": "increase per channel, whoever published: a position to resume from",
        "publisher": "increase per publishing process only",
    }[features.id_order]
    return [reach, live, resume, lost, ids]


class GuaranteesTable(Directive):
    """A table: one row per backend and what it guarantees, from its declared features."""

    def run(self) -> list[nodes.Node]:
        header = [
            "URL",
            "reaches",
            "live delivery",
            "resume with since / Last-Event-ID",
            "broker connection lost and restored",
            "event ids",
        ]
        body = [
            [", ".join(names), *guarantees(import_string(path).features)]
            for path, names in _backends().items()
        ]
        return [_table(header, body)]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("broadcast-features", FeaturesTable)
    app.add_directive("broadcast-guarantees", GuaranteesTable)
    return {"parallel_read_safe": True}
