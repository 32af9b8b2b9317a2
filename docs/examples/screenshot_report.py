"""Screenshot an HTML report in headless Chromium (how docs/report.png is made).

    .venv/bin/pasarela compare scenarios/library/pisee-2015*.toml --report out/compare.html
    .venv/bin/python docs/examples/screenshot_report.py out/compare.html docs/report.png

Needs Debian's chromium (``make browser``) and playwright (a test dependency).
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import FloatRect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main(report: Path, png: Path, *, height: int = 2300) -> None:
    """The page from its charts down (the tables above them are text anyway)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.resolve().as_uri(), wait_until="load")
            top = page.evaluate(
                "() => document.querySelector('figure').closest('section')"
                ".getBoundingClientRect().top + window.scrollY"
            )
            clip: FloatRect = {"x": 0, "y": max(0, top - 16), "width": 1280, "height": height}
            page.screenshot(path=str(png), full_page=True, clip=clip)
        finally:
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
