"""The tutorial's host: `python3 host.py --host-address "localhost:5000"` (or the address alone)."""

import sys

from roundtable.cli import tutorial_host

if __name__ == "__main__":
    sys.exit(tutorial_host())
