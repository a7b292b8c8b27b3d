"""`python -m roundtable` is the `roundtable` command."""

from roundtable.cli import main_entry

main_entry()
