"""The ingest pipeline on a real Beam runner: sources, rejects, duplicates, Parquet, summary."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from folkrnn.pipeline.beam.ingest import IngestTunes
from folkrnn.pipeline.run_ingest import IngestPlan, build_ingest
from folkrnn.schemas.tables import DUPLICATES, REJECTS, TUNES
from folkrnn.transforms.ingest import split_of
from folkrnn.transforms.records import RawTune
from tests.conftest import FIXTURES, folkrnn, local_options

REEL = "X:1\nT:Reel\nM:4/4\nL:1/8\nK:G\n|:GABc dedB|dedB dedB:|\n"


def raw(position: int, text: str, collection: str = "unit") -> RawTune:
    return RawTune(source="memory.abc", collection=collection, position=position, text=text)


def test_ingest_transform_routes_every_record():
    records = [raw(0, REEL), raw(1, REEL.replace("Reel", "Same reel")), raw(2, REEL.replace("K:G", "K:G lyd")),
               raw(3, "X:4\nT:No key\nM:4/4\nABc|")]
    with TestPipeline(options=local_options()) as p:
        out = p | beam.Create(records) | IngestTunes(valid_fraction=0.0)
        # "tunes": every tune tokenized; "kept": the one of each content kept (the tunes table is
        # "tunes" without the ids of "duplicates")
        assert_that(out["tunes"] | "TuneIds" >> beam.Map(lambda r: (r["id"], r["tokens"][:4], r["split"])),
                    equal_to([(records[0].id, ["M:4/4", "K:Cmaj", "|:", "c"], "train"),
                              (records[1].id, ["M:4/4", "K:Cmaj", "|:", "c"], "train")]),
                    label="tunes")
        assert_that(out["kept"] | "KeptIds" >> beam.Map(lambda r: (r["id"], r["meter"], r["mode"])),
                    equal_to([(records[0].id, "4/4", "maj")]), label="kept")
        assert_that(out["duplicates"] | "DupIds" >> beam.Map(lambda r: (r["id"], r["duplicate_of"])),
                    equal_to([(records[1].id, records[0].id)]), label="duplicates")
        assert_that(out["rejects"] | "Reasons" >> beam.Map(lambda r: (r["id"], r["stage"], r["reason"])),
                    equal_to([(records[2].id, "header", "mode_not_in_vocab"),
                              (records[3].id, "header", "missing_key")]), label="rejects")


def test_split_is_a_deterministic_hash_of_the_id():
    ids = [f"c/abc/{i}" for i in range(4000)]
    valid = [i for i in ids if split_of(i, 0.05) == "valid"]
    assert 0.03 < len(valid) / len(ids) < 0.07
    assert valid == [i for i in ids if split_of(i, 0.05) == "valid"]


def run_fixture_ingest(out: str, *extra_options: str) -> None:
    plan = IngestPlan(
        abc=[os.path.join(FIXTURES, name) for name in ("collection.abc", "latin1.abc", "binary.abc")],
        dumps=[os.path.join(FIXTURES, "dump.csv"), os.path.join(FIXTURES, "dump.json")],
        folkrnn_text=[os.path.join(FIXTURES, "corpus.folkrnn.txt")],
    )
    for name in ("tunes", "duplicates", "rejects"):
        os.makedirs(os.path.join(out, name), exist_ok=True)
    with beam.Pipeline(options=local_options(*extra_options)) as p:
        build_ingest(p, plan, out, valid_fraction=0.05, num_shards=2)


@pytest.fixture(scope="module")
def fixture_ingest(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ingest"))
    run_fixture_ingest(out)
    return out


def test_counts_add_up(fixture_ingest):
    tunes = pq.read_table(os.path.join(fixture_ingest, "tunes"))
    duplicates = pq.read_table(os.path.join(fixture_ingest, "duplicates"))
    rejects = pq.read_table(os.path.join(fixture_ingest, "rejects"))
    with open(os.path.join(fixture_ingest, "summary.json")) as handle:
        summary = json.load(handle)
    assert (tunes.num_rows, duplicates.num_rows, rejects.num_rows) == (10, 1, 5)
    assert summary["read"] == 16
    assert summary["read"] == summary["kept"] + summary["duplicates"] + summary["rejected"]
    assert (summary["kept"], summary["duplicates"], summary["rejected"]) == (10, 1, 5)


def test_tables_use_the_schemas(fixture_ingest):
    for name, schema in (("tunes", TUNES), ("duplicates", DUPLICATES), ("rejects", REJECTS)):
        table = pq.read_table(os.path.join(fixture_ingest, name))
        assert table.schema.remove_metadata().equals(schema.remove_metadata()), name
        shards = sorted(os.listdir(os.path.join(fixture_ingest, name)))
        assert shards == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]


def test_every_reject_has_an_actionable_reason(fixture_ingest):
    rejects = pq.read_table(os.path.join(fixture_ingest, "rejects")).to_pylist()
    reasons = sorted((os.path.basename(r["source"]), r["reason"]) for r in rejects)
    assert reasons == [("binary.abc", "binary"), ("collection.abc", "mode_not_in_vocab"),
                       ("corpus.folkrnn.txt", "token_not_in_vocab"), ("dump.csv", "meter_not_in_vocab"),
                       ("dump.csv", "missing_column")]
    assert all(r["detail"] for r in rejects)


def test_tune_rows(fixture_ingest):
    rows = {r["title"]: r for r in pq.read_table(os.path.join(fixture_ingest, "tunes")).to_pylist()}
    reel = rows["The Test Reel"]
    assert reel["meter"] == "4/4" and reel["meter_mapped"] and reel["original_meter"] == "C|"
    assert reel["mode"] == "maj" and reel["transpose"] == -2 and reel["tokens"][:4] == ["M:4/4", "K:Cmaj", "|:", "G"]
    assert reel["length"] == len(reel["tokens"]) == len(reel["token_ids"])
    assert rows["Café Polka"]["encoding"] == "latin-1"
    assert rows["A Waltz Without a Number"]["mode"] == "maj"
    assert rows["The JSON Jig"]["mode"] == "dor" and rows["The JSON Mazurka"]["mode"] == "mix"
    assert rows["The First Slide"]["meter"] == "12/8"
    untitled = [r for r in pq.read_table(os.path.join(fixture_ingest, "tunes")).to_pylist() if r["title"] is None]
    assert sorted(r["tokens"][1] for r in untitled) == ["K:Cdor", "K:Cmaj"]


def test_duplicates_point_at_the_kept_tune(fixture_ingest):
    dup = pq.read_table(os.path.join(fixture_ingest, "duplicates")).to_pylist()[0]
    kept_ids = set(pq.read_table(os.path.join(fixture_ingest, "tunes")).column("id").to_pylist())
    assert dup["duplicate_of"] in kept_ids and dup["id"] not in kept_ids


def test_same_output_on_the_multiprocess_runner(fixture_ingest, tmp_path):
    """FnApiRunner with two worker processes pickles every DoFn, as a remote runner does."""
    out = str(tmp_path)
    run_fixture_ingest(out, "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    for name in ("tunes", "duplicates", "rejects"):
        for shard in sorted(os.listdir(os.path.join(out, name))):
            with open(os.path.join(out, name, shard), "rb") as a, \
                    open(os.path.join(fixture_ingest, name, shard), "rb") as b:
                assert a.read() == b.read(), f"{name}/{shard} differs between runners"


def test_cli_mistakes_are_one_line_errors(tmp_path, folkrnn_main):
    result = folkrnn_main("ingest", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = folkrnn_main("ingest", "--valid-fraction", "2", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--valid-fraction" in result.stderr


def test_cli_ingest_of_a_folder_prints_a_summary_that_adds_up(tmp_path):
    """The entry point end to end, in a process of its own: the summary, and no runner download."""
    folder = tmp_path / "abc"
    folder.mkdir()
    with open(os.path.join(FIXTURES, "collection.abc"), "rb") as src:
        (folder / "collection.abc").write_bytes(src.read())
    out = tmp_path / "out"
    result = folkrnn("ingest", str(folder), "--out", str(out), "--quiet", "--write-folkrnn-text")
    assert result.returncode == 0, result.stderr
    assert "ingest: 5 tunes read, 3 kept, 1 duplicates, 1 rejected" in result.stdout
    assert "download" not in (result.stdout + result.stderr).lower()
    text = (out / "tunes.folkrnn.txt").read_text()
    assert text.count("\n\n") == 2 and text.startswith("M:")


def test_cli_scrapes_from_a_local_server(tmp_path, folkrnn_main):
    """URLs on the command line, served by http.server on 127.0.0.1; failures become rejects."""
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    site.mkdir()
    with open(os.path.join(FIXTURES, "collection.abc"), "rb") as src:
        (site / "tunes.abc").write_bytes(src.read())
    (site / "index.html").write_text('<html><body><a href="tunes.abc">tunes</a> <a href="gone.abc">x</a></body></html>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        out = tmp_path / "out"
        result = folkrnn_main("ingest", f"{base}/index.html", "--out", str(out), "--quiet", "--delay", "0")
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    # 5 tunes from tunes.abc, plus the missing gone.abc as one reject
    assert (summary["read"], summary["kept"], summary["duplicates"], summary["rejected"]) == (6, 3, 1, 2)
    assert summary["rejects_by_reason"] == {"mode_not_in_vocab": 1, "http_404": 1}
    assert os.listdir(out / "http-cache")
