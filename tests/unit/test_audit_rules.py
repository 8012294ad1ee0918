"""Static guards for the audit's rules (DESIGN.md §2) that a grep can hold: paths never
from the working directory, no hard-coded machine paths, no prints, and a timeout on
every HTTP client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "orchestrator"
FILES = sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        out.append((n, line))
    return out


@pytest.mark.parametrize(
    ("rule", "pattern"),
    [
        ("working directory", re.compile(r"os\.getcwd\(|Path\.cwd\(|os\.chdir\(")),
        ("drive letter", re.compile(r"""["'][A-Za-z]:\\\\""")),
        ("user folder", re.compile(r"""["'](/home/|/Users/|/root/|C:\\\\Users)""")),
        ("environment read outside config", re.compile(r"os\.environ|os\.getenv\(")),
    ],
)
def test_no_forbidden_pattern(rule: str, pattern: re.Pattern[str]) -> None:
    allowed = {"config.py"} if rule == "environment read outside config" else set()
    hits = [
        f"{p.relative_to(SRC)}:{n}: {line.strip()}"
        for p in FILES
        if p.name not in allowed
        for n, line in _code_lines(p)
        if pattern.search(line)
    ]
    assert hits == [], f"{rule}: {hits}"


def test_every_http_client_has_a_timeout() -> None:
    """Each place that builds an httpx2 client passes an explicit timeout."""
    missing = []
    for p in FILES:
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"httpx2\.(Async)?Client\(", text):
            call = text[m.end() : m.end() + 600]
            depth, end = 1, 0
            for i, ch in enumerate(call):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    end = i
                    break
            if "timeout" not in call[:end]:
                line = text[: m.start()].count("\n") + 1
                missing.append(f"{p.relative_to(SRC)}:{line}")
    assert missing == [], f"HTTP clients without a timeout: {missing}"


def test_guard_would_catch_a_violation(tmp_path: Path) -> None:
    """The patterns above do match what they forbid (so the tests can fail)."""
    assert re.search(r"os\.getcwd\(|Path\.cwd\(", "base = os.getcwd()")
    assert re.search(r"""["'][A-Za-z]:\\\\""", 'p = "C:\\\\Users\\\\me"')
