"""Issue 17 part 2: ingest of any size in bounded memory.

A large file is read in byte ranges by several workers (``folkrnn.transforms.byte_ranges``): every
range must yield exactly the records, positions, ids and inherited file-header fields that reading
the whole file gives, whatever the split size (a range boundary in the file header, in the middle
of a tune, in a quoted CSV field ...). Tables are written through sorted runs on disk
(``folkrnn.pipeline.sorted_runs``), so that no step holds all the tunes; the tables must come out
byte-identical with splitting on and off, on a real Beam runner, and the counts must add up.
"""

from __future__ import annotations

import io
import json
import os
import random

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from folkrnn.pipeline.run_ingest import IngestPlan, build_ingest
from folkrnn.pipeline.sorted_runs import RunWriter, merge_runs, write_sorted_table
from folkrnn.schemas.tables import DUPLICATES, REJECTS, TUNES
from folkrnn.transforms.byte_ranges import file_reader, records_of_range, survey
from folkrnn.transforms.sources import records_of_folkrnn_text, rows_of_dump, tunes_of_document
from tests.conftest import FIXTURES, local_options

HEADER = "%abc-2.1\n% a collection with a file header\nL:1/16\nR:reel\nM:2/4\n\n"
TUNE = "X:{n}\nT:Tune {n}\nK:{key}\n|:GABc dedB|{bar}:|\n"
# Tunes with X: after a blank line, with X: straight after the previous tune, without X: (split at
# the blank line), with CRLF line ends, a duplicate, two rejects and a non-ASCII title.
ABC = (HEADER + TUNE.format(n=1, key="G", bar="dBGB") + "\n" + TUNE.format(n=2, key="D", bar="cBAG")
       + TUNE.format(n=3, key="G", bar="dBGB") + "\nT:No number\nK:Am\nABcd efga|\n\n"
       + "X:5\r\nT:Crlf \u00e9t\u00e9\r\nK:Em\r\nEFGA B2B2|\r\n\r\n" + TUNE.format(n=6, key="F lydian", bar="FGAB")
       + "\nX:7\nT:No key\nABC|\n\nfree text between tunes\n\n" + TUNE.format(n=8, key="A", bar="ABcd"))
CSV = ("tune_id,setting_id,name,type,meter,mode,abc\n"
       '1,11,"A reel, ""quoted""",reel,4/4,Gmajor,"|:GABc dedB|dedB dedB:|"\n'
       '2,12,Two lines,jig,6/8,Dmajor,"|:DFA dAF|\nGBd gdB:|"\n'
       "3,13,Bad meter,reel,5/4,Aminor,ABcde|\n"
       '4,14,"Newline\nin the name",reel,4/4,Edorian,"EFGA B2B2|"\n'
       "5,15,No body,reel,4/4,Gmajor,\n"
       '6,16,Same as one,reel,4/4,Gmajor,"|:GABc dedB|dedB dedB:|"\n')
JSONL = ('  {"tune_id": 1, "name": "One", "meter": "4/4", "mode": "Gmajor", "abc": "GABc dedB|"}\n\n'
         '{"tune_id": 2, "name": "Two", "meter": "6/8", "mode": "Dmajor", "abc": "DFA dAF|"}\r\n'
         "{not json\n"
         '{"tune_id": 3, "name": "Tr\u00e8s", "meter": "3/4", "mode": "Adorian", "abc": "A2 B2 c2|"}  \n  \n')
FOLKRNN = ("M:6/8\nK:Cmaj\n|: G c d e 2 c | B G G B G G :|\n\n"
           "M:4/4\nK:Cdor\nc 2 G c _E c G c | B 2 F B D B F B |\n\n\n"
           "M:4/4\r\nK:Cmaj\r\nc d e NOTATOKEN |\r\n\r\n"
           "M:3/4\nK:Cmix\nc 2 d 2 e 2 | f 6 |\n")
WHOLE = {"abc": tunes_of_document, "dump": rows_of_dump, "folkrnn": records_of_folkrnn_text}


def in_ranges(path: str, kind: str, data: bytes, split_size: int) -> tuple[list, int]:
    """The records of a file read range by range (each range reading only its bytes), and how
    many ranges there were."""
    found = survey(path, "c", kind, len(data), file_reader(io.BytesIO(data)), split_size)
    assert found.splittable
    if found.reject is not None:
        return [found.reject], 0
    records = []
    for task in found.ranges:
        got = list(records_of_range(task, file_reader(io.BytesIO(data))))
        assert len(got) == task.records
        records += got
    return records, len(found.ranges)


