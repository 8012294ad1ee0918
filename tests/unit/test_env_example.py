"""``.env.example`` documents exactly the environment variables Settings reads."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from orchestrator.config import CONFIG_ENV, Settings, env_name, load_settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
# an assignment, active or commented out: "NAME=value" or "# NAME=value"
ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)\s*=")


def expected_names() -> set[str]:
    return {env_name(f) for f, info in Settings.model_fields.items() if not info.exclude}


def assignments(lines: list[str]) -> list[tuple[int, str]]:
    """(line index, variable) for every assignment line, active or commented out."""
    found = []
    for i, line in enumerate(lines):
        m = ASSIGNMENT.match(line.strip())
        if m:
            found.append((i, m[1]))
    return found


@pytest.fixture(scope="module")
def lines() -> list[str]:
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing"
    return ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()


def test_expected_names_are_sane() -> None:
    names = expected_names()
    assert "BFL_API_KEY" in names
    assert "ORCHESTRATOR_PORT" in names  # aliased field: its alias, not PORT
    assert "PORT" not in names
    assert "CONFIG_FILE" not in names  # excluded: not a setting


def test_lists_exactly_the_settings(lines: list[str]) -> None:
    names = [name for _, name in assignments(lines)]
    assert sorted(set(names)) == sorted(expected_names())


def test_no_variable_listed_twice(lines: list[str]) -> None:
    names = [name for _, name in assignments(lines)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert duplicates == []


def test_each_variable_has_a_comment_above(lines: list[str]) -> None:
    undocumented = []
    for i, name in assignments(lines):
        above = lines[i - 1].strip() if i > 0 else ""
        # the line above must be a comment, and not itself a commented-out assignment
        if not above.startswith("#") or ASSIGNMENT.match(above) or above == "#":
            undocumented.append(name)
    assert undocumented == []


def test_no_real_secret_values(lines: list[str]) -> None:
    for line in lines:
        m = re.match(r"^#?\s*(BFL_API_KEY|V0_API_KEY)\s*=\s*(.*)$", line.strip())
        if m:
            assert len(m[2].strip()) < 12, f"{m[1]} looks like it holds a real key"


def test_copied_as_dotenv_gives_the_defaults(
    lines: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Leave a value empty to use its default": the example, used as-is, changes nothing."""
    names = expected_names() | {CONFIG_ENV, "CONFIG_FILE"}
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    plain = tmp_path / "plain" / "orchestrator.toml"
    with_env = tmp_path / "with-env" / "orchestrator.toml"
    with_env.parent.mkdir()
    shutil.copyfile(ENV_EXAMPLE, with_env.parent / ".env")
    expected = load_settings(config_file=plain, check_dirs=False).masked()
    assert load_settings(config_file=with_env, check_dirs=False).masked() == expected
