"""abcm2ps's music glyphs as PostScript forms, so that a volume's PDF holds each glyph's outline once.

abcm2ps draws every note head, clef, accidental, dot and rest as an outline filled in place (e.g.
``/hd{... gsave T -7.4 0 T .02 dup scale uhd ufill grestore}!``), and ghostscript's pdfwrite copies
the outline into the page content at each use. A volume of 3,000 tunes draws some 200,000 note
heads, 13,000 clefs and 14,000 dots: half of its 24 MB PDF was copies of a dozen shapes, and
compressing those copies was a third of ghostscript's time.

``reuse_glyphs`` adds definitions after abcm2ps's own setup that paint the same procedures through
``execform``: pdfwrite writes each form once, as a PDF Form XObject, and each use as
``q <matrix> cm /R12 Do Q``. The drawing is abcm2ps's own procedure, run once at the origin, so
the page looks the same (vector outlines, same shapes, same places). Only procedures whose
drawing is a filled outline placed relative to their point are rewritten, recognised by the
exact words of their bodies; anything else abcm2ps defines is left as it is, and PostScript
without an abcm2ps setup comes back unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SETUP_END = "%%EndSetup\n"
# ``/name{body}!`` (abcm2ps's bind def); a body's later lines never start with ``/``.
_DEFINITION = re.compile(r"^/(\w+)\{((?:[^\n]|\n(?!/))*?)\}!$", re.MULTILINE)
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)$")
_SETS_XY = "/x 2 index def/y 1 index def"
# ``x y NAME``: an outline scaled and placed at x y (clefs, accidentals, the black note head).
_OUTLINE = re.compile(r"gsave T \S+ \S+ T \S+ dup scale \w+ ufill grestore")
# ``x y NAME``: sets abcm2ps's current note x y, then a path of relative moves, filled (hollow
# note heads, grace note heads, the crotchet rest). ``x y M RM ...`` takes an offset from x y (dots).
_RELATIVE_PATH = {"RM", "RL", "RC", "closepath", "fill"}
_DOT_PATH = {"RM", "currentpoint", "arc", "fill"}
# A form's bounding box is a clip; this one holds the whole page wherever the glyph is, so
# ghostscript writes no clip path at each use (a tight box would add one per glyph).
_FORM_BBOX = "[-10000 -10000 10000 10000]"


@dataclass(frozen=True)
class Glyph:
    """An abcm2ps procedure drawing a fixed filled shape, and how it takes its position."""

    name: str
    placed: str  # "at" (x y), "at_note" (x y, and sets abcm2ps's x y), "from_note" (dx dy from x y)


def _words(body: str) -> list[str]:
    return body.split()


def _only(words: list[str], allowed: set[str]) -> bool:
    return bool(words) and all(w in allowed or _NUMBER.match(w) for w in words) and "fill" in words


def glyph_kind(body: str) -> str | None:
    """How a procedure body draws, when it is a fixed filled shape that a form can repeat."""
    text = " ".join(body.split())
    sets_xy = text.startswith(_SETS_XY)
    rest = text[len(_SETS_XY):].strip() if sets_xy else text
    if _OUTLINE.fullmatch(rest):
        return "at_note" if sets_xy else "at"
    words = _words(text)
    if words[:1] == ["xymove"] and _only(words[1:], _RELATIVE_PATH):
        return "at_note"
    if words[:4] == ["x", "y", "M", "RM"] and _only(words[4:], _DOT_PATH):
        return "from_note"
    return None


def glyphs(setup: str) -> list[Glyph]:
    """The procedures of abcm2ps's setup that ``reuse_glyphs`` turns into forms."""
    found = []
    for match in _DEFINITION.finditer(setup):
        kind = glyph_kind(match.group(2))
        if kind:
            found.append(Glyph(match.group(1), kind))
    return found


def _form_definitions(glyph: Glyph) -> str:
    """PostScript: the original procedure kept, its form, and the procedure redefined to use it."""
    name = glyph.name
    original, form = f"folkrnn_glyph_{name}", f"folkrnn_form_{name}"
    if glyph.placed == "from_note":
        # Painted once, at the origin: x y are 0 while it runs, then what they were.
        paint = f"pop x y /x 0 def /y 0 def 0 0 {original} /y exch def /x exch def"
        use = f"y add exch x add exch gsave translate {form} execform grestore"
    else:
        paint = f"pop 0 0 {original}"
        use = f"gsave translate {form} execform grestore"
        if glyph.placed == "at_note":
            # The procedure sets abcm2ps's x y, which the next drawing (a stem) reads.
            use = f"2 copy {use} /y exch def /x exch def"
    return (f"/{original} /{name} load def\n"
            f"/{form} << /FormType 1 /BBox {_FORM_BBOX} /Matrix [1 0 0 1 0 0] /PaintProc {{{paint}}} >> def\n"
            f"/{name} {{{use}}} bind def\n")


def reuse_glyphs(postscript: str) -> tuple[str, list[Glyph]]:
    """``postscript`` (abcm2ps's) with its fixed glyphs drawn as forms, and those glyphs."""
    end = postscript.find(_SETUP_END)
    if end < 0:
        return postscript, []
    found = glyphs(postscript[:end])
    if not found:
        return postscript, []
    added = "% folkrnn: glyphs as forms, written once in the PDF\n" + "".join(_form_definitions(g) for g in found)
    return postscript[:end] + added + postscript[end:], found