@pytest.mark.parametrize("path, kind, text, encoding", [
    ("/c/abc/big.abc", "abc", ABC, "utf-8"),
    ("/c/abc/latin.abc", "abc", ABC, "latin-1"),
    ("/c/abc/folkrnn-layout.abc", "abc", FOLKRNN, "utf-8"),  # recognised as folk-rnn text
    ("/c/dump.csv", "dump", CSV, "utf-8"),
    ("/c/dump.jsonl", "dump", JSONL, "utf-8"),
    ("/c/lines.json", "dump", JSONL, "latin-1"),
    ("/c/corpus.txt", "folkrnn", FOLKRNN, "utf-8"),
], ids=["abc", "abc-latin1", "abc-as-folkrnn-text", "csv", "jsonl", "json-lines-latin1", "folkrnn-text"])
def test_every_split_gives_the_records_of_the_whole_file(path, kind, text, encoding):
    data = text.encode(encoding)
    whole = list(WHOLE[kind](path, "c", data))
    assert len(whole) >= 4
    for split_size in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, len(data) - 1):
        records, ranges = in_ranges(path, kind, data, split_size)
        assert records == whole, split_size
        if split_size < 40:
            assert ranges >= 3, split_size  # a boundary in the header, in tunes, in quoted fields


def test_random_cuts_of_odd_files_change_nothing():
    """Blank lines with spaces, CR, CRLF, a BOM, X: without a blank line, whitespace-only blocks."""
    pieces = ["X:1\n", "K:G\n", "M:6/8\n", "L:1/8\n", "T:\u00e9\n", "\n", " \n", "\t\n", "\r\n", "\r", "abc|\n",
              "G c d |\n", "%c\n", "\xa0\n", "  ", "R:reel\n", "\nX:3\nT:t\nM:2/4\nK:D\nAB|\n", "K:Cmaj\n"]
    rng = random.Random(17)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        data = ("\ufeff" if rng.random() < 0.1 else "").encode() + text.encode(rng.choice(["utf-8", "latin-1"]),
                                                                               errors="replace")
        whole = list(tunes_of_document("/c/f.abc", "c", data))
        for split_size in (1, 4, 16):
            assert in_ranges("/c/f.abc", "abc", data, split_size)[0] == whole, (data, split_size)


def test_every_range_inherits_the_file_header():
    data = ABC.encode()
    found = survey("/c/big.abc", "c", "abc", len(data), file_reader(io.BytesIO(data)), 3)
    assert all(task.header == ("L:1/16", "R:reel", "M:2/4") for task in found.ranges)
    last = list(records_of_range(found.ranges[-1], file_reader(io.BytesIO(data))))[-1]
    assert last.position == 7 and last.text.split("\n")[:4] == ["X:8", "L:1/16", "R:reel", "M:2/4"]


def test_a_json_array_is_read_whole():
    data = b'[{"abc": "AB|", "meter": "4/4", "mode": "Gmajor"}, {"abc": "cd|"}]'
    assert not survey("/c/a.json", "c", "dump", len(data), file_reader(io.BytesIO(data)), 4).splittable


def test_a_file_without_tunes_is_one_reject_however_split():
    data = ("%abc-2.1\nL:1/8\n\nno tune here\n\n" * 20).encode()
    whole = list(tunes_of_document("/c/none.abc", "c", data))
    assert [r["reason"] for r in whole] == ["no_tunes"]
    assert in_ranges("/c/none.abc", "abc", data, 8)[0] == whole


# -- sorted runs --------------------------------------------------------------------------------

SMALL = pa.schema([("id", pa.string()), ("n", pa.int64()), ("tokens", pa.list_(pa.string()))])


def test_runs_merge_into_the_file_one_sort_writes(tmp_path, monkeypatch):
    import folkrnn.pipeline.sorted_runs as sorted_runs

    monkeypatch.setattr(sorted_runs, "BATCH_ROWS", 7)
    monkeypatch.setattr(sorted_runs, "ROW_GROUP_ROWS", 50)
    rows = [{"id": f"c/{i * 7919 % 1000}", "n": i, "tokens": ["a"] * (i % 5)} for i in range(1000)]
    writer = RunWriter(str(tmp_path / "runs"), SMALL, num_shards=1, run_bytes=2000)
    runs = [run for row in rows for run in writer.add(row)] + writer.flush()
    assert len(runs) > 10  # memory bounded by run_bytes: many runs
    excluded_rows = [r for r in rows if r["n"] % 3 == 0]
    ex_writer = RunWriter(str(tmp_path / "exclude"), SMALL, num_shards=1, run_bytes=500)
    excluded = [run for row in excluded_rows for run in ex_writer.add(row)] + ex_writer.flush()
    merged = write_sorted_table(str(tmp_path / "merged.parquet"), SMALL,
                                merge_runs([p for _, p in runs], SMALL, [p for _, p in excluded]))
    expected = sorted((r for r in rows if r["n"] % 3), key=lambda r: r["id"])
    assert merged == len(expected)
    assert pq.read_table(tmp_path / "merged.parquet").to_pylist() == expected
    assert pq.ParquetFile(tmp_path / "merged.parquet").metadata.num_row_groups == -(-len(expected) // 50)


def test_a_small_table_is_the_file_pq_write_table_writes(tmp_path):
    rows = [{"id": f"c/{i}", "n": i, "tokens": ["x", "y"]} for i in (3, 1, 2)]
    writer = RunWriter(str(tmp_path / "runs"), SMALL, num_shards=1)
    runs = [run for row in rows for run in writer.add(row)] + writer.flush()
    write_sorted_table(str(tmp_path / "new.parquet"), SMALL, merge_runs([p for _, p in runs], SMALL))
    write_sorted_table(str(tmp_path / "empty.parquet"), SMALL, merge_runs([], SMALL))
    old = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=SMALL), old, compression="zstd")
    assert (tmp_path / "new.parquet").read_bytes() == old.getvalue()
    empty = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([], schema=SMALL), empty, compression="zstd")
    assert (tmp_path / "empty.parquet").read_bytes() == empty.getvalue()


