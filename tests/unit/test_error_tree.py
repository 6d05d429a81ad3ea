"""The error tree drawn in ``towerstream.errors`` is the whole tree, each class under its parent."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import towerstream.errors
from towerstream.errors import TowerstreamError

#: Every module that defines a subclass (importing them makes ``__subclasses__`` complete).
MODULES = ("index_store.errors", "producers.errors", "streams.publisher", "towerstream.datasets",
           "towerstream.recording", "towerstream.broker", "towerstream.events.codec", "towerstream.processes")


def drawn() -> dict[str, str]:
    """class name -> parent's name, read from the docstring's drawing (indent = depth)."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = [(-1, "TowerstreamError")]
    for line in (towerstream.errors.__doc__ or "").splitlines():
        m = re.match(r"^([ |]*)\+-- (\w+)", line)
        if not m:
            continue
        depth = len(m.group(1))
        while stack[-1][0] >= depth:
            stack.pop()
        parents[m.group(2)] = stack[-1][1]
        stack.append((depth, m.group(2)))
    return parents


def test_every_subclass_is_drawn_under_its_parent_and_nothing_else_is() -> None:
    for name in MODULES:
        importlib.import_module(name)
    actual: dict[str, str] = {}
    todo = [TowerstreamError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith(("tests", "test_")):
                continue
            actual[sub.__name__] = cls.__name__
            todo.append(sub)
    assert drawn() == actual
    # A subclass defined in a module not listed above would be missing from both: look in the source.
    assert declared() == set(actual)


def declared() -> set[str]:
    """Names of classes in the source packages whose bases reach TowerstreamError, by reading the code."""
    root = Path(__file__).resolve().parents[2]
    bases: dict[str, list[str]] = {}
    for pkg in ("towers", "index_store", "streams", "producers", "towerstream"):
        for path in (root / pkg).rglob("*.py"):
            for m in re.finditer(r"^class (\w+)\(([^)]*)\)", path.read_text(), re.M):
                bases[m.group(1)] = [b.strip().split(".")[-1] for b in m.group(2).split(",")]
    found = {"TowerstreamError"}
    while True:
        more = {c for c, bs in bases.items() if c not in found and set(bs) & found}
        if not more:
            return found - {"TowerstreamError"}
        found |= more
