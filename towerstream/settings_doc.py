"""``docs/settings.md``, generated from the settings models: ``python -m towerstream.settings_doc``.

Why generated: a hand-kept table drifts from the code (a new field undocumented, a default
changed in one place only). The models are the source; ``tests/unit/test_settings_doc.py``
fails when the file is stale or a field has no description. ``--check`` exits 1 when the file
differs from what the models give, for CI or a pre-commit hook.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
_GROUP = re.compile(r"^    # (?P<name>[^:].*)$")
_FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")

INTRO = """# Settings

Every setting is an environment variable; the table gives each one's default and what it does.
One pydantic settings object holds them (`towerstream/settings.py`, prefix `TOWERSTREAM_`), built
at the entry points only (the CLI, the Faust app, benchmarks); the drift monitor's
(`TOWERSTREAM_DRIFT_*`) are in `towerstream/drift.py`. The defaults run on a laptop: embedded broker,
`./data`, port 6066 on loopback.

This file is generated: `python -m towerstream.settings_doc` rewrites it from the models, and
`tests/unit/test_settings_doc.py` fails when it is stale or a field has no description. Edit the
field's `description` in the code, not this file.
"""


def groups(model: type[BaseSettings]) -> dict[str, str]:
    """Field name -> the ``# Section`` comment above it in the class source (``""``: none)."""
    out: dict[str, str] = {}
    current = ""
    for line in inspect.getsource(model).splitlines():
        g, f = _GROUP.match(line), _FIELD.match(line)
        if g:
            current = g["name"].strip()
        elif f and f["name"] in model.model_fields:
            out.setdefault(f["name"], current)
    return out


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    return str(value)


def values_text(field: FieldInfo) -> str:
    """The allowed values of a ``Literal`` (optionally ``| None``) field, else the type's name."""
    ann: Any = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_origin(ann) in (
        typing.Union, types.UnionType) else [ann]
    inner = args[0] if len(args) == 1 else ann
    if typing.get_origin(inner) is typing.Literal:
        return " / ".join(f"`{v}`" for v in typing.get_args(inner))
    return getattr(inner, "__name__", str(inner))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseSettings]) -> list[str]:
    prefix = str(model.model_config.get("env_prefix", ""))
    sections = groups(model)
    lines: list[str] = []
    shown: str | None = None
    for name, field in model.model_fields.items():
        section = sections.get(name, "")
        if section != shown:
            lines += ["", *([f"### {section}", ""] if section else []), "| variable | default | values | what it does |",
                      "| --- | --- | --- | --- |"]
            shown = section
        lines.append(f"| `{prefix}{name.upper()}` | `{_cell(default_text(field))}` | {_cell(values_text(field))} "
                     f"| {_cell(field.description or '')} |")
    return lines


def undocumented(*models: type[BaseSettings]) -> list[str]:
    """Fields without a description (the test fails on any)."""
    return [f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not (f.description or "").strip()]


def render() -> str:
    from towerstream.drift import DriftSettings
    from towerstream.settings import Settings

    lines = [INTRO.rstrip(), "", "## The worker, replicas and the CLI (`TOWERSTREAM_*`)", *table(Settings), "",
             "## The drift monitor (`TOWERSTREAM_DRIFT_*`)", *table(DriftSettings), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write docs/settings.md from the settings models")
    ap.add_argument("--check", action="store_true", help="only compare: exit 1 if the file is stale")
    ap.add_argument("-o", "--out", type=Path, default=DOC, help="file to write")
    args = ap.parse_args(argv)
    from towerstream.drift import DriftSettings
    from towerstream.settings import Settings

    missing = undocumented(Settings, DriftSettings)
    if missing:
        print(f"fields without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = render()
    if args.check:
        stale = not args.out.exists() or args.out.read_text(encoding="utf-8") != text
        if stale:
            print(f"{args.out} is stale: run python -m towerstream.settings_doc", file=sys.stderr)
        return 1 if stale else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
