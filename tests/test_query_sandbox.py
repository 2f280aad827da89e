"""Issue 13, item 2: a --where condition (query, stats, compile; train since issue 16) sees the
dataset and nothing else.

Each payload that read a file, a URL or undid the settings before the fix is refused with one line
that names no file contents and says the condition may only use the dataset's columns; partition
pruning still keeps other volumes' files closed; ordinary conditions still work.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import struct
import subprocess
import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from folkrnn.pipeline import datasets, query, stats
from folkrnn.pipeline import train as train_command
from folkrnn.schemas.errors import UsageError
from tests.conftest import folkrnn, folkrnn_env
from tests.test_books import generated_table, run_compile, write_dataset

SECRET = "folkrnn-secret-7f3a9c"
TUNES = 120
PER_VOLUME = 20


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated dataset (3 shards), the same tunes as a hive-partitioned corpus (volume=N/) and a
    file that no condition may read."""
    root = tmp_path_factory.mktemp("sandbox")
    generated = write_dataset(str(root / "generated"), range(1, TUNES + 1), shards=3)
    table = ds.dataset(generated).to_table().sort_by("number")
    volume = pc.add(pc.divide(pc.subtract(table.column("number"), 1), PER_VOLUME), 1).cast(pa.int32())
    ds.write_dataset(table.append_column("volume", volume), str(root / "corpus"), format="parquet",
                     partitioning=ds.partitioning(pa.schema([("volume", pa.int32())]), flavor="hive"))
    secret = root / "secret.txt"
    secret.write_text(SECRET + "\n")
    # the same tunes as an ingest's output folder (token_ids and a split column), for train --where
    os.makedirs(root / "ingest" / "tunes")
    split = pa.array(["valid" if n % 10 == 0 else "train" for n in table.column("number").to_pylist()])
    pq.write_table(table.append_column("split", split), root / "ingest" / "tunes" / "part-0.parquet")
    return {"generated": generated, "corpus": str(root / "corpus"), "secret": str(secret), "root": root,
            "table": table, "ingest": str(root / "ingest")}


def payloads(secret: str, out: str) -> list[str]:
    """Conditions that reach outside the dataset: files, URLs, other tables, statements, settings."""
    return [
        f"CAST((SELECT content FROM read_text('{secret}')) AS INTEGER)=1",  # the issue's payload
        f"(SELECT count(*) FROM read_csv('{secret}')) > 0",
        f"(SELECT count(*) FROM read_csv_auto('{secret}')) > 0",
        f"(SELECT count(*) FROM read_parquet('{secret}')) > 0",
        f"(SELECT count(*) FROM read_json('{secret}')) > 0",
        f"(SELECT count(*) FROM read_blob('{secret}')) > 0",
        f"(SELECT count(*) FROM parquet_scan('{secret}')) > 0",
        f"(SELECT count(*) FROM sniff_csv('{secret}')) > 0",
        f"(SELECT count(*) FROM glob('{os.path.dirname(secret)}/*')) > 0",
        f"(SELECT count(*) FROM '{secret}') > 0",  # a path as a table name
        f"(SELECT count(*) FROM query_table('{secret}')) > 0",
        '(SELECT count(*) FROM "table") > 0',  # a Python variable (filter_table's own) as a table
        "(SELECT count(*) FROM read_parquet('s3://folkrnn-test/x.parquet')) > 0",
        f"valid; COPY (SELECT 1) TO '{out}'",
        f"valid; ATTACH '{out}'",
        "valid; INSTALL httpfs",
        "valid; LOAD httpfs",
        "valid; SET enable_external_access = true",
        "valid; RESET lock_configuration",
        "valid; PRAGMA disable_checkpoint_on_shutdown",
        f"valid) UNION SELECT content FROM read_text('{secret}') --",
        "(SELECT count(*) FROM query('SET lock_configuration = false')) > 0",
    ]


PAYLOAD_IDS = ["read_text", "read_csv", "read_csv_auto", "read_parquet", "read_json", "read_blob", "parquet_scan",
               "sniff_csv", "glob", "path_as_table", "query_table", "python_variable", "s3", "copy", "attach",
               "install", "load", "set", "reset", "pragma", "union_breakout", "query_set"]


def query_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    query.add_arguments(parser)
    return parser.parse_args(list(argv))


