"""``folkrnn serve`` in a real browser: Debian's chromium, headless, loads a tune page.

What the browser built from the page (``--dump-dom``) must hold the notation drawn as SVG and an
audio element whose source is a playable Ogg file; a screenshot is saved in the test's folder and
must show the notation (dark pixels where the sheet is). The Makefile installs chromium (sysdeps).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest

# the datasets and the served app: test_serve's fixtures
from tests.test_serve import data, get, server  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed and could not be: run make "
                                                         "sysdeps as root, or apt-get install chromium")
WIDTH, HEIGHT = 1100, 1400


def chromium(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    """Headless chromium with a profile of its own in ``tmp_path`` (root needs --no-sandbox)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
               *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_tune_page_draws_its_notation_and_has_playable_audio_in_chromium(server, tmp_path):  # noqa: F811
    host, port, _ = server
    address = f"http://{host}:{port}/tune?d=books-corpus&n=12"
    dom = chromium(tmp_path, "--dump-dom", address)
    assert dom.returncode == 0, dom.stderr[-2000:]
    svg = re.search(r"<svg[^>]*notation.*?</svg>", dom.stdout, re.S)
    assert svg, dom.stdout[:2000]
    assert svg.group(0).count("<path") + svg.group(0).count("<use") > 50  # staves, notes, clefs
    source = re.search(r'<audio[^>]*src="([^"]+)"', dom.stdout)
    assert source and source.group(1).startswith("/tune.ogg?")
    status, headers, audio = get(server, html.unescape(source.group(1)))
    assert status == 200 and headers["Content-Type"] == "audio/ogg" and audio[:4] == b"OggS" and len(audio) > 10_000

    screenshot = tmp_path / "tune-page.png"
    shot = chromium(tmp_path, f"--screenshot={screenshot}", address)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    from PIL import Image

    image = Image.open(screenshot).convert("L")
    assert image.size == (WIDTH, HEIGHT)
    # the sheet sits under the title and the key menu: its staves and notes are dark on white
    sheet = image.crop((60, 250, WIDTH - 60, 650))
    dark = sum(1 for value in sheet.getdata() if value < 100)
    assert dark > 5000, f"{dark} dark pixels where the notation should be ({screenshot})"
    assert os.path.getsize(screenshot) > 20_000
