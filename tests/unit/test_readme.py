"""The README's configuration reference is the option table itself (meshfs.config.options_markdown)."""

from __future__ import annotations

from pathlib import Path

from meshfs.config import options_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_reference_matches_the_option_table() -> None:
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    expected = options_markdown().strip().splitlines()
    assert table == expected, (
        "README.md's configuration table differs from options_markdown(); regenerate it with "
        "`.venv/bin/python -c 'from meshfs.config import options_markdown; print(options_markdown())'`"
    )
