"""A tune's notation, audio and MIDI, made on the server by the tools that make the books.

* Notation: abcm2ps (``-g``: one SVG a tune) in secure mode (``-S``), the typesetting of the PDF
  books. The SVG goes into the page, so it is parsed as XML and only drawing elements and
  attributes are kept (no script, no foreign content, no link outside the SVG, no comment).
* Audio: ``folkrnn play``'s rendering (``pipeline.play.render``: abc2midi, then fluidsynth with
  Debian's General MIDI soundfont) into Ogg Vorbis.
* MIDI: abc2midi, as ``compile --midi`` writes a tune's file (``pipeline.midi.tune_midi``).

Each file is made once per printed tune and kept in a cache folder (named by a hash of the ABC)
that the server removes when it stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict

from folkrnn.pipeline.play import SOUNDFONT, render
from folkrnn.pipeline.subprocesses import missing_tools, missing_tools_text, run_tool
from folkrnn.transforms.abc.playback import MELODY_PROGRAM

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# What abcm2ps draws with; any other element (and what is inside it) is dropped.
SVG_ELEMENTS = frozenset({"svg", "g", "defs", "path", "text", "tspan", "use", "title", "desc", "style", "circle",
                          "ellipse", "line", "rect", "polyline", "polygon", "symbol"})
ABCM2PS_TIMEOUT = 30  # seconds, one tune
SVG_CACHED = 256  # drawings kept in memory


class MediaError(Exception):
    """A tool could not make a tune's notation, audio or MIDI: the page says so."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def clean_svg(text: str) -> str:
    """abcm2ps's SVG reduced to drawing: parsed as XML (comments, processing instructions and the
    DOCTYPE go), elements outside ``SVG_ELEMENTS`` removed, event attributes and outside links
    removed; sized to the width of the page (a viewBox from its width and height)."""
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    # abcm2ps writes each comment on a line of its own; a title holding "--" would make one invalid XML
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("<!--")]
    try:
        root = ET.fromstring("\n".join(lines))
    except ET.ParseError as err:
        raise MediaError(f"abcm2ps's drawing could not be read: {err}") from None
    if root.tag != f"{{{SVG_NS}}}svg":
        raise MediaError("abcm2ps's drawing is not an SVG")
    _clean_element(root)
    width, height = (root.attrib.get(a, "").removesuffix("px") for a in ("width", "height"))
    try:
        root.set("viewBox", f"0 0 {float(width):g} {float(height):g}")
    except ValueError:
        pass
    root.attrib.pop("width", None)
    root.attrib.pop("height", None)
    root.set("class", "notation")
    root.set("role", "img")
    return ET.tostring(root, encoding="unicode")


def _clean_element(element: ET.Element) -> None:
    for child in list(element):
        local = child.tag.split("}")[-1] if isinstance(child.tag, str) else ""
        if not isinstance(child.tag, str) or not child.tag.startswith(f"{{{SVG_NS}}}") or local not in SVG_ELEMENTS:
            element.remove(child)
            continue
        _clean_element(child)
    for name in list(element.attrib):
        local = name.split("}")[-1].lower()
        value = element.attrib[name]
        if (local.startswith("on") or (local == "href" and not value.startswith("#"))
                or (local == "style" and ("url(" in value.lower() or "expression" in value.lower()))):
            del element.attrib[name]


class Media:
    """Makes and caches notation, audio and MIDI for printed tunes; ``close`` removes the cache."""

    def __init__(self, soundfont: str | None = None) -> None:
        self.soundfont = soundfont or SOUNDFONT
        self.folder = tempfile.mkdtemp(prefix="folkrnn-serve-")
        self._svg: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- what the machine can do ------------------------------------------------------------------
    def notation_missing(self) -> str | None:
        missing = missing_tools("abcm2ps")
        return missing_tools_text(missing) if missing else None

    def audio_missing(self) -> str | None:
        """Why audio cannot be made here (None: it can)."""
        missing = missing_tools("abc2midi", "fluidsynth")
        if missing:
            return missing_tools_text(missing)
        if not os.path.isfile(self.soundfont):
            return f"no soundfont at {self.soundfont} (apt-get install fluid-soundfont-gm)"
        return None

    def midi_missing(self) -> str | None:
        missing = missing_tools("abc2midi")
        return missing_tools_text(missing) if missing else None

    # --- the files ----------------------------------------------------------------------------------
    def notation(self, abc: str) -> str:
        """The tune drawn by abcm2ps, as cleaned SVG markup for the page."""
        digest = _digest(abc)
        with self._lock:
            if digest in self._svg:
                self._svg.move_to_end(digest)
                return self._svg[digest]
        problem = self.notation_missing()
        if problem:
            raise MediaError(problem)
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".svg-") as work:
            source = os.path.join(work, "tune.abc")
            with open(source, "w", encoding="utf-8") as handle:
                handle.write(abc)
            proc = run_tool(["abcm2ps", "-S", "-g", "-O", os.path.join(work, "tune"), source], ABCM2PS_TIMEOUT)
            drawn = sorted(f for f in os.listdir(work) if f.endswith(".svg"))
            if not drawn:
                detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                raise MediaError(f"abcm2ps drew nothing: {detail[0]}")
            with open(os.path.join(work, drawn[0]), encoding="utf-8", errors="replace") as handle:
                svg = clean_svg(handle.read())
        with self._lock:
            self._svg[digest] = svg
            while len(self._svg) > SVG_CACHED:
                self._svg.popitem(last=False)
        return svg

    def audio(self, abc: str, number: int) -> str:
        """The path of the tune's Ogg Vorbis file (rendered on the first request)."""
        path = os.path.join(self.folder, f"{_digest(abc)}.ogg")
        if not os.path.exists(path):
            problem = self.audio_missing()
            if problem:
                raise MediaError(problem)
            try:
                render(abc, number, path, "oga", MELODY_PROGRAM, self.soundfont)
            except RuntimeError as err:
                raise MediaError(str(err)) from None
        return path

    def midi(self, abc: str, number: int) -> str:
        """The path of the tune's MIDI file (made on the first request)."""
        path = os.path.join(self.folder, f"{_digest(abc)}.mid")
        if not os.path.exists(path):
            problem = self.midi_missing()
            if problem:
                raise MediaError(problem)
            try:
                render(abc, number, path, None, MELODY_PROGRAM, self.soundfont)
            except RuntimeError as err:
                raise MediaError(str(err)) from None
        return path

