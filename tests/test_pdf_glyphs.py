"""A volume's PDF holds each music glyph once (issue 16): abcm2ps's note heads, clefs, accidentals,
dots and rests become PostScript forms, so ghostscript writes one Form XObject per glyph instead of
an outline per note. The pages must look the same, the text must stay searchable and the fonts
embedded, and the same volume must give the same PDF bytes.
"""

from __future__ import annotations

import re
import subprocess
import zlib

import pytest

from folkrnn.pipeline.typeset import GS_PDF, typeset_volume
from folkrnn.transforms.abc.postscript_glyphs import glyph_kind, reuse_glyphs
from folkrnn.transforms.abc.typeset_source import Entry, typeset_source
from tests.test_books import generated_table, pdf_pages

# Every glyph kind the books print: crotchets and quavers, a dotted note, minims, a semibreve,
# rests, sharp, flat, natural, double sharp and flat, a grace note, the treble and bass clefs
# (and abcm2ps's small clef for a clef change inside a line).
GLYPH_TUNES = """\
X:1
T:Glyphs
M:4/4
L:1/8
K:C
A2 B>c d4 | z2 z c ^c _B =B2 | C,4 {g}A4 | e8 | z4 z2 z z/2 z/2 | a'b'c''2 c4 |]

X:2
T:Bass
M:3/4
L:1/8
K:C clef=bass
C,2 D,2 E,2 | F,6 | ^^F,2 __B,2 z2 |]
"""


def abcm2ps(source: str, folder) -> str:
    """abcm2ps's PostScript for ``source`` (secure mode, as the books run it)."""
    abc, ps = folder / "in.abc", folder / "out.ps"
    abc.write_text(source, encoding="utf-8")
    subprocess.run(["abcm2ps", "-S", "-O", str(ps), str(abc)], capture_output=True, check=True, timeout=60)
    return ps.read_text(encoding="latin-1")


def ghostscript(postscript: str, folder, name: str, *device: str) -> bytes:
    """What ghostscript makes of ``postscript`` (the books' PDF settings unless ``device`` is given)."""
    ps, out = folder / f"{name}.ps", folder / f"{name}.out"
    ps.write_text(postscript, encoding="latin-1")
    command = ["gs", "-q", "-dBATCH", "-dNOPAUSE", "-dSAFER", *device] if device else list(GS_PDF)
    subprocess.run([*command, f"-sOutputFile={out}", str(ps)], capture_output=True, check=True, timeout=120)
    return out.read_bytes()


def page_contents(pdf: bytes) -> bytes:
    """All the PDF's Flate streams decompressed and joined (page contents, forms and fonts)."""
    parts = []
    for match in re.finditer(rb"stream\r?\n", pdf):
        try:
            parts.append(zlib.decompressobj().decompress(pdf[match.end():match.end() + 2_000_000]))
        except zlib.error:
            pass
    return b"".join(parts)


def volume(numbers) -> tuple[str, list[Entry]]:
    """A volume's ABC for the test suite's synthetic tunes, and its contents entries."""
    from folkrnn.pipeline.books import validated_table, with_titles_and_abc
    from folkrnn.transforms.abc.volume import volume_abc

    table = with_titles_and_abc(validated_table(generated_table(numbers)))
    rows = table.select(["number", "title", "meter", "mode", "tokens"]).to_pylist()
    return volume_abc(rows, 1, 1, "Test Book"), [Entry(r["number"], r["title"], r["meter"], r["mode"]) for r in rows]


def test_abcm2ps_note_heads_clefs_accidentals_dots_and_rests_become_forms(tmp_path):
    """Pinned to the installed abcm2ps: if its procedures change, this says the forms are gone."""
    rewritten, found = reuse_glyphs(abcm2ps(GLYPH_TUNES, tmp_path))
    names = {g.name for g in found}
    assert {"hd", "Hd", "HD", "ghd", "r4", "dt", "tclef", "bclef", "stclef", "sbclef",
            "sh0", "ft0", "nt0", "dsh0", "dft0"} <= names
    assert rewritten.count("execform") == len(found)


