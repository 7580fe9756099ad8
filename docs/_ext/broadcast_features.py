"""``.. broadcast-features::``: the capability table of the shipped backends, made from
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


class FeaturesTable(Directive):
    """A table: one row per backend, its URL schemes, and its declared features."""

    def run(self) -> list[nodes.Node]:
        rows: dict[str, list[str]] = {}
        for scheme in schemes.registered():
            rows.setdefault(scheme.backend, []).append(f"{scheme.name}://")
        header = ["URL", *(title for _, title in COLUMNS)]
        body = []
        for path, names in rows.items():
            features = import_string(path).features
            body.append([", ".join(names), *(_cell(getattr(features, f)) for f, _ in COLUMNS)])
        table = nodes.table()
        group = nodes.tgroup(cols=len(header))
        table += group
        group.extend(nodes.colspec(colwidth=1) for _ in header)
        group += nodes.thead("", self._row(header))
        group += nodes.tbody("", *(self._row(row) for row in body))
        return [table]

    @staticmethod
    def _row(cells: list[str]) -> nodes.row:
        row = nodes.row()
        for text in cells:
            row += nodes.entry("", nodes.paragraph(text=text))
        return row


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("broadcast-features", FeaturesTable)
    return {"parallel_read_safe": True}
