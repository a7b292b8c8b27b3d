"""The tutorial's page: `python3 ui.py --host-address "localhost:5000"` (or the address alone).

It shows the writer and editor of seed mode as they talk, on http://127.0.0.1:8000.
"""

import sys

from roundtable.ui import tutorial_ui

if __name__ == "__main__":
    sys.exit(tutorial_ui())
