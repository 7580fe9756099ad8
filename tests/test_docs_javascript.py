"""``docs/javascript.rst`` documents what ``broadcast.js`` exposes, no more, no less:
the members of ``DjangoBroadcast``, the public methods of a connection (those with a
``/** ... */`` comment; the others are internal) with their parameters, the options
``connect`` reads and the handlers ``stream`` reads. Both sides are read from the
files, so a change to one without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = (ROOT / "django_broadcast" / "static" / "django_broadcast" / "broadcast.js").read_text()
PAGE = (ROOT / "docs" / "javascript.rst").read_text()


def params(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


# broadcast.js ----------------------------------------------------------------------------


def exported() -> dict[str, list[str] | None]:
    """The members of ``DjangoBroadcast``: a function's parameters, or None."""
    body = re.search(r"root\.DjangoBroadcast = \{(.*?)\n  \};", SCRIPT, re.S)
    assert body, "broadcast.js no longer assigns root.DjangoBroadcast = {...}"
    members: dict[str, list[str] | None] = {}
    for name, value in re.findall(r"^\s+(\w+): (.+?),?$", body.group(1), re.M):
        inline = re.match(r"function \((.*?)\)", value)
        if inline:
            members[name] = params(inline.group(1))
            continue
        declared = re.search(rf"^  function {value}\((.*?)\)", SCRIPT, re.M)
        members[name] = params(declared.group(1)) if declared else None
    return members


def public_methods() -> dict[str, list[str]]:
    """``Connection.prototype`` methods with a ``/** */`` comment, and their parameters."""
    return {
        name: params(args)
        for name, args in re.findall(
            r"\*/\n  Connection\.prototype\.(\w+) = function \((.*?)\)", SCRIPT
        )
    }


def all_methods() -> set[str]:
    return set(re.findall(r"Connection\.prototype\.(\w+) = function", SCRIPT))


def connect_options() -> set[str]:
    return set(re.findall(r"\boptions\.(\w+)", SCRIPT))


def stream_handlers() -> set[str]:
    return set(re.findall(r"\bhandlers\.(\w+)", SCRIPT))


# the page --------------------------------------------------------------------------------


def directive_block(directive: str) -> str:
    """The text of a top-level directive of the page, up to the next one."""
    match = re.search(rf"^\.\. {re.escape(directive)}.*?(?=^\.\. js:|\Z)", PAGE, re.M | re.S)
    assert match, f"the page has no '.. {directive}'"
    return match.group(0)


def documented_members() -> dict[str, list[str] | None]:
    members: dict[str, list[str] | None] = {}
    for kind, name, args in re.findall(
        r"^\.\. js:(function|class|data):: DjangoBroadcast\.(\w+)(?:\((.*?)\))?$", PAGE, re.M
    ):
        members[name] = params(args) if kind == "function" else None
    return members


def documented_methods() -> dict[str, list[str]]:
    return {
        name: params(args)
        for name, args in re.findall(r"^   \.\. js:method:: (\w+)\((.*?)\)$", PAGE, re.M)
    }


def listed(block: str) -> set[str]:
    """The names of the ``* ``name``:`` items of a parameter's list."""
    return set(re.findall(r"^\s+\* ``(\w+)``:", block, re.M))


# the tests -------------------------------------------------------------------------------


def test_the_script_is_read() -> None:
    assert exported()["connect"] == ["url", "options"]
    assert public_methods()["subscribe"] == ["channel", "handler", "since"]
    assert {"onEvent", "maxDelay"} <= connect_options()
    assert {"onUnavailable", "types"} <= stream_handlers()
    assert "receive" in all_methods() - set(public_methods())


def test_every_member_of_djangobroadcast_is_documented_and_no_other() -> None:
    members = exported()
    documented = documented_members()
    assert set(documented) == set(members)
    for name, args in members.items():
        if args is not None and name in documented and documented[name] is not None:
            assert documented[name] == args, f"DjangoBroadcast.{name}"


def test_the_connection_class_is_documented_with_its_constructor() -> None:
    constructor = re.search(r"^  function Connection\((.*?)\)", SCRIPT, re.M)
    assert constructor
    documented = re.search(r"^\.\. js:class:: DjangoBroadcast\.Connection\((.*?)\)$", PAGE, re.M)
    assert documented and params(documented.group(1)) == params(constructor.group(1))


def test_every_public_method_is_documented_with_its_parameters_and_no_internal_one() -> None:
    assert documented_methods() == public_methods()
    assert not set(documented_methods()) & (all_methods() - set(public_methods()))


def test_every_option_of_connect_is_documented_and_no_other() -> None:
    assert listed(directive_block("js:function:: DjangoBroadcast.connect")) == connect_options()


def test_every_handler_of_stream_is_documented_and_no_other() -> None:
    assert listed(directive_block("js:function:: DjangoBroadcast.stream")) == stream_handlers()
