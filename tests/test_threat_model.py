"""docs/threat-model.md stays true: every test it names exists, every threat and bad input
has its section, every section says what tests it and what is missing, and the repository
cites its own docs rather than files outside it.

A node id is checked with the AST, not by collecting tests: the file must exist and define
the function (``path::test_x``) or the class and its method (``path::TestX::test_x``).
A parametrized test is cited without its brackets and stands for all its cases; brackets,
if given, are ignored.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "threat-model.md"

THREATS = [f"T{n}" for n in range(1, 18)]
BAD_INPUTS = [f"B{n}" for n in range(1, 35)]

NODE_ID = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)+)?(\[[^\]`]*\])?")
SECTION = re.compile(r"^### ([A-Z]\d+) ", re.MULTILINE)
GAPS_ROW = re.compile(r"^\| ([A-Z]\d+(?:, [A-Z]\d+)*) \|", re.MULTILINE)

# Written apart so this file does not match itself.
FOREIGN = re.compile(r"\b(?:" + "THREATS|ARCHITECTURE|STYLE" + r")\b|\.\./" + "shared")
CITING_DIRS = ("agent", "hub", "protocol", "simulator", "edgefleet", "docs", "tests", "bench")
CITING_FILES = ("README.md", "Makefile", "pyproject.toml")


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def sections(text: str) -> dict[str, str]:
    """Each ``### <id> ...`` section's text, up to the next heading of any level."""
    found: dict[str, str] = {}
    for match in SECTION.finditer(text):
        rest = text[match.end() :]
        end = re.search(r"^#{1,3} ", rest, re.MULTILINE)
        found[match.group(1)] = rest[: end.start() if end else len(rest)]
    return found


def paragraph(section: str, label: str) -> str:
    """The text after ``**<label>.**`` up to the next bold label or the section's end."""
    match = re.search(rf"\*\*{label}\.\*\*(.*?)(?=\n\*\*[A-Z][a-z ]+\.\*\*|\Z)", section, re.S)
    return match.group(1) if match else ""


def gaps_table(text: str) -> set[str]:
    _, _, table = text.partition("\n## Gaps\n")
    return {i for row in GAPS_ROW.findall(table) for i in row.split(", ")}


@cache
def defined(path: str) -> frozenset[str]:
    """The node ids pytest would collect from ``path``, without parameters: ``test_*``
    functions, ``Test*`` classes and their ``test_*`` methods (``TestX::test_y``)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.add(node.name)
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, functions) and item.name.startswith("test")
            )
    return frozenset(names)


def cited() -> list[tuple[str, str]]:
    """Every (file, ``::``-path or "") the page names, in order, without duplicates."""
    seen: dict[tuple[str, str], None] = {}
    for match in NODE_ID.finditer(doc()):
        seen[(match.group(1), (match.group(2) or "").removeprefix("::"))] = None
    return list(seen)


def test_the_page_names_tests() -> None:
    assert len([c for c in cited() if c[1]]) > 100


@pytest.mark.parametrize(("path", "name"), cited(), ids=lambda v: v or "-")
def test_every_test_the_page_names_exists(path: str, name: str) -> None:
    assert (ROOT / path).is_file(), f"{path} does not exist"
    if name:
        assert name in defined(path), f"{path} defines no {name}"


def test_every_threat_and_bad_input_has_its_section() -> None:
    missing = [i for i in THREATS + BAD_INPUTS if i not in sections(doc())]
    assert missing == []


def test_every_section_names_its_tests_and_its_gaps() -> None:
    for ident, body in sections(doc()).items():
        tests = paragraph(body, "Tests")
        assert tests.strip(), f"{ident} has no Tests paragraph"
        assert "::" in tests or re.search(r"\bnone\b", tests), f"{ident} names no test"
        assert paragraph(body, "Gaps").strip(), f"{ident} has no Gaps paragraph"


def test_a_section_without_a_test_is_listed_under_gaps() -> None:
    text = doc()
    untested = {
        ident
        for ident, body in sections(text).items()
        if re.search(r"\bnone\b", paragraph(body, "Tests"))
    }
    assert untested, "the page should say where tests are missing"
    assert untested - gaps_table(text) == set()


def test_every_gap_row_names_a_section() -> None:
    text = doc()
    assert gaps_table(text) - set(sections(text)) == set()


def slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def test_every_link_within_the_page_lands_on_a_heading() -> None:
    text = doc()
    anchors = {slug(h) for h in re.findall(r"^#{2,3} (.+)$", text, re.MULTILINE)}
    assert set(re.findall(r"\]\(#([^)]+)\)", text)) - anchors == set()


def citing_files() -> list[Path]:
    files = [ROOT / name for name in CITING_FILES if (ROOT / name).is_file()]
    for top in CITING_DIRS:
        files += [
            p
            for p in sorted((ROOT / top).rglob("*"))
            if p.is_file() and p.suffix in {".py", ".md", ".toml", ".txt", ".cfg"}
        ]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def test_the_repository_cites_only_its_own_docs() -> None:
    """Docstrings, comments and docs cite docs/ (threat-model ids, architecture, decisions,
    protocol), never design notes kept outside the repository."""
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in citing_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FOREIGN.search(line)
    ]
    assert offending == []
