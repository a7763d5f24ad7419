"""How the browser tests and the viewer benchmark start Debian's Chromium headless: no GPU, no network of its own
(without the background-networking flags it opens connections this machine refuses)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