def assert_refused(err: pytest.ExceptionInfo, out: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert SECRET not in message
    assert "the dataset's columns" in message, message
    assert not os.path.exists(out)


def refused_by_query(data, where: str) -> None:
    query.run(query_args(data["corpus"], "--where", where))


def refused_by_stats(data, where: str) -> None:
    stats.compute_stats(data["corpus"], where)


def refused_by_filter_table(data, where: str) -> None:  # compile --where
    datasets.filter_table(data["table"], where)


def refused_by_train(data, where: str) -> None:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    out = data["root"] / "train-run"
    try:
        train_command.run(parser.parse_args([data["ingest"], "--where", where, "--out", str(out), "--layers", "1",
                                             "--units", "8", "--max-steps", "1", "--quiet"]))
    finally:
        assert not out.exists()  # refused before the run folder was made


COMMANDS = {"query": refused_by_query, "stats": refused_by_stats, "compile": refused_by_filter_table,
            "train": refused_by_train}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("index", range(len(PAYLOAD_IDS)), ids=PAYLOAD_IDS)
def test_where_cannot_reach_outside_the_dataset(data, capsys, command, index, tmp_path):
    out = str(tmp_path / "written")
    where = payloads(data["secret"], out)[index]
    with pytest.raises(UsageError) as err:
        COMMANDS[command](data, where)
    assert_refused(err, out)
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err


def test_the_issue_payload_leaks_the_file_without_the_sandbox(data):
    """The defect the sandbox closes: a plain DuckDB connection prints the file in its error."""
    with pytest.raises(duckdb.Error, match=SECRET):
        duckdb.connect().from_arrow(data["table"]).filter(
            f"CAST((SELECT content FROM read_text('{data['secret']}')) AS INTEGER)=1").fetchall()


def test_the_connection_cannot_be_unlocked():
    con = datasets.connect()
    for statement in ("SET enable_external_access = true", "RESET enable_external_access",
                      "SET autoinstall_known_extensions = true", "SET autoload_known_extensions = true",
                      "SET lock_configuration = false", "RESET lock_configuration", "RESET ALL",
                      "SET allowed_directories = ['/']", "LOAD httpfs"):
        with pytest.raises(duckdb.Error):
            con.execute(statement)
    settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
                                "'autoinstall_known_extensions', 'autoload_known_extensions', "
                                "'lock_configuration')").fetchall())
    assert settings == {"enable_external_access": "false", "autoinstall_known_extensions": "false",
                        "autoload_known_extensions": "false", "lock_configuration": "true"}


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        CountingHandler.requests.append(self.path)
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        CountingHandler.requests.append(self.path)
        super().do_HEAD()

    def log_message(self, *args) -> None:
        pass


def test_http_paths_are_not_fetched(data, tmp_path):
    """A server on 127.0.0.1 holds the secret as text and as Parquet; no condition reaches it."""
    shutil.copy(data["secret"], tmp_path / "secret.txt")
    shutil.copy(os.path.join(data["generated"], "part-00000.parquet"), tmp_path / "part.parquet")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for where in (f"CAST((SELECT content FROM read_text('{base}/secret.txt')) AS INTEGER)=1",
                      f"(SELECT count(*) FROM read_csv('{base}/secret.txt')) > 0",
                      f"(SELECT count(*) FROM '{base}/part.parquet') > 0"):
            for run in COMMANDS.values():
                with pytest.raises(UsageError) as err:
                    run(data, where)
                assert_refused(err, str(tmp_path / "none"))
                assert "disabled by configuration" in str(err.value)
    finally:
        server.shutdown()
        server.server_close()
    assert CountingHandler.requests == []


def run_cli(*argv: str, home: str) -> subprocess.CompletedProcess:
    """The real entry point, with a fresh HOME (DuckDB keeps extensions in ~/.duckdb) and proxies that
    go nowhere, so any attempt to download an extension would show."""
    nowhere = "http://127.0.0.1:9"
    return folkrnn(*argv, timeout=120, env=folkrnn_env(HOME=home, http_proxy=nowhere, https_proxy=nowhere,
                                                       HTTP_PROXY=nowhere, HTTPS_PROXY=nowhere))


def test_cli_refuses_in_one_line_with_exit_2(data, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    read_secret = f"CAST((SELECT content FROM read_text('{data['secret']}')) AS INTEGER)=1"
    from_url = "(SELECT count(*) FROM read_csv('http://folkrnn.invalid/tunes.csv')) > 0"
    cases = [
        ("query", data["corpus"], "--where", read_secret),
        ("query", data["corpus"], "--where", from_url),
        ("stats", data["corpus"], "--where", from_url),
        ("compile", data["generated"], "--out", str(tmp_path / "out"), "--no-pdf", "--quiet", "--where", read_secret),
    ]
    for argv in cases:
        proc = run_cli(*argv, home=str(home))
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "apitools" not in line]
        assert len(lines) == 1 and lines[0].startswith(f"folkrnn {argv[0]}: error: --where may only use the "
                                                       "dataset's columns: Permission Error"), lines
        assert SECRET not in proc.stdout + proc.stderr
    assert os.listdir(home) == []  # no ~/.duckdb/extensions: httpfs was neither installed nor fetched
    assert not (tmp_path / "out" / "volumes").exists()


