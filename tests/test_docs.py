"""Documentation that is generated from the code must match the code."""

from __future__ import annotations

from pathlib import Path

from xmppspy.filters import atoms_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_atom_table_in_docs_filters_is_the_registry() -> None:
    assert atoms_markdown() in (DOCS / "filters.md").read_text()
