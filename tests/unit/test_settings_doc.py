"""``docs/settings.md`` is generated from the settings models and kept in sync by this test."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from towerstream.drift import DriftSettings
from towerstream.settings import Settings
from towerstream.settings_doc import DOC, default_text, main, render, undocumented


def test_every_field_has_a_description() -> None:
    assert undocumented(Settings, DriftSettings) == []


def test_the_settings_doc_is_what_the_models_give() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "stale: run python -m towerstream.settings_doc"


@pytest.mark.parametrize("model", [Settings, DriftSettings])
def test_the_doc_lists_every_field_with_its_default(model: type) -> None:
    text = DOC.read_text(encoding="utf-8")
    prefix = model.model_config["env_prefix"]
    for name, field in model.model_fields.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{prefix}{name.upper()}` |")), None)
        assert row is not None, name
        assert f"| `{default_text(field)}` |" in row and field.description.split("`")[0][:30] in row, row


def test_a_field_without_a_description_or_a_stale_file_fails_the_check(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare(Settings):
        added_later: int = Field(default=3)

    assert undocumented(Bare) == ["Bare.added_later"]
    out = tmp_path / "settings.md"
    assert main(["-o", str(out)]) == 0 and main(["--check", "-o", str(out)]) == 0
    out.write_text(out.read_text().replace("9092", "9093"))
    assert main(["--check", "-o", str(out)]) == 1