def corrupt_data_pages(path: str) -> None:
    """Zero a Parquet file's data pages and keep its footer: listing it works, reading it fails."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 8)
        footer = struct.unpack("<i", f.read(4))[0]
        f.seek(4)
        f.write(b"\0" * (size - 8 - footer - 4))


def test_partition_pruning_keeps_other_volumes_closed(data, tmp_path):
    corpus = shutil.copytree(data["corpus"], tmp_path / "corpus")
    for volume in (1, 2, 4, 5, 6):
        for name in os.listdir(corpus / f"volume={volume}"):
            corrupt_data_pages(str(corpus / f"volume={volume}" / name))
    got = datasets.select(str(corpus), where="volume = 3 AND meter = '6/8'", columns=["number", "volume", "meter"])
    expected = [n for n in range(41, 61) if data["table"].column("meter")[n - 1].as_py() == "6/8"]
    assert got.column("number").to_pylist() == expected and expected
    assert stats.compute_stats(str(corpus), "volume = 3")["tunes"] == PER_VOLUME
    with pytest.raises(UsageError, match="cannot read the dataset's Parquet files"):  # the others are unreadable
        datasets.select(str(corpus), where="volume = 2")


def expected_numbers(table: pa.Table, keep) -> list[int]:
    return [row["number"] for row in table.to_pylist() if keep(row)]


LEGITIMATE = [
    ("meter = '6/8' AND valid", lambda r: r["meter"] == "6/8" and r["valid"], True),
    ("len(tokens) > 100", lambda r: len(r["tokens"]) > 100, True),
    ("len(tokens) > 200", lambda r: len(r["tokens"]) > 200, False),
    ("list_contains(reasons, 'bar_too_short')", lambda r: "bar_too_short" in r["reasons"], True),
    ("list_contains(reasons, 'bar_too_long')", lambda r: "bar_too_long" in r["reasons"], False),
    ("title ILIKE '%reel%'", lambda r: "reel" in r["title"].lower(), True),
    ("regexp_matches(title, '^The [A-Z]')", lambda r: r["title"].startswith("The ") and r["title"][4].isupper(), True),
]


@pytest.mark.parametrize("where,keep,nonempty", LEGITIMATE, ids=[c[0] for c in LEGITIMATE])
def test_legitimate_conditions_still_work(data, where, keep, nonempty):
    expected = expected_numbers(data["table"], keep)
    assert bool(expected) or not nonempty
    for path in (data["generated"], data["corpus"]):
        assert datasets.select(path, where=where, columns=["number"]).column("number").to_pylist() == expected
    assert stats.compute_stats(data["corpus"], where)["tunes"] == len(expected)
    assert datasets.filter_table(data["table"], where).column("number").to_pylist() == expected
    if expected:
        tunes = train_command.load_training_tunes(data["ingest"], where, 0.05, False)
        assert len(tunes.train) + len(tunes.valid) == len(expected)


def test_compile_where_keeps_its_selection(data, tmp_path):
    out = tmp_path / "out"
    assert run_compile(data["generated"], "--out", str(out), "--where", "title ILIKE '%reel%' AND valid",
                       "--per-volume", "50", "--no-pdf", "--quiet") == 0
    corpus = ds.dataset(str(out / "corpus"), partitioning="hive").to_table().sort_by("number")
    assert corpus.column("number").to_pylist() == expected_numbers(
        data["table"], lambda r: "reel" in r["title"].lower() and r["valid"])


def test_filter_table_keeps_arrow_types():
    table = generated_table([1, 2, 3])
    got = datasets.filter_table(table, "number >= 2")
    assert got.schema == table.schema and got.column("number").to_pylist() == [2, 3]


def test_files_with_different_columns_are_read_by_name(tmp_path):
    """As DuckDB's union_by_name did: a missing column is null, int32 and int64 numbers meet."""
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"number": pa.array([2, 1], pa.int32()), "title": ["b", "a"]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"number": pa.array([3], pa.int64()), "valid": [True]}), tmp_path / "part-1.parquet")
    assert datasets.select(str(tmp_path)).to_pylist() == [
        {"number": 1, "title": "a", "valid": None}, {"number": 2, "title": "b", "valid": None},
        {"number": 3, "title": None, "valid": True}]
    assert datasets.select(str(tmp_path), where="valid").column("number").to_pylist() == [3]
    (tmp_path / "part-2.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match=r"^cannot read .* as Parquet: ") as err:
        datasets.select(str(tmp_path))
    assert "\n" not in str(err.value)
