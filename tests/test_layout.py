"""docs/layout.md ("How the code is laid out") agrees with the tree, both ways: every module it
names exists under src/, and every module and package under src/wakesleep has its line.  And the
API reference (docs/api/*.md) documents every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LAYOUT = (ROOT / "docs" / "layout.md").read_text()


def listed() -> list[str]:
    """The paths the page names, one a line: ``- `wakesleep/x.py`: ...`` or ``- `wakesleep/pkg/`: ...``."""
    return re.findall(r"^- `(wakesleep/[^`]*)`:", LAYOUT, flags=re.M)


def in_tree() -> set[str]:
    """Every module under src/wakesleep, a package standing for its own __init__.py."""
    out = set()
    for path in (SRC / "wakesleep").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(SRC)
        if rel.name == "__init__.py" and rel.parent != Path("wakesleep"):
            out.add(rel.parent.as_posix() + "/")
        else:
            out.add(rel.as_posix())
    return out


def test_every_module_the_layout_names_exists():
    names = listed()
    assert len(names) == len(set(names)), "a module listed twice"
    missing = [n for n in names if not (SRC / n / "__init__.py" if n.endswith("/") else SRC / n).is_file()]
    assert not missing, f"docs/layout.md names modules that do not exist: {missing}"


def test_every_module_of_the_tree_has_its_line():
    unlisted = sorted(in_tree() - set(listed()))
    assert not unlisted, f"modules missing from docs/layout.md: {unlisted}"


def test_the_api_reference_documents_every_module():
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (wakesleep[\w.]*)\s*$", page.read_text(), flags=re.M))
    dotted = {n.removesuffix("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in in_tree()}
    undocumented = sorted(dotted - documented - {"wakesleep.__main__"})
    assert not undocumented, f"modules missing from the API reference (docs/api/*.md): {undocumented}"
