"""folkrnn query and stats: results equal a plain pyarrow filter; output formats; one-line errors."""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from folkrnn.pipeline import datasets as dataset_access
from folkrnn.pipeline import query, stats
from folkrnn.schemas.errors import UsageError
from tests.test_books import run_compile, write_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A generated dataset (600 tunes in 3 shards) and the corpus compile makes of it (6 volumes)."""
    root = tmp_path_factory.mktemp("query")
    generated = write_dataset(str(root / "generated"), range(1, 601), shards=3)
    assert run_compile(generated, "--out", str(root / "out"), "--per-volume", "100", "--no-pdf", "--quiet") == 0
    return {"generated": generated, "corpus": str(root / "out" / "corpus")}


def query_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    query.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_query(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert query.run(query_args(*argv)) == 0
    return capsys.readouterr().out


def arrow(path: str, hive: bool = False) -> ds.Dataset:
    return ds.dataset(path, format="parquet", partitioning="hive" if hive else None)


# Each SQL condition with the same condition as a pyarrow expression.
CASES = [
    ("meter = '6/8' AND mode = 'dor' AND valid",
     (pc.field("meter") == "6/8") & (pc.field("mode") == "dor") & pc.field("valid")),
    ("length > 150 OR NOT valid", (pc.field("length") > 150) | ~pc.field("valid")),
    ("number BETWEEN 100 AND 200 AND meter IN ('3/4', '9/8')",
     (pc.field("number") >= 100) & (pc.field("number") <= 200) & pc.field("meter").isin(["3/4", "9/8"])),
    ("truncated", pc.field("truncated")),
    ("form <> 'AABB'", pc.field("form") != "AABB"),
]


@pytest.mark.parametrize("where,expression", CASES, ids=[c[0] for c in CASES])
def test_query_equals_a_plain_pyarrow_filter(datasets, where, expression):
    for path, hive in ((datasets["generated"], False), (datasets["corpus"], True)):
        got = dataset_access.select(path, where=where, columns=["number", "title", "meter", "mode", "valid"])
        expected = arrow(path, hive).to_table(filter=expression, columns=["number", "title", "meter", "mode", "valid"])
        assert got.num_rows > 0
        assert got.to_pylist() == expected.sort_by("number").to_pylist()


def test_query_on_partition_and_list_columns(datasets):
    got = dataset_access.select(datasets["corpus"], where="volume = 2 AND meter = '3/2'", columns=["number", "volume"])
    expected = arrow(datasets["corpus"], True).to_table(
        filter=(pc.field("volume") == 2) & (pc.field("meter") == "3/2"), columns=["number", "volume"])
    assert got.to_pylist() == expected.sort_by("number").to_pylist()
    assert all(101 <= r["number"] <= 200 for r in got.to_pylist())
    got = dataset_access.select(datasets["generated"], where="list_contains(reasons, 'bar_too_short')", columns=["number"])
    table = arrow(datasets["generated"]).to_table(columns=["number", "reasons"]).sort_by("number")
    assert got.column("number").to_pylist() == [
        r["number"] for r in table.to_pylist() if "bar_too_short" in r["reasons"]]


def test_columns_limit_and_order(datasets, capsys):
    table = dataset_access.select(datasets["generated"], where="valid", columns=["title", "number"], limit=7)
    assert table.column_names == ["title", "number"]
    numbers = table.column("number").to_pylist()
    assert len(numbers) == 7 and numbers == sorted(numbers)
    assert dataset_access.select(datasets["generated"], limit=0).num_rows == 0
    out = run_query(capsys, datasets["generated"], "--columns", "?")
    assert out.strip().split(", ")[:3] == ["number", "seed", "temperature"]


def test_formats(datasets, capsys):
    where = "meter = '6/8' AND valid"
    expected = dataset_access.select(datasets["corpus"], where=where, columns=["number", "title", "reasons", "volume"])
    base = (datasets["corpus"], "--where", where, "--columns", "number,title,reasons,volume")

    rows = list(csv.DictReader(io.StringIO(run_query(capsys, *base, "--format", "csv"))))
    assert [int(r["number"]) for r in rows] == expected.column("number").to_pylist()
    assert rows[0]["reasons"] == "[]" and rows[0]["title"] == expected.column("title")[0].as_py()

    lines = run_query(capsys, *base, "--format", "json").splitlines()
    assert [json.loads(line) for line in lines] == expected.to_pylist()

    text = run_query(capsys, *base, "--limit", "3").splitlines()
    assert text[0].split() == ["number", "title", "reasons", "volume"]
    assert set(text[1].replace(" ", "")) == {"-"}
    assert text[-1] == "(3 rows)"
    first = expected.to_pylist()[0]
    assert text[2].split()[0] == str(first["number"]) and first["title"] in text[2]

    abc = run_query(capsys, *base, "--format", "abc")
    assert abc.startswith("%abc-2.1\n\nX:")
    assert abc.count("\nX:") == expected.num_rows


def test_abc_format_is_playable(datasets, capsys, tmp_path):
    abc = run_query(capsys, datasets["generated"], "--where", "valid AND number <= 60", "--format", "abc")
    (tmp_path / "q.abc").write_text(abc)
    ps = subprocess.run(["abcm2ps", "-S", "-O", "q.ps", "q.abc"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=60)
    assert ps.returncode == 0 and ": error:" not in ps.stderr
    midi = subprocess.run(["abc2midi", "q.abc"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert midi.returncode == 0
    assert len(list(tmp_path.glob("q*.mid"))) == abc.count("\nX:") > 40


def test_abc_format_from_tokens_when_there_is_no_abc_column(tmp_path, capsys):
    from tests.test_books import generated_table

    path = tmp_path / "tunes"
    path.mkdir()
    table = generated_table([7, 8], findings=False).drop_columns(["abc"])
    import pyarrow.parquet as pq

    pq.write_table(table, path / "part-0.parquet")
    abc = run_query(capsys, str(path), "--format", "abc")
    assert abc.count("\nX:") == 2 and "\nX:7\nT:" in abc
    # an ingest table (tunes/): no number, no abc; rows in id order, numbered as they come
    ingest = tmp_path / "ingest-tunes"
    ingest.mkdir()
    pq.write_table(pa.table({"id": ["b/2", "a/1"], "title": ["Second", "First"], "meter": ["6/8", "6/8"],
                             "tokens": [table.column("tokens")[1].as_py(), table.column("tokens")[0].as_py()]}),
                   ingest / "part-0.parquet")
    abc = run_query(capsys, str(ingest), "--format", "abc")
    assert "\nX:1\nT:First\n" in abc and "\nX:2\nT:Second\n" in abc
    listing = run_query(capsys, str(ingest), "--where", "meter = '6/8'")
    assert listing.splitlines()[0].split() == ["id", "title", "meter"] and "a/1" in listing.splitlines()[2]


ERRORS = [
    (("--where", "metre = '6/8'"), "unknown column 'metre' in --where; columns are: number, seed"),
    (("--where", "meter = = '6/8'"), "malformed --where"),
    (("--where", "meter = '6/8' AND"), "malformed --where"),
    (("--where", "1=1; DROP TABLE x"), "malformed --where"),
    (("--where", "  "), "--where is empty"),
    (("--where", "meter = 3"), "--where cannot be evaluated"),
    (("--columns", "number,metre"), "unknown column 'metre' in --columns; columns are: number, seed"),
    (("--columns", ","), "--columns is empty"),
    (("--limit", "-1"), "--limit must be 0 or more"),
]


@pytest.mark.parametrize("argv,message", ERRORS, ids=[e[1] for e in ERRORS])
def test_errors_are_one_line_usage_errors(datasets, argv, message):
    with pytest.raises(UsageError) as err:
        query.run(query_args(datasets["generated"], *argv))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_dataset_folders_and_errors(tmp_path):
    with pytest.raises(UsageError, match="no dataset at"):
        query.run(query_args(str(tmp_path / "nothing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no Parquet files in"):
        query.run(query_args(str(tmp_path / "empty")))
    for table in ("tunes", "rejects"):
        (tmp_path / "ingest" / table).mkdir(parents=True)
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": ["a"]}), tmp_path / "ingest" / table / "part-0.parquet")
    with pytest.raises(UsageError, match=r"ingest is not one dataset but holds rejects, tunes: give one of them"):
        query.run(query_args(str(tmp_path / "ingest")))
    (tmp_path / "ingest" / "tunes" / "part-1.parquet.tmp").write_bytes(b"half a file")
    assert dataset_access.select(str(tmp_path / "ingest" / "tunes")).num_rows == 1
    (tmp_path / "run" / "generated").mkdir(parents=True)  # a generate run folder: one table inside
    pq.write_table(pa.table({"number": [1, 2]}), tmp_path / "run" / "generated" / "part-0.parquet")
    (tmp_path / "run" / "manifest.json").write_text("{}")
    assert dataset_access.select(str(tmp_path / "run")).column("number").to_pylist() == [1, 2]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="is not a .parquet file"):
        query.run(query_args(str(tmp_path / "notes.txt")))


def test_cli_prints_one_line_and_exits_2(datasets, tmp_path, folkrnn_main):
    """Through the command's entry point, as a user runs it (tests/test_query_sandbox.py runs it as a
    process of its own)."""
    for argv, message in [
        ((datasets["generated"], "--where", "meter = = 1"), "malformed --where"),
        ((datasets["generated"], "--columns", "number,nope"), "unknown column 'nope'"),
        ((str(tmp_path / "missing"),), "no dataset at"),
    ]:
        proc = folkrnn_main("query", *argv)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("folkrnn query: error: ") and message in lines[0], lines
    proc = folkrnn_main("query", datasets["corpus"], "--where", "number = 488", "--columns", "number,volume")
    assert proc.returncode == 0 and proc.stdout.split("\n")[2].split() == ["488", "5"]


def test_stats_counts_match_pyarrow(datasets, capsys, tmp_path):
    table = arrow(datasets["corpus"], True).to_table()
    result = stats.compute_stats(datasets["corpus"])
    assert result["tunes"] == table.num_rows == 600
    for key in ("meter", "mode", "valid"):
        counted = {r["values"]: r["counts"] for r in pc.value_counts(table.column(key)).to_pylist()}
        assert dict(map(tuple, result[key])) == counted
    lengths = table.column("length").to_pylist()
    assert sum(n for _, n in result["length"]["bins"]) == 600
    assert result["length"]["min"] == min(lengths) and result["length"]["max"] == max(lengths)
    tokens = pc.list_flatten(table.column("tokens"))
    assert result["tokens"]["total"] == len(tokens)
    top_token, top_count = result["tokens"]["top"][0]
    assert top_count == pc.sum(pc.equal(tokens, top_token)).as_py()

    parser = argparse.ArgumentParser()
    stats.add_arguments(parser)
    capsys.readouterr()
    plot = tmp_path / "stats.png"
    assert stats.run(parser.parse_args([datasets["corpus"], "--where", "volume <= 3", "--plot", str(plot)])) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{datasets['corpus']}: 300 tunes where volume <= 3")
    for heading in ("valid", "meter", "mode", "form (", "length in tokens:", "tokens: "):
        assert f"\n{heading}" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UsageError, match="unknown column 'nope'"):
        stats.run(parser.parse_args([datasets["corpus"], "--where", "nope"]))
