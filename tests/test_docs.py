"""The docs stay true: the architecture map names exactly the package's modules, and every
flag in README's flag table is a flag of the command it names, with the default it states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import evaluate
import search
import train

ROOT = Path(__file__).resolve().parents[1]
CLIS = {"train.py": train, "evaluate.py": evaluate, "search.py": search}


def test_the_architecture_map_names_every_module_and_no_other() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(retrieval/[\w/]+\.py)`", text))
    actual = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "retrieval").rglob("*.py")
        if p.name != "__init__.py"
    }
    assert not actual - named, f"modules missing from docs/architecture.md: {actual - named}"
    assert not named - actual, (
        f"docs/architecture.md names modules that do not exist: {named - actual}"
    )


def flag_rows() -> list[tuple[str, str, str]]:
    """(command, flag, stated default) of every row of README's flag table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- flags -->")[1].split("<!-- /flags -->")[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        flag, command, default = cells[0].strip("`"), cells[1], cells[2].strip("`")
        rows.append((command, flag.split()[0].split("=")[0], default))
    return rows


def test_readme_has_a_flag_table() -> None:
    assert len(flag_rows()) >= 10


@pytest.mark.parametrize(("command", "flag", "default"), flag_rows())
def test_every_readme_flag_is_a_flag_of_its_command(command: str, flag: str, default: str):
    for name in command.split(", "):
        parser = CLIS[name].build_parser()
        actions = {opt: a for a in parser._actions for opt in a.option_strings}
        assert flag in actions, f"README lists {flag} for {name}, whose --help has no such flag"
        value = actions[flag].default
        if default != "-" and value is not None:
            assert str(value) == default, f"{name} {flag}: README says {default}, --help {value}"
