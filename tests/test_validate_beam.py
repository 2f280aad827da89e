"""``folkrnn validate DATASET --runner ...``: the validator as a Beam pipeline, one element per shard.

The same shards as the local path, byte for byte, and the same summary: on the FnApiRunner with two
worker processes (which pickles every DoFn as a remote runner does), and on an object store
(``memfs://``, tests/memfs.py: a Beam filesystem that behaves as ``gs://`` does, reached through
``FileSystems`` like gs:// is).
"""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from folkrnn.pipeline.validate import validate_dataset
from folkrnn.schemas.tables import VALIDATED
from tests.memfs import MemoryFileSystem, upload_folder
from tests.test_validate_cli import JIG, REEL, TUNES_TEXT, WALTZ, generated_row, read_bytes, write_generated

MULTI_PROCESS = ("--runner", "DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing")


@pytest.fixture
def dataset(tmp_path) -> str:
    """Five shards of generated tunes (one truncated tune, one empty shard)."""
    texts = TUNES_TEXT + [REEL, JIG, WALTZ]
    rows = [generated_row(n, text) for n, text in enumerate(texts)] + [generated_row(len(texts), REEL, True)]
    folder = str(tmp_path / "run" / "generated")
    write_generated(folder, [rows[:3], rows[3:5], rows[5:8], [], rows[8:]])
    return folder


@pytest.fixture
def memfs():
    MemoryFileSystem.clear()
    yield MemoryFileSystem.objects
    MemoryFileSystem.clear()


def copy_of(folder: str, name: str) -> str:
    target = os.path.join(os.path.dirname(os.path.dirname(folder)), name, "generated")
    shutil.copytree(folder, target)
    return target


def printed(result, folder: str) -> str:
    return result.stdout.replace(folder, "DATASET")


def test_beam_validate_on_two_worker_processes_writes_the_local_bytes(dataset, folkrnn_main) -> None:
    on_beam = copy_of(dataset, "beam")
    rows_in = sum(pq.read_metadata(os.path.join(dataset, name)).num_rows for name in os.listdir(dataset))

    local = folkrnn_main("validate", dataset, "--quiet", "--json", os.path.join(dataset, "..", "local.json"))
    beam = folkrnn_main("validate", on_beam, *MULTI_PROCESS, "--json", os.path.join(on_beam, "..", "beam.json"))

    assert (local.returncode, beam.returncode) == (0, 0), beam.stderr
    assert read_bytes(on_beam) == read_bytes(dataset)  # every shard, the same bytes; no temporary file left
    assert printed(beam, on_beam) == printed(local, dataset)
    summary = json.load(open(os.path.join(on_beam, "..", "beam.json")))
    assert summary == {**json.load(open(os.path.join(dataset, "..", "local.json"))), "dataset": on_beam}
    # counts add up: every row read is a row written and a tune summarised
    rows_out = sum(pq.read_table(os.path.join(on_beam, name)).num_rows for name in os.listdir(on_beam))
    assert summary["rows"] == summary["tunes"] == rows_in == rows_out == 9
    assert sum(m["tunes"] for m in summary["by_meter"].values()) == rows_in
    assert summary["shards"] == 5 and summary["written"] is True
    assert all(pq.read_schema(os.path.join(on_beam, name)).equals(VALIDATED) for name in os.listdir(on_beam))


def test_beam_validate_rewrites_the_shards_of_an_object_store(dataset, memfs, folkrnn_main) -> None:
    upload_folder(os.path.dirname(dataset), "memfs://bucket/run")
    expected = validate_dataset(dataset)  # the local path, on the local copy

    result = folkrnn_main("validate", "memfs://bucket/run", "--runner", "DirectRunner")  # finds run/generated/

    assert result.returncode == 0, result.stderr
    assert "9 tunes in 5 shard(s) of memfs://bucket/run/generated; findings written" in result.stdout
    local = read_bytes(dataset)
    assert {name.rsplit("/", 1)[1]: data for name, data in memfs.items()} == local  # nothing else left
    assert sorted(memfs) == [f"memfs://bucket/run/generated/{name}" for name in sorted(local)]
    assert f"tunes: {expected['tunes']}   valid: {expected['valid']} " in result.stdout