def test_the_forms_draw_exactly_the_same_page(tmp_path):
    """The same pixels, rendered without anti-aliasing, with and without the forms."""
    postscript = abcm2ps(GLYPH_TUNES, tmp_path)
    plain = ghostscript(postscript, tmp_path, "plain", "-sDEVICE=pgmraw", "-r100")
    forms = ghostscript(reuse_glyphs(postscript)[0], tmp_path, "forms", "-sDEVICE=pgmraw", "-r100")
    assert plain == forms
    assert plain.count(b"\x00") > 5000  # the page has music on it (black pixels)


def test_volume_pdf_holds_each_glyph_once_and_is_half_the_size(tmp_path):
    """The reported defect: a 24 MB volume whose pages repeat each note head's outline per note.
    The same PostScript through the books' ghostscript settings, with and without the forms."""
    abc, entries = volume(range(1, 201))
    source, _ = typeset_source(abc, "Test Book", 1, 1, entries, None)
    postscript = abcm2ps(source, tmp_path)
    plain = ghostscript(postscript, tmp_path, "plain")
    forms = ghostscript(reuse_glyphs(postscript)[0], tmp_path, "forms")
    assert len(forms) < 0.6 * len(plain), (len(forms), len(plain))
    contents = page_contents(forms)
    assert forms.count(b"/Subtype/Form") >= 5  # note heads, clef, dots, rests, accidentals: once each
    assert contents.count(b" Do") > 2000  # and drawn from there, one use per glyph
    # Curves left on the pages: slurs, ties, flags; no longer four per note head.
    assert page_contents(plain).count(b" c\n") > 2 * contents.count(b" c\n")


def test_a_typeset_volume_keeps_its_text_fonts_and_bytes(tmp_path):
    """Through typeset_volume as compile runs it: the glyphs are forms, titles are still found by
    pdftotext, the same fonts are embedded, and the same volume typeset twice (into another
    folder, under another name) is the same PDF, byte for byte: no date or random ID in it."""
    abc, entries = volume(range(1, 121))
    first, second = tmp_path / "a" / "v.pdf", tmp_path / "b" / "other-name.pdf"
    typeset = typeset_volume(abc, str(first), volume=1, n_volumes=1, book_title="Test Book", entries=entries)
    typeset_volume(abc, str(second), volume=1, n_volumes=1, book_title="Test Book", entries=entries)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().count(b"/Subtype/Form") >= 5  # ghostscript read the PostScript with the forms
    pages = pdf_pages(str(first))
    assert len(pages) == typeset.page_count
    for entry in entries[::17]:
        page = pages[typeset.pages[entry.number] - 1]
        assert f"{entry.number}. {entry.title}" in page
    fonts = subprocess.run(["pdffonts", str(first)], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in fonts.splitlines()[2:]]
    assert {row[0].split("+")[1] for row in rows} >= {"Times-Roman", "Times-Bold", "Times-Italic", "Courier"}
    assert all(row[-5:-3] == ["yes", "yes"] for row in rows)  # embedded, subset


@pytest.mark.parametrize("body", [
    "dlw x y M 3.5 1.0 RM 1.0 sub 0 exch RL stroke",  # a stem: its length is an argument
    "xymove .5 SLW 3.3 4 RM -3.4 -9.6 RL stroke x y M 3.4 4 RM r8e",  # sets a line width, strokes
    "xymove -3.5 0 RM currentpoint 7 3 rectfill",  # a rectangle: shorter than a form's use
    "M 3 copy RL neg 0 exch RL neg exch neg exch RL 0 exch RL fill",  # a beam: shaped by its arguments
    "2 copy 9 add M currentpoint 1.2 0 360 arc 15 add M currentpoint 1.2 0 360 arc fill",
])
def test_procedures_that_are_not_fixed_shapes_are_left_alone(body):
    assert glyph_kind(body) is None


def test_postscript_without_an_abcm2ps_setup_comes_back_unchanged():
    text = "%!PS\n/hd{xymove 1 2 RM 3 4 RL fill}!\nshowpage\n"
    assert reuse_glyphs(text) == (text, [])
