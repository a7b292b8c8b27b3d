"""A tool whose answer no model can guess: tests check that a reply quotes it."""

from __future__ import annotations

#: Made up, so a model that quotes it must have called the tool.
CODE_WORD = "QUILLFISH-2071"


def entry_code(harbour: str) -> str:
    """Today's entry code for a harbour: a ship must radio it before it may enter."""
    return f"The entry code for {harbour} today is {CODE_WORD}."
