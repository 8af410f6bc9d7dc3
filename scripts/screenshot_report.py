"""Render an l0tre HTML report in a real headless browser (Debian's ``chromium``) to a PNG.

    python scripts/screenshot_report.py report.html shot.png [--width 1400] [--height 3000]

Install the browser with ``apt-get install -y chromium``. The browser runs with networking and
every background service off, so a report that needed the network would show its gaps here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("error: no chromium found (apt-get install -y chromium)")


def screenshot(html: Path, png: Path, width: int, height: int, timeout: float = 120.0) -> None:
    """Load ``html`` from disk in headless Chromium and save the viewport ``width x height`` to ``png``."""
    with tempfile.TemporaryDirectory(prefix="l0tre-chromium-") as profile:
        cmd = [
            find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
            f"--window-size={width},{height}", html.resolve().as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png.is_file():
        sys.exit(f"error: chromium failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:] or ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=3000)
    args = ap.parse_args()
    if not args.html.is_file():
        sys.exit(f"error: no such report: {args.html}")
    screenshot(args.html, args.png, args.width, args.height)
    print(f"screenshot written to {args.png}")


if __name__ == "__main__":
    main()
