"""Volumes: numbering, byte-identical ABC, what abcm2ps/abc2midi/music21 read, the PDF's contents.

The test datasets are made here: eight hand-written tunes (a jig, reel, hornpipe, waltz, polka,
slip jig, slide and a three-two hornpipe, all valid), varied deterministically per tune number
(pitches moved by a step or two, the mode changed) and, for some numbers, broken the way model
output breaks (a bar one note short, a tune cut off by the length limit).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from folkrnn.schemas.tables import CORPUS, FINDINGS, GENERATED, VALIDATED, findings_table
from folkrnn.schemas.vocab import encode
from folkrnn.transforms.abc.tokenize import detokenize
from folkrnn.transforms.titles import title_for
from folkrnn.transforms.tune_types import classify

BASES = (
    # double jig, AABB with a pickup
    "M:6/8 K:Cmaj |: G | c 2 c e d c | d 2 d f e d | c 2 c e d c | B G A B c d | "
    "c 2 c e d c | d 2 d f e d | e f g f e d | c 3 c 2 :| |: g | g 2 e c 2 e | g 2 e c 2 e | "
    "f 2 d B 2 d | f 2 d B 2 d | g 2 e c 2 e | g a g f e d | e f g f e d | c 3 c 2 :|",
    # reel
    "M:4/4 K:Cdor |: c 2 G c E c G c | B 2 F B D B F B | c 2 G c E c G c | B c d e f d B d | "
    "c 2 G c E c G c | B 2 F B D B F B | G 2 c d e f g e | f d B d c 4 :| "
    "|: g 2 e g f 2 d f | e c G c B G F D | g 2 e g f 2 d f | e g f d c 4 | "
    "g 2 e g f 2 d f | e c G c B G F D | E F G A B c d B | c G E G c 4 :|",
    # hornpipe: broken rhythms, first and second endings
    "M:4/4 K:Cmaj |: G > F | E > G c > e g > e c > G | A > c f > a g > e c > A | G > c e > g f > d B > G | "
    "A > F D > F G 2 G > F | E > G c > e g > e c > G | A > c f > a g > e c > A | G > c e > g f > d B > G |1 "
    "c 2 e 2 c 2 :| |2 c 2 e 2 c 2 |: e > f | g > e c > e g > e c > e | f > d B > d f > d B > d | "
    "g > e c > e g > a g > f | e > c d > B c 2 e > f | g > e c > e g > e c > e | f > d B > d f > d B > d | "
    "G > c e > g f > d B > G |1 c 2 e 2 c 2 :| |2 c 2 e 2 c 4 |",
    # waltz
    "M:3/4 K:Cmin |: G 2 | c 3 d e c | B 3 c d B | G 2 c 2 e 2 | d 4 G 2 | c 3 d e c | B 3 c d B | "
    "G 2 F 2 D 2 | C 4 :| |: e 2 | g 3 f e d | c 4 e 2 | f 3 e d c | B 4 d 2 | e 3 d c B | A 4 F 2 | "
    "G 2 F 2 D 2 | C 4 :|",
    # polka
    "M:2/4 K:Cmaj |: c > d e c | d B G 2 | c > d e g | f d d 2 | c > d e c | d B G 2 | E G F D | C 2 C 2 :| "
    "|: g f e g | f e d 2 | e d c e | d c B 2 | g f e g | f e d f | e d c B | c 2 c 2 :|",
    # slip jig, with accidentals
    "M:9/8 K:Cmix |: G c c c 2 d e d c | G c c c 2 d e 2 f | G c c c 2 d e d c | B _B G F 2 G A 2 G :| "
    "|: g 2 e f 2 d e d c | g 2 e f 2 d e 2 f | g 2 e f 2 d e d c | B _B G F 2 G A 2 G :|",
    # slide
    "M:12/8 K:Cmaj |: e 2 c c 2 d e 2 f g 2 e | d 2 B B 2 c d 2 e f 2 d | e 2 c c 2 d e 2 f g 2 a | "
    "g 2 e d 2 B c 3 c 3 :| |: g 2 a g 2 e c 2 d e 2 f | g 2 a g 2 e d 3 d 3 | g 2 a g 2 e c 2 d e 2 f | "
    "g 2 e d 2 B c 3 c 3 :|",
    # three-two hornpipe: a triplet and a chord
    "M:3/2 K:Cdor |: c 2 G 2 E 2 G 2 c 2 d 2 | e 2 d c B 2 G 2 B 2 d 2 | c 2 G 2 E 2 G 2 (3 c d e f 2 | "
    "g 2 f e d 2 B 2 [ C c ] 4 :| |: g 4 e 2 g 2 f 2 d 2 | e 4 c 2 e 2 d 2 B 2 | g 4 e 2 g 2 f 2 d 2 | "
    "e 2 d c B 2 G 2 c 4 :|",
)
_LETTERS = "CDEFGAB"
_PLAIN = [x + "," for x in _LETTERS] + list(_LETTERS) + [x.lower() for x in _LETTERS] + [x.lower() + "'" for x in _LETTERS]
_INDEX = {t: i for i, t in enumerate(_PLAIN)}
_MODES = ("maj", "min", "dor", "mix")


def tune_tokens(number: int) -> tuple[list[str], bool]:
    """A tune for ``number`` (same number, same tune) and whether it counts as truncated.

    Numbers 3 mod 20 lose a note (bar_too_short); 11 mod 20 are cut off (truncated); others are valid.
    """
    rng = random.Random(int(hashlib.sha1(str(number).encode()).hexdigest()[:12], 16))
    tokens = []
    for token in BASES[number % len(BASES)].split():
        if token in _INDEX and rng.random() < 0.3:
            token = _PLAIN[min(max(_INDEX[token] + rng.choice((-2, -1, 1, 2)), 4), 25)]
        tokens.append(token)
    tokens[1] = "K:C" + _MODES[rng.randrange(4)]
    if number % 20 == 3:
        bar = [i for i, t in enumerate(tokens) if t == "|"][2]
        del tokens[bar - 1]
    elif number % 20 == 11:
        return tokens[: len(tokens) * 2 // 3], True
    return tokens, False


def generated_table(numbers, findings: bool = True, titles: bool = True) -> pa.Table:
    """Rows as ``folkrnn generate`` writes them (GENERATED), with the findings when ``findings``."""
    rows = []
    for n in numbers:
        tokens, truncated = tune_tokens(n)
        meter, mode = tokens[0][2:], tokens[1][3:]
        title = title_for(n, meter) if titles else None
        rows.append({
            "number": n, "seed": 1000 + n, "temperature": 1.0, "prime": "", "checkpoint_id": "test-checkpoint",
            "meter": meter, "mode": mode, "title": title, "tokens": tokens, "token_ids": encode(tokens),
            "length": len(tokens), "truncated": truncated, "abc": detokenize(tokens, number=n, title=title or ""),
        })
    table = pa.Table.from_pylist(rows, schema=GENERATED)
    if not findings:
        return table
    from folkrnn.transforms.validator import validate_tokens

    found = findings_table([validate_tokens(r["tokens"], r["truncated"]) for r in rows])
    for f in FINDINGS:
        table = table.append_column(f, found.column(f.name))
    return table.cast(VALIDATED)


def write_dataset(path: str, numbers, shards: int = 3, **kwargs) -> str:
    """A generated dataset folder: ``path/part-0000N.parquet``, tunes dealt out to the shards."""
    table = generated_table(list(numbers), **kwargs)
    os.makedirs(path, exist_ok=True)
    for k in range(shards):
        pq.write_table(table.take(list(range(k, table.num_rows, shards))), os.path.join(path, f"part-{k:05d}.parquet"))
    return path


# --- helpers for running the commands ------------------------------------------------------------
def compile_args(*argv: str):
    import argparse

    from folkrnn.pipeline import compile as compile_command

    parser = argparse.ArgumentParser()
    compile_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_compile(*argv: str) -> int:
    from folkrnn.pipeline import compile as compile_command

    return compile_command.run(compile_args(*argv))


def pdf_pages(pdf: str) -> list[str]:
    """The PDF's text, one string per page (pdftotext -layout)."""
    out = subprocess.run(["pdftotext", "-layout", pdf, "-"], capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.split("\f")[:-1] if out.stdout.endswith("\f") else out.stdout.split("\f")


CONTENTS_ENTRY = re.compile(r"^\*?\s*(\d+) (.+?)\.*\s(\d+/\d+|-)\s+([A-G][#b]?(?:maj|min|dor|mix)|-)\s+(\d+)$")


def book_title(number: int) -> str:
    """The title a book gives tune ``number``: ``title_for`` with the tune's type as its last word."""
    tokens = tune_tokens(number)[0]
    return title_for(number, tokens[0][2:], classify(tokens).name)


def contents_entries(pages: list[str]) -> dict[int, tuple[str, str, str, int]]:
    """number -> (title, meter, key, page) read from the contents pages' text (two columns a line)."""
    entries = {}
    for text in pages:
        if "Contents" not in text:
            continue
        for line in text.splitlines():
            for cell in re.split(r"\s{4,}(?=\*?\s*\d+ \S)", line.strip()):
                match = CONTENTS_ENTRY.match(cell)
                if match:
                    number, title, meter, key, page = match.groups()
                    entries[int(number)] = (title.rstrip("."), meter, key, int(page))
    return entries


# --- volume numbering, titles and the ABC text ---------------------------------------------------
def test_volume_ranges_cut_numbers_into_continuous_runs():
    from folkrnn.pipeline.books import volume_ranges

    ranges = volume_ranges(range(1, 30001))
    assert len(ranges) == 10
    assert ranges[0] == (1, 3000) and ranges[1] == (3001, 6000) and ranges[-1] == (27001, 30000)
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    assert volume_ranges([9, 3, 5, 1, 7], per_volume=2) == [(1, 3), (5, 7), (9, 9)]  # any order, gaps kept
    assert volume_ranges(range(1, 7002), per_volume=3000)[-1] == (6001, 7001)
    with pytest.raises(ValueError, match="5 appears more than once"):
        volume_ranges([1, 5, 5])
    with pytest.raises(ValueError):
        volume_ranges([1], per_volume=0)


def test_volume_stems_are_zero_padded_and_defaults_agree():
    from folkrnn.pipeline import books, compile

    assert (compile.PER_VOLUME, compile.DEFAULT_BOOK_TITLE) == (books.PER_VOLUME, books.DEFAULT_BOOK_TITLE)
    volume_stem = books.volume_stem

    assert volume_stem(3, 10) == "folkrnn-volume-03"
    assert volume_stem(7, 120) == "folkrnn-volume-007"


def test_titles_are_deterministic_and_fit_the_meter():
    from folkrnn.transforms.titles import TYPES

    assert title_for(488, "6/8") == title_for(488, "6/8")
    assert title_for(488, "6/8").split()[:3] == title_for(488, "3/4").split()[:3]  # same words, other type
    assert any(title_for(488, "6/8").endswith(kind) for kind in TYPES["6/8"])
    assert title_for(488).endswith("Tune")
    assert len({title_for(n) for n in range(1, 201)}) > 180
    assert all(t.startswith("The ") and t.isascii() for t in (title_for(n, "4/4") for n in range(1, 1000)))


def test_volume_abc_is_abc_2_1_with_one_block_per_tune():
    from folkrnn.transforms.abc.volume import tune_start_lines, volume_abc

    rows = [{"number": n, "title": title_for(n), "tokens": tune_tokens(n)[0]} for n in (5, 6, 7, 488)]
    text = volume_abc(rows, 2, 10, "Book")
    assert text.startswith("%abc-2.1\n% Book, Volume 2 of 10: tunes 5-488 (4 tunes)\n")
    blocks = text.split("\n\n")[1:]
    assert len(blocks) == 4
    for row, block in zip(rows, blocks):
        lines = block.strip("\n").split("\n")
        kind = classify(row["tokens"])
        assert lines[:7] == [f"X:{row['number']}", f"T:{row['title']}", f"R:{kind.name}", f"M:{row['tokens'][0][2:]}",
                             "L:1/8", f"Q:{kind.tempo}", f"K:{row['tokens'][1][2:]}"]
        # the book adds R:, Q: and a final bar line to what detokenize writes, nothing else
        plain = detokenize(row["tokens"], number=row["number"], title=row["title"]).strip("\n").split("\n")
        book = [line for line in lines if not line.startswith(("R:", "Q:"))]
        assert book[:-1] == plain[:-1] and book[-1].startswith(plain[-1].rstrip("|")) and book[-1].endswith(("|]", ":|"))
    assert volume_abc(rows, 2, 10, "Book") == text
    assert tune_start_lines(text)[1] == [5, 6, 7, 488]


def test_rebuilding_gives_byte_identical_abc_and_corpus_abc_matches(tmp_path):
    """Same tunes, shards cut differently (so rows arrive in another order), two builds: same bytes."""
    first = write_dataset(str(tmp_path / "a"), range(1, 251), shards=2)
    second = write_dataset(str(tmp_path / "b"), range(250, 0, -1), shards=5)
    for data, out in ((first, "out1"), (second, "out2")):
        assert run_compile(data, "--out", str(tmp_path / out), "--per-volume", "100", "--no-pdf", "--quiet") == 0
    for k in (1, 2, 3):
        one = (tmp_path / "out1" / "volumes" / f"folkrnn-volume-0{k}.abc").read_bytes()
        two = (tmp_path / "out2" / "volumes" / f"folkrnn-volume-0{k}.abc").read_bytes()
        assert one == two
    text = (tmp_path / "out1" / "volumes" / "folkrnn-volume-02.abc").read_text()
    assert re.findall(r"^X:(\d+)$", text, re.MULTILINE) == [str(n) for n in range(101, 201)]
    corpus = ds.dataset(str(tmp_path / "out1" / "corpus"), partitioning="hive").to_table()
    assert corpus.num_rows == 250
    row = corpus.filter(pc.field("number") == 150).to_pylist()[0]
    assert row["volume"] == 2 and row["page"] is None  # no PDF, no pages
    assert "\n" + row["abc"] in text


# --- abcm2ps, abc2midi and music21 read what we write --------------------------------------------
def valid_sample(count: int) -> list[int]:
    return [n for n in range(1, 4 * count) if tune_tokens(n)[1] is False and n % 20 not in (3, 11)][:count]


def test_tools_read_valid_tunes_without_error(tmp_path):
    import music21

    from folkrnn.transforms.abc.volume import volume_abc
    from folkrnn.transforms.validator import validate_tokens

    numbers = valid_sample(48)  # six of each kind of tune
    rows = [{"number": n, "title": title_for(n), "tokens": tune_tokens(n)[0]} for n in numbers]
    assert all(validate_tokens(r["tokens"]).valid for r in rows)
    path = tmp_path / "sample.abc"
    path.write_text(volume_abc(rows, 1, 1, "Sample"))
    ps = subprocess.run(["abcm2ps", "-S", "-O", str(tmp_path / "sample.ps"), str(path)], capture_output=True,
                        text=True, timeout=60)
    assert ps.returncode == 0, ps.stderr
    assert ": error:" not in ps.stderr, ps.stderr
    # plain abcm2ps (no compile layout) only remarks on its own line justification
    warnings = [line for line in ps.stderr.splitlines() if ": warning:" in line]
    assert all("Line underfull" in line for line in warnings), warnings
    midi = subprocess.run(["abc2midi", "sample.abc"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert midi.returncode == 0
    assert not [line for line in midi.stdout.splitlines() if line.startswith(("Error", "Warning"))], midi.stdout
    assert len(list(tmp_path.glob("sample*.mid"))) == len(numbers)
    for row in rows[:8]:  # one of each kind
        score = music21.converter.parse(detokenize(row["tokens"], number=row["number"], title=row["title"]),
                                        format="abc")
        meter = score.recurse().getElementsByClass("TimeSignature").first()
        assert meter.ratioString == row["tokens"][0][2:]
        assert len(score.recurse().notes) > 20


# --- a 3,000-tune volume as a PDF ----------------------------------------------------------------
@pytest.fixture(scope="module")
def big_volume(tmp_path_factory):
    """3,000 tunes (10% of them invalid) compiled to one volume with its PDF; the PDF's text."""
    root = tmp_path_factory.mktemp("big")
    data = write_dataset(str(root / "generated"), range(1, 3001), shards=3)
    out = root / "out"
    assert run_compile(data, "--out", str(out), "--title", "Test Book", "--quiet") == 0
    stem = out / "volumes" / "folkrnn-volume-01"
    report = json.loads((stem.with_suffix(".report.json")).read_text())
    return {"out": out, "stem": stem, "report": report, "pages": pdf_pages(str(stem.with_suffix(".pdf")))}


def test_contents_page_numbers_are_where_the_tunes_are(big_volume):
    pages, report = big_volume["pages"], big_volume["report"]
    assert len(pages) == report["pages"] > report["front_pages"]
    entries = contents_entries(pages[:report["front_pages"]])
    assert sorted(entries) == list(range(1, 3001))
    corpus = ds.dataset(str(big_volume["out"] / "corpus"), partitioning="hive").to_table(columns=["number", "key"])
    printed_in = dict(zip(corpus.column("number").to_pylist(), corpus.column("key").to_pylist()))
    rng = random.Random(6)
    for number in [1, 2, 3, 11, 488, 1500, 2999, 3000] + rng.sample(range(1, 3001), 12):
        title, meter, key, page = entries[number]
        tokens = tune_tokens(number)[0]
        assert (meter, key) == (tokens[0][2:], printed_in[number])  # the key it is printed in
        assert key.endswith(tokens[1][3:])  # in its own mode
        assert title == book_title(number)[:33]
        text = pages[page - 1]
        assert re.search(rf"^\s*{number}\. {re.escape(book_title(number))}\s*$", text, re.MULTILINE), \
            f"tune {number} is not on page {page}"
        if page > report["front_pages"] + 1:  # and not already on the page before
            assert f"{number}. {book_title(number)}\n" not in pages[page - 2]
    tunes_pages = [entries[n][3] for n in sorted(entries)]
    assert tunes_pages == sorted(tunes_pages) and tunes_pages[0] == report["front_pages"] + 1


def test_pages_have_headers_with_book_volume_and_page_number(big_volume):
    pages = big_volume["pages"]
    assert "Test Book" in pages[0] and "Volume 1 of 1" in pages[0]  # the title page
    for number in (2, 3, 40, len(pages) // 2, len(pages)):
        first_line = next(line for line in pages[number - 1].splitlines() if line.strip())
        assert re.match(rf"^Test Book - Volume 1 of 1\s+{number}$", first_line.strip()), first_line


def test_report_and_corpus_of_the_big_volume(big_volume):
    report, out = big_volume["report"], big_volume["out"]
    assert report["tunes"] == 3000 and report["valid_tunes"] == 2700
    assert report["valid_tunes_with_abcm2ps_errors"] == 0
    assert report["tunes_not_typeset"] == []
    assert report["seconds"]["ghostscript"] > 0
    corpus = ds.dataset(str(out / "corpus"), partitioning="hive")
    assert corpus.schema.field("volume").type == pa.int32()
    assert set(CORPUS.names) <= set(corpus.schema.names)
    table = corpus.to_table(columns=["number", "page", "title", "meter"])
    entries = contents_entries(big_volume["pages"][:report["front_pages"]])
    assert {r["number"]: r["page"] for r in table.to_pylist()} == {n: e[3] for n, e in entries.items()}


# --- reports, re-runs, selections, MIDI ----------------------------------------------------------
def broken_dataset(path: str) -> str:
    """Four tunes; tune 3 (no title: compile makes one) has a chord never closed, an abcm2ps error."""
    table = generated_table([1, 2, 3, 4])
    tokens = "M:4/4 K:Cmaj [ C E G | c d e f g a b c |".split()
    rows = table.to_pylist()
    rows[2].update(tokens=tokens, token_ids=encode(tokens), length=len(tokens), meter="4/4", mode="maj", title=None)
    os.makedirs(path)
    pq.write_table(pa.Table.from_pylist(rows, schema=GENERATED), os.path.join(path, "part-0.parquet"))
    return path


def test_report_captures_abcm2ps_messages_per_tune(tmp_path):
    data = broken_dataset(str(tmp_path / "generated"))  # no findings: compile validates on the way
    assert run_compile(data, "--out", str(tmp_path / "out"), "--key", "C", "--quiet") == 0  # the notes as written
    stem = tmp_path / "out" / "volumes" / "folkrnn-volume-01"
    report = json.loads(stem.with_suffix(".report.json").read_text())
    assert report["tunes_with_abcm2ps_errors"] == 1 and report["valid_tunes_with_abcm2ps_errors"] == 0
    assert [m["number"] for m in report["messages"]] == [3]
    tune = report["messages"][0]
    assert tune["valid"] is False and tune["title"] == title_for(3, "4/4", "reel")
    assert any("Chord not closed" in m["message"] for m in tune["abcm2ps"])
    abc_lines = stem.with_suffix(".abc").read_text().split("\n")
    assert all(abc_lines[m["line"] - 1] == "[CEG|cdefgabc|" for m in tune["abcm2ps"])  # lines of the volume file
    assert report["other_messages"] == []
    corpus = ds.dataset(str(tmp_path / "out" / "corpus"), partitioning="hive").to_table()
    assert corpus.sort_by("number").column("valid").to_pylist() == [True, True, False, True]


def test_second_run_skips_up_to_date_volumes(tmp_path, capsys):
    data = write_dataset(str(tmp_path / "generated"), range(1, 61), shards=2)
    out = str(tmp_path / "out")
    assert run_compile(data, "--out", out, "--per-volume", "20", "--quiet") == 0
    reports = sorted((tmp_path / "out" / "volumes").glob("*.report.json"))
    assert len(reports) == 3
    stamps = [os.stat(p).st_mtime_ns for p in reports]
    capsys.readouterr()
    start = time.perf_counter()
    assert run_compile(data, "--out", out, "--per-volume", "20", "--quiet") == 0
    assert time.perf_counter() - start < 5
    assert "3 up to date, 0 to build" in capsys.readouterr().out
    assert [os.stat(p).st_mtime_ns for p in reports] == stamps
    # a new title changes every volume's title page and headers: all are rebuilt
    assert run_compile(data, "--out", out, "--per-volume", "20", "--title", "Other", "--quiet") == 0
    assert "0 up to date, 3 to build" in capsys.readouterr().out
    # fewer, larger volumes: the third volume's files and corpus partition go
    assert run_compile(data, "--out", out, "--per-volume", "30", "--no-pdf", "--quiet") == 0
    assert sorted(p.name for p in (tmp_path / "out" / "volumes").iterdir()) == [
        "folkrnn-volume-01.abc", "folkrnn-volume-01.report.json", "folkrnn-volume-02.abc",
        "folkrnn-volume-02.report.json"]
    assert sorted(p.name for p in (tmp_path / "out" / "corpus").iterdir()) == ["volume=1", "volume=2"]


def test_valid_only_and_where_selections_and_midi(tmp_path):
    data = write_dataset(str(tmp_path / "generated"), range(1, 81), shards=2)
    out = tmp_path / "out"
    assert run_compile(data, "--out", str(out), "--tunes", "valid", "--where", "meter = '6/8' OR meter = '3/4'",
                       "--per-volume", "5", "--no-pdf", "--midi", "--quiet") == 0
    expected = [n for n in range(1, 81) if n % 20 not in (3, 11) and tune_tokens(n)[0][0] in ("M:6/8", "M:3/4")]
    corpus = ds.dataset(str(out / "corpus"), partitioning="hive").to_table().sort_by("number")
    assert corpus.column("number").to_pylist() == expected
    assert corpus.column("volume").to_pylist() == [1 + i // 5 for i in range(len(expected))]
    first = re.findall(r"^X:(\d+)$", (out / "volumes" / "folkrnn-volume-01.abc").read_text(), re.MULTILINE)
    assert first == [str(n) for n in expected[:5]]
    midi = sorted(p.name for p in (out / "volumes" / "midi" / "folkrnn-volume-01").iterdir())
    assert midi == sorted(f"tune-{n}.mid" for n in expected[:5])


def test_compile_usage_errors(tmp_path):
    from folkrnn.schemas.errors import UsageError

    data = write_dataset(str(tmp_path / "generated"), range(1, 11), shards=1)
    cases = [
        ((str(tmp_path / "missing"), "--out", str(tmp_path / "o")), "no dataset at"),
        ((data, "--per-volume", "0"), "--per-volume must be at least 1"),
        ((data, "--out", str(tmp_path / "o"), "--where", "meter = '5/4'"), "no tunes selected"),
        ((data, "--out", str(tmp_path / "o"), "--where", "metre = '6/8'"), "unknown column 'metre'"),
    ]
    for argv, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)) as err:
            run_compile(*argv)
        assert "\n" not in str(err.value)
    duplicated = tmp_path / "dup"
    duplicated.mkdir()
    table = generated_table([1, 2])
    pq.write_table(table, duplicated / "part-0.parquet")
    pq.write_table(table.slice(1), duplicated / "part-1.parquet")
    with pytest.raises(UsageError, match="tune number 2 appears more than once"):
        run_compile(str(duplicated), "--out", str(tmp_path / "o"))
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    pq.write_table(table.drop_columns(["tokens", "seed"]), lacking / "part-0.parquet")
    with pytest.raises(UsageError, match="lacks the columns seed, tokens"):
        run_compile(str(lacking), "--out", str(tmp_path / "o"))


def test_compile_reads_a_run_folder_and_skips_temporary_files(tmp_path):
    """folkrnn generate writes RUN/manifest.json and RUN/generated/part-*.parquet; a half-written
    shard is part-N.parquet.tmp until renamed, and must not be read."""
    run = tmp_path / "run"
    write_dataset(str(run / "generated"), range(1, 21), shards=2)
    (run / "manifest.json").write_text("{}")
    (run / "generated" / "part-00002.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert run_compile(str(run), "--out", str(tmp_path / "out"), "--no-pdf", "--quiet") == 0
    corpus = ds.dataset(str(tmp_path / "out" / "corpus"), partitioning="hive").to_table()
    assert sorted(corpus.column("number").to_pylist()) == list(range(1, 21))