# -- the pipeline on a real runner --------------------------------------------------------------

def sources(folder) -> IngestPlan:
    paths = {"big.abc": ABC, "dump.csv": CSV, "dump.jsonl": JSONL, "corpus.folkrnn.txt": FOLKRNN}
    for name, text in paths.items():
        (folder / name).write_bytes(text.encode())
    return IngestPlan(abc=[str(folder / "big.abc"), os.path.join(FIXTURES, "collection.abc")],
                      dumps=[str(folder / "dump.csv"), str(folder / "dump.jsonl")],
                      folkrnn_text=[str(folder / "corpus.folkrnn.txt")])


def ingest(plan: IngestPlan, out: str, split_size: int, *options: str) -> dict:
    with beam.Pipeline(options=local_options(*options)) as p:
        build_ingest(p, plan, out, num_shards=2, split_size=split_size)
    with open(os.path.join(out, "summary.json")) as handle:
        return json.load(handle)


def table_files(out: str) -> dict[str, bytes]:
    found = {}
    for name in ("tunes", "duplicates", "rejects"):
        for shard in sorted(os.listdir(os.path.join(out, name))):
            with open(os.path.join(out, name, shard), "rb") as handle:
                found[f"{name}/{shard}"] = handle.read()
    return found


def test_split_and_whole_ingests_write_the_same_bytes(tmp_path):
    plan = sources(tmp_path)
    whole = ingest(plan, str(tmp_path / "whole"), 0)
    split = ingest(plan, str(tmp_path / "split"), 16, "--direct_num_workers=2",
                   "--direct_running_mode=multi_processing")
    assert split == whole
    assert table_files(str(tmp_path / "split")) == table_files(str(tmp_path / "whole"))
    # 8 ABC tunes (2 rejects, 1 duplicate), 6 CSV rows (2, 1), 4 JSON lines (1), 4 folk-rnn tunes (1),
    # and the 5 tunes of the fixture collection (1, 1)
    assert whole["read"] == whole["kept"] + whole["duplicates"] + whole["rejected"] == 27
    assert (whole["kept"], whole["duplicates"], whole["rejected"]) == (17, 3, 7)
    assert not os.path.exists(tmp_path / "split" / ".runs")  # the sorted runs are gone
    tunes = pq.read_table(tmp_path / "split" / "tunes").to_pylist()
    header_tune = next(t for t in tunes if t["title"] == "Tune 8")
    assert header_tune["original_meter"] == "2/4" and header_tune["tokens"][:3] == ["M:2/4", "K:Cmaj", "|:"]
    for schema, name in ((TUNES, "tunes"), (DUPLICATES, "duplicates"), (REJECTS, "rejects")):
        table = pq.read_table(tmp_path / "split" / name)
        assert table.schema.remove_metadata().equals(schema.remove_metadata())


def test_the_issue_payload_a_big_file_of_short_tunes_is_read_in_ranges(tmp_path, folkrnn_main):
    """The reported case in small: one ABC file of many short tunes. It is read by ranges (several
    read tasks), the output is the same as with splitting off, and the counts add up."""
    text = "".join(f"X:{i}\nT:T{i}\nM:2/4\nL:1/8\nK:{'GDAE'[i % 4]}\n{'ABcd'[i % 4]}B cd|{'efga'[i % 3]}2 z2|\n\n"
                   for i in range(1, 3001))
    big = tmp_path / "short-tunes.abc"
    big.write_text(text)
    data = big.read_bytes()
    found = survey(str(big), "c", "abc", len(data), file_reader(io.BytesIO(data)), 8 * 1024)
    assert len(found.ranges) >= 10 and sum(t.records for t in found.ranges) == 3000
    summaries = []
    for name, split in (("split", "8K"), ("whole", "0")):
        result = folkrnn_main("ingest", str(big), "--out", str(tmp_path / name), "--quiet", "--split-size", split)
        assert result.returncode == 0, result.stderr
        assert "ingest: 3000 tunes read" in result.stdout
        with open(tmp_path / name / "summary.json") as handle:
            summaries.append(json.load(handle))
    assert summaries[0] == summaries[1]
    assert table_files(str(tmp_path / "split")) == table_files(str(tmp_path / "whole"))
    s = summaries[0]
    assert s["read"] == s["kept"] + s["duplicates"] + s["rejected"] == 3000


def test_a_bad_split_size_is_a_one_line_error(tmp_path, folkrnn_main):
    result = folkrnn_main("ingest", os.path.join(FIXTURES, "collection.abc"), "--out", str(tmp_path / "o"),
                          "--split-size", "lots")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "--split-size" in result.stderr