@pytest.mark.parametrize("refuse_overwrite", [False, True], ids=["gs-like", "hdfs-like"])
def test_each_shard_is_replaced_whole_on_an_object_store(dataset, memfs, folkrnn_main, refuse_overwrite) -> None:
    upload_folder(dataset, "memfs://bucket/generated")
    MemoryFileSystem.refuse_overwrite = refuse_overwrite

    result = folkrnn_main("validate", "memfs://bucket/generated", "--runner", "DirectRunner")

    assert result.returncode == 0, result.stderr
    assert {name.rsplit("/", 1)[1]: data for name, data in memfs.items()} == read_bytes_validated(dataset)
    shards_deleted = [name for name in MemoryFileSystem.deleted if name.rsplit("/", 1)[1].startswith("part-")]
    # where a rename replaces (gs://) a shard is never absent; elsewhere it is deleted just before the rename
    assert len(shards_deleted) == (5 if refuse_overwrite else 0)


def read_bytes_validated(dataset: str) -> dict[str, bytes]:
    validate_dataset(dataset)
    return read_bytes(dataset)


def test_beam_validate_summary_only_writes_nothing(dataset, memfs, folkrnn_main) -> None:
    upload_folder(dataset, "memfs://bucket/generated")
    before = dict(memfs)

    result = folkrnn_main("validate", "memfs://bucket/generated", "--runner", "DirectRunner", "--summary-only")

    assert result.returncode == 0, result.stderr
    assert "nothing written (--summary-only)" in result.stdout
    assert memfs == before


def test_a_bad_shard_is_one_line_and_the_other_shards_are_validated(dataset, memfs, folkrnn_main) -> None:
    with open(os.path.join(dataset, "part-00002.parquet"), "wb") as handle:
        handle.write(b"not parquet")
    upload_folder(dataset, "memfs://bucket/generated")

    result = folkrnn_main("validate", "memfs://bucket/generated", "--runner", "DirectRunner")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("folkrnn validate: error: memfs://bucket/generated/part-00002.parquet is not a "
                                "readable Parquet file"), result.stderr
    assert memfs["memfs://bucket/generated/part-00002.parquet"] == b"not parquet"
    good = pq.read_table(memfs_file(memfs, "memfs://bucket/generated/part-00000.parquet"))
    assert good.schema.equals(VALIDATED)


def memfs_file(memfs: dict, name: str):
    import pyarrow as pa

    return pa.BufferReader(memfs[name])


@pytest.mark.parametrize("argv, message", [
    (["--runner", "DirectRunner", "--workers", "2"], "--workers is for a local run"),
    (["--direct_num_workers=2"], "Beam flags (--direct_num_workers=2) need --runner"),
])
def test_runner_mistakes_are_one_line(dataset, folkrnn_main, argv, message) -> None:
    before = read_bytes(dataset)
    result = folkrnn_main("validate", dataset, *argv)
    assert result.returncode == 2
    assert result.stderr.startswith(f"folkrnn validate: error: {message}") and result.stderr.count("\n") == 1
    assert read_bytes(dataset) == before


@pytest.mark.parametrize("dataset_url, message", [
    ("memfs://bucket/nothing", "no such dataset: memfs://bucket/nothing"),
    ("memfs://bucket/other", "memfs://bucket/other holds no part-*.parquet shards"),
    ("memfs://bucket/other/notes.txt", "memfs://bucket/other/notes.txt is not a folder"),
])
def test_a_missing_remote_dataset_is_one_line(memfs, folkrnn_main, dataset_url, message) -> None:
    memfs["memfs://bucket/other/notes.txt"] = b"x"
    result = folkrnn_main("validate", dataset_url, "--runner", "DirectRunner")
    assert result.returncode == 2
    assert result.stderr.startswith(f"folkrnn validate: error: {message}"), result.stderr
