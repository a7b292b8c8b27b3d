"""Avatars for whoever speaks on the page, drawn locally as small SVG files.

Chainlit serves `/avatars/<author>` from `public/avatars/`, so a file written there
before the author's first message is all it takes; nothing is fetched from elsewhere.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from xml.sax.saxutils import escape

# Chainlit refuses any other avatar name with a 400, so such authors keep its placeholder.
SERVABLE_NAME = re.compile(r"^[a-zA-Z0-9_ .-]+$")
COLORS = ("#4f46e5", "#0891b2", "#059669", "#d97706", "#dc2626", "#7c3aed", "#db2777", "#0d9488", "#2563eb")


def avatar_file_stem(author: str) -> str:
    """The name Chainlit looks for: it lowercases the author and turns spaces and dots into underscores."""
    return author.strip().lower().replace(" ", "_").replace(".", "_")


def initials(author: str) -> str:
    words = [w for w in re.split(r"[\s_.-]+", author) if w]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:1].upper()
    return (words[0][:1] + words[1][:1]).upper()


def avatar_svg(author: str) -> str:
    # The colour follows from the name, so an agent looks the same in every tab and every run.
    digest = hashlib.sha256(author.encode("utf-8")).digest()
    color = COLORS[digest[0] % len(COLORS)]
    letters = escape(initials(author))
    size = 34 if len(letters) == 1 else 28
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
        f'<circle cx="32" cy="32" r="32" fill="{color}"/>'
        '<text x="32" y="33" text-anchor="middle" dominant-baseline="central" fill="#ffffff" '
        f"font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif\" "
        f'font-size="{size}" font-weight="600">{letters}</text></svg>'
    )


def ensure_avatar(avatars_dir: Path, author: str) -> None:
    """Write the author's avatar unless there is one already (a file put there by hand wins)."""
    if not SERVABLE_NAME.match(author):
        return
    stem = avatar_file_stem(author)
    if any(avatars_dir.glob(f"{stem}.*")):
        return
    avatars_dir.mkdir(parents=True, exist_ok=True)
    (avatars_dir / f"{stem}.svg").write_text(avatar_svg(author), encoding="utf-8")
