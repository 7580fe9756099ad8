"""The README's install line installs everything its quickstart imports: the modules
its Python blocks import, and the package modules those import (at module level,
transitively), and the backend of its ``BROADCAST`` URL, each come from Django, the
standard library or a distribution the line's extras require."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import metadata, packages_distributions
from pathlib import Path
from urllib.parse import urlsplit

from packaging.requirements import Requirement

from django_broadcast.backends import schemes

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PACKAGE = "django_broadcast"


def install_extras() -> set[str]:
    lines = re.findall(r'^pip install "django-broadcast-bridge\[([\w,-]+)\]"$', README, re.M)
    assert len(lines) == 1, "the README should have one install line"
    return set(lines[0].split(","))


def python_blocks() -> list[ast.Module]:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    return [
        compile(code, "README.md", "exec", flags=flags)
        for code in re.findall(r"^```python\n(.*?)^```$", README, re.M | re.S)
    ]


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def top_level_imports(tree: ast.Module, module: str) -> set[str]:
    """The modules ``tree`` (the code of ``module``) imports when it is imported: not
    in functions, nor under ``if TYPE_CHECKING``."""
    path = module_file(module)
    package = (
        module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    )
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(
                    f"{base}.{alias.name}"
                    for alias in node.names
                    if module_file(f"{base}.{alias.name}")
                )
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def third_party(roots: set[str]) -> set[str]:
    """The top-level names of the modules outside the package and the standard library
    that importing ``roots`` imports."""
    seen: set[str] = set()
    outside: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        top = name.split(".")[0]
        if top != PACKAGE:
            if top not in sys.stdlib_module_names and top != "__future__":
                outside.add(top)
            continue
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent:
            pending.append(parent)  # importing a.b imports a
        path = module_file(name)
        assert path is not None, f"no module {name}"
        pending.extend(top_level_imports(ast.parse(path.read_text()), name))
    return outside


def quickstart_roots() -> set[str]:
    roots: set[str] = set()
    for tree in python_blocks():
        roots |= top_level_imports(tree, "__main__")
    url = re.search(r'"URL": "([^"]+)"', README)
    assert url, "the quickstart's BROADCAST has no URL"
    scheme = urlsplit(url.group(1)).scheme
    (backend,) = (s.backend for s in schemes.registered() if s.name == scheme)
    roots.add(backend.rpartition(".")[0])
    return roots


def required(extras: set[str]) -> set[str]:
    """The distributions the package requires with ``extras``, normalized."""
    names = set()
    for line in metadata("django-broadcast-bridge").get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(
            requirement.marker.evaluate({"extra": extra}) for extra in extras
        ):
            names.add(normalized(requirement.name))
    return names


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_quickstart_is_read() -> None:
    roots = quickstart_roots()
    assert {"django_broadcast.routing", "django.core.asgi", "django.db"} <= roots
    assert {"channels", "redis", "django"} <= third_party(roots)


def test_the_install_line_installs_what_the_quickstart_imports() -> None:
    distributions = packages_distributions()
    needed = {
        normalized(distributions[module][0])
        for module in third_party(quickstart_roots())
        if module != "django"  # Django itself is the project's
    }
    assert needed - required(install_extras()) == set()
