"""Issue 13, ingest: a re-ingest never destroys the previous output; one bad record never ends a run;
I/O failures are one line naming the path; folk-rnn text is recognised; summary keys stay whole;
a file named twice is read once; long CSV fields are read.

Real parts throughout: the CLI in-process or as a subprocess, killed with SIGKILL, under a file-size
limit (RLIMIT_FSIZE binds root too, where chmod does not), or on a real read-only or full tmpfs
mounted in a private mount namespace (``unshare``) that vanishes with the process.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from folkrnn.pipeline import cli
from folkrnn.pipeline.run_ingest import JOURNAL, commit_staging, os_error_of, remove_leftovers
from folkrnn.transforms.abc.split import looks_like_folkrnn_text
from folkrnn.transforms.sources import split_json_array
from tests.conftest import FIXTURES, ROOT, folkrnn, folkrnn_env, start_folkrnn

TABLES = ("tunes", "duplicates", "rejects")
NOTES = "CDEFGABcdefgab"


# --- helpers ----------------------------------------------------------------------------------------
def abc_tunes(count: int, start: int = 1) -> str:
    """``count`` different reels (the first bar spells the tune's number in notes)."""
    tunes = []
    for n in range(start, start + count):
        digits, m = [], n
        for _ in range(4):
            digits.append(NOTES[m % 14])
            m //= 14
        bars = ["".join(digits) + "GABc"] + [
            "".join(NOTES[(n * (b + 3) + k * (b + 1)) % 14] for k in range(8)) for b in range(7)]
        tunes.append(f"X:{n}\nT:Tune {n}\nM:4/4\nL:1/8\nK:G\n|:" + "|".join(bars) + ":|\n")
    return "\n".join(tunes)


def write(path, text: str) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


def fixture_copy(tmp_path, name: str = "collection.abc", to: str | None = None) -> str:
    target = os.path.join(str(tmp_path), to or name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(os.path.join(FIXTURES, name), target)
    return target


def ingest(capsys, *argv: str) -> tuple[int, str, str]:
    """``folkrnn ingest`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(["ingest", *argv, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folder_bytes(folder) -> dict[str, bytes]:
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def summary_of(out) -> dict:
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def assert_summary_counts_the_shards(out) -> dict:
    """The summary next to the tables counts exactly their rows, and its counts add up."""
    summary = summary_of(out)
    rows = {name: pq.read_table(os.path.join(out, name)).num_rows for name in TABLES}
    assert (summary["kept"], summary["duplicates"], summary["rejected"]) == (
        rows["tunes"], rows["duplicates"], rows["rejects"])
    assert summary["read"] == summary["kept"] + summary["duplicates"] + summary["rejected"]
    return summary


def rows_of(out, table: str) -> list[dict]:
    return pq.read_table(os.path.join(out, table)).to_pylist()


# --- 1: a re-ingest never destroys the previous output ----------------------------------------------
def first_ingest(tmp_path, capsys) -> str:
    """An ingest of the test collection in 3 shards, with the folk-rnn text and a scraping cache."""
    out = str(tmp_path / "X")
    code, _, err = ingest(capsys, fixture_copy(tmp_path), "--out", out, "--num-shards", "3",
                          "--write-folkrnn-text")
    assert code == 0, err
    write(os.path.join(out, "http-cache", "cached-page"), "a cached response")  # must survive every run
    return out


def test_a_reingest_that_fails_writing_leaves_the_previous_output(tmp_path, capsys):
    out = first_ingest(tmp_path, capsys)
    before = folder_bytes(out)
    big = write(tmp_path / "big.abc", abc_tunes(400))
    limit = 16_000  # bytes: the first ingest's files are smaller, the new tunes shard is larger
    run = folkrnn("ingest", big, "--out", out, "--quiet", max_file_size=limit)
    stderr = run.stderr
    assert run.returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    # the file that could not be written: the tunes shard, or a sorted run on its way there
    assert re.fullmatch(rf"folkrnn ingest: error: {re.escape(out)}/\.staging-[0-9a-f]{{12}}/"
                        r"(tunes/part-00000-of-00001\.parquet|\.runs/tunes/[0-9a-f]{32}\.arrow): File too large\n",
                        stderr), stderr
    assert folder_bytes(out) == before  # the old output whole, the staging folder gone
    summary = assert_summary_counts_the_shards(out)
    assert (summary["read"], summary["kept"]) == (5, 3)


def test_kill_9_during_a_reingest_keeps_the_previous_output_and_the_next_run_replaces_it(tmp_path, capsys):
    out = first_ingest(tmp_path, capsys)
    before = folder_bytes(out)
    big = write(tmp_path / "big.abc", abc_tunes(2000))
    run = start_folkrnn("ingest", big, "--out", out, "--quiet")
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(".staging-") for n in os.listdir(out)):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the ingest made no staging folder"
            time.sleep(0.01)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    left = {k: v for k, v in folder_bytes(out).items() if not k.startswith(".staging-")}
    assert left == before  # X reads as the first ingest
    assert_summary_counts_the_shards(out)

    # the next run: one shard instead of three, no folk-rnn text; the killed run's leftovers go
    second = write(tmp_path / "second.abc", abc_tunes(7, start=100))
    code, stdout, err = ingest(capsys, second, "--out", out, "--num-shards", "1")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["duplicates", "http-cache", "rejects", "summary.json", "tunes"]
    for table in TABLES:
        assert os.listdir(os.path.join(out, table)) == ["part-00000-of-00001.parquet"]
    summary = assert_summary_counts_the_shards(out)
    assert (summary["read"], summary["kept"], summary["duplicates"], summary["rejected"]) == (7, 7, 0, 0)
    assert "ingest: 7 tunes read, 7 kept" in stdout
    assert folder_bytes(os.path.join(out, "http-cache")) == {"cached-page": b"a cached response"}


def test_a_commit_cut_short_is_finished_by_the_next_run(tmp_path, capsys):
    """The move of a staged run fails half way (a real rename error); the next run completes it."""
    out = first_ingest(tmp_path, capsys)
    staged_run = str(tmp_path / "B")
    code, _, err = ingest(capsys, write(tmp_path / "b.abc", abc_tunes(4)), "--out", staged_run)
    assert code == 0, err
    staging = os.path.join(out, ".staging-0123456789ab")
    shutil.copytree(staged_run, staging)
    obstacle = os.path.join(out, ".replaced-0123456789ab", "duplicates")
    os.makedirs(obstacle)
    write(os.path.join(obstacle, "in-the-way"), "x")
    with pytest.raises(OSError):  # "Directory not empty": moving the old duplicates/ aside
        commit_staging(staging, out)
    assert os.path.exists(os.path.join(out, JOURNAL))
    assert folder_bytes(os.path.join(out, "tunes")) == folder_bytes(os.path.join(staged_run, "tunes"))

    shutil.rmtree(obstacle)  # the cause is gone; the next run (under its lock) first does this:
    remove_leftovers(out)
    assert {k: v for k, v in folder_bytes(out).items() if not k.startswith("http-cache")} == \
        folder_bytes(staged_run)
    assert sorted(os.listdir(out)) == ["duplicates", "http-cache", "rejects", "summary.json", "tunes"]
    assert_summary_counts_the_shards(out)


def test_the_object_store_commit_replaces_every_table_file(tmp_path):
    """gs:// has no folders to rename: the staged files are moved one by one (run here on local paths)."""
    from folkrnn.pipeline.run_ingest import commit_remote

    out, staging = str(tmp_path / "X"), str(tmp_path / "X" / ".staging-0123456789ab")
    for name in ("part-00000-of-00002.parquet", "part-00001-of-00002.parquet"):
        write(os.path.join(out, "tunes", name), "old")
    write(os.path.join(out, "summary.json"), "old")
    write(os.path.join(out, "tunes.folkrnn.txt"), "old")
    write(os.path.join(staging, "tunes", "part-00000-of-00001.parquet"), "new")
    write(os.path.join(staging, "summary.json"), "new")
    commit_remote(staging, out)
    assert folder_bytes(out) == {"tunes/part-00000-of-00001.parquet": b"new", "summary.json": b"new"}
    assert sorted(os.listdir(out)) == ["summary.json", "tunes"]


def test_a_second_ingest_into_the_same_folder_is_refused(tmp_path, capsys):
    out = str(tmp_path / "X")
    os.makedirs(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running ingest holds it
        code, _, err = ingest(capsys, fixture_copy(tmp_path), "--out", out)
    finally:
        os.close(fd)
    assert code == 2
    assert err == f"folkrnn ingest: error: another folkrnn ingest is writing to {out}: wait for it to end or " \
                  "give another --out\n"
    assert os.listdir(out) == []


# --- 5: one bad record never ends a run -------------------------------------------------------------
def dump_row(number: int, body: str) -> dict:
    return {"tune_id": number, "setting_id": number * 10, "name": f"Dump tune {number}", "type": "reel",
            "meter": "4/4", "mode": "Gmajor", "abc": body}


def test_json_nested_100000_deep_is_one_reject_and_the_rest_goes_on(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    rows = [json.dumps(dump_row(1, "|:GABc dedB|dedB dedB:|")), deep, json.dumps(dump_row(3, "|:ABcd edcB|ABcd e2e2:|"))]
    sources = [
        write(tmp_path / "deep.json", deep),  # the payload: the whole file
        write(tmp_path / "rows.json", "[" + ", ".join(rows) + "]"),  # one element of an array
        write(tmp_path / "lines.jsonl", "\n".join(rows) + "\n"),  # one line of JSON lines
        fixture_copy(tmp_path),
    ]
    out = str(tmp_path / "out")
    code, _, err = ingest(capsys, *sources, "--out", out)
    assert code == 0, err
    rejects = sorted((os.path.basename(r["source"]), r["position"], r["reason"], r["detail"])
                     for r in rows_of(out, "rejects") if r["source"].endswith(("json", "jsonl")))
    assert [r[:3] for r in rejects] == [("deep.json", 0, "unparseable"), ("lines.jsonl", 1, "unparseable"),
                                        ("rows.json", 1, "unparseable")]
    assert all("nested deeper than the JSON reader allows" in r[3] for r in rejects)
    kept = {(os.path.basename(r["source"]), r["position"]) for r in rows_of(out, "tunes") + rows_of(out, "duplicates")}
    assert {("rows.json", 0), ("rows.json", 2), ("lines.jsonl", 0), ("lines.jsonl", 2)} <= kept
    summary = assert_summary_counts_the_shards(out)
    assert summary["read"] == 1 + 3 + 3 + 5


def test_a_row_with_a_column_that_is_not_text_is_one_reject(tmp_path, capsys):
    rows = [dump_row(1, "|:GABc dedB|dedB dedB:|"), {**dump_row(2, "|:ABcd edcB|ABcd e2e2:|"), "name": [[["x"]]]}]
    out = str(tmp_path / "out")
    code, _, err = ingest(capsys, write(tmp_path / "d.json", json.dumps(rows)), "--out", out)
    assert code == 0, err
    assert [(r["position"], r["reason"]) for r in rows_of(out, "rejects")] == [(1, "bad_column")]
    assert [r["title"] for r in rows_of(out, "tunes")] == ["Dump tune 1"]
    assert assert_summary_counts_the_shards(out)["read"] == 2


def test_json_arrays_are_split_without_parsing_their_elements():
    assert split_json_array('[1, "a,]", {"x": [1, 2]}, [[[]]]]') == ["1", ' "a,]"', ' {"x": [1, 2]}', " [[[]]]"]
    assert split_json_array("[]") == [] and split_json_array(" [ ] ".strip()) == []
    assert split_json_array("[1] trailing") is None and split_json_array("[[1]") is None
    assert split_json_array("{}") is None


# --- 8: I/O failures are one line naming the path ---------------------------------------------------
def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    not_a_folder = write(tmp_path / "file", "x")
    code, _, err = ingest(capsys, fixture_copy(tmp_path), "--out", not_a_folder)
    assert code == 2
    assert err == f"folkrnn ingest: error: --out {not_a_folder} is a file, not a folder: give a folder for " \
                  "the tables\n"
    code, _, err = ingest(capsys, fixture_copy(tmp_path), "--out", os.path.join(not_a_folder, "X"))
    assert code == 2
    assert err == f"folkrnn ingest: error: {not_a_folder}/X: Not a directory\n"


UNSHARED = r"""
set -u
mount -t tmpfs -o size=64k tmpfs "$DISK" || exit 90
listing() { python -c "
import hashlib, os, sys
for root, _, files in sorted(os.walk(sys.argv[1])):
    for name in sorted(files):
        path = os.path.join(root, name)
        print(path, hashlib.sha256(open(path, 'rb').read()).hexdigest())
" "$DISK/X"; }
python -m folkrnn.pipeline.cli ingest "$SMALL" --out "$DISK/X" --quiet > /dev/null || exit 91
listing > "$DISK/../before.txt"
if [ "$HOW" = read-only ]; then mount -o remount,ro "$DISK" || exit 92; fi
python -m folkrnn.pipeline.cli ingest "$BIG" --out "$DISK/X" --quiet
echo "exit $?" > "$DISK/../exit.txt"
listing > "$DISK/../after.txt"
python -c "
import json, sys, pyarrow.parquet as pq
out = sys.argv[1]
summary = json.load(open(out + '/summary.json'))
rows = [pq.read_table(out + '/' + name).num_rows for name in ('tunes', 'duplicates', 'rejects')]
assert [summary['kept'], summary['duplicates'], summary['rejected']] == rows and summary['read'] == sum(rows)
" "$DISK/X" || exit 93
"""


@pytest.mark.parametrize("how, cause", [
    ("read-only", r"/X: Read-only file system \(the file system is read-only: choose another folder\)"),
    ("full", r"/X/\.staging-[0-9a-f]{12}/(tunes/part-00000-of-00001\.parquet|\.runs/tunes/[0-9a-f]{32}\.arrow): "
             r"No space left on device \(free some space or choose another disk\)"),
], ids=["read-only", "full"])
def test_a_read_only_or_full_disk_is_one_line_and_the_previous_output_stays(tmp_path, how, cause):
    """A real tmpfs of 64 KB in a private mount namespace: an ingest fits, the next one does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = folkrnn_env(DISK=str(disk), HOW=how, SMALL=fixture_copy(tmp_path), BIG=write(tmp_path / "big.abc", abc_tunes(2000)),
                      PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", UNSHARED], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert (tmp_path / "exit.txt").read_text() == "exit 2\n"
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.fullmatch(f"folkrnn ingest: error: {re.escape(str(disk))}{cause}\n", done.stderr), done.stderr
    assert (tmp_path / "after.txt").read_text() == (tmp_path / "before.txt").read_text()  # old output whole
    assert os.listdir(disk) == []  # the tmpfs went with its namespace


def test_an_os_error_in_a_worker_process_still_names_its_path():
    """Multi-process runners pass a worker's error on as its traceback's text only."""
    text = ("Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space left on device\n\n"
            "The above exception was the direct cause of the following exception:\n\n"
            "OSError: [Errno 28] No space left on device: '/data/X/.staging-0123456789ab/tunes/part-0.parquet' "
            "[while running 'Write_tunes/WriteParquet']")
    err = os_error_of(RuntimeError(text))
    assert (err.errno, err.strerror, err.filename) == (28, "No space left on device",
                                                      "/data/X/.staging-0123456789ab/tunes/part-0.parquet")
    chained = OSError(13, "Permission denied", "/x")
    try:
        raise RuntimeError("wrapped") from chained
    except RuntimeError as wrapped:
        assert os_error_of(wrapped) is chained
    assert os_error_of(RuntimeError("no I/O here")) is None


def test_the_folkrnn_text_file_is_written_atomically(tmp_path, capsys):
    out = str(tmp_path / "out")
    code, _, err = ingest(capsys, fixture_copy(tmp_path), "--out", out, "--write-folkrnn-text")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["duplicates", "rejects", "summary.json", "tunes", "tunes.folkrnn.txt"]
    text = open(os.path.join(out, "tunes.folkrnn.txt"), encoding="utf-8").read()
    assert text.count("\n\n") == summary_of(out)["kept"] - 1


# --- 14: folk-rnn text is recognised without --format -----------------------------------------------
def test_folkrnn_text_without_the_format_flag_is_read_as_folkrnn_text(tmp_path, capsys):
    source = fixture_copy(tmp_path, "corpus.folkrnn.txt", to="tunes.txt")
    detected, named = str(tmp_path / "detected"), str(tmp_path / "named")
    code, stdout, err = ingest(capsys, source, "--out", detected)
    assert code == 0, err
    code, _, err = ingest(capsys, source, "--out", named, "--format", "folkrnn-text")
    assert code == 0, err

    def tokens(out: str) -> list:
        return sorted((r["position"], r["tokens"]) for r in rows_of(out, "tunes"))

    assert tokens(detected) == tokens(named) and len(tokens(detected)) == 2
    assert [r["reason"] for r in rows_of(detected, "rejects")] == ["token_not_in_vocab"]
    assert summary_of(detected)["read_as_folkrnn_text"] == {source: 3}
    assert summary_of(named)["read_as_folkrnn_text"] == {}
    assert f"read as folk-rnn text (recognised by its layout): {source} (3 tunes)" in stdout
    assert assert_summary_counts_the_shards(detected)["read"] == 3


def test_only_the_folkrnn_layout_is_taken_for_folkrnn_text():
    with open(os.path.join(FIXTURES, "corpus.folkrnn.txt"), encoding="utf-8") as handle:
        assert looks_like_folkrnn_text(handle.read())
    with open(os.path.join(FIXTURES, "collection.abc"), encoding="utf-8") as handle:
        assert not looks_like_folkrnn_text(handle.read())
    assert not looks_like_folkrnn_text("M:4/4\nK:Cmaj\nCDEF GABc|cBAG FEDC|\n")  # ABC, no spaces between notes
    assert not looks_like_folkrnn_text("M:4/4\nK:G\nG A B c | d e f g |\n")  # a key folk-rnn never writes
    assert not looks_like_folkrnn_text("X:1\nM:4/4\nK:Cmaj\nG A B c |\n")
    assert not looks_like_folkrnn_text("")


# --- 15: summary keys stay whole --------------------------------------------------------------------
def test_a_collection_folder_with_a_pipe_in_its_name_is_one_collection(tmp_path, capsys):
    source = fixture_copy(tmp_path, to="pipe|coll/collection.abc")
    out = str(tmp_path / "out")
    code, _, err = ingest(capsys, source, "--out", out)
    assert code == 0, err
    summary = assert_summary_counts_the_shards(out)
    assert summary["by_collection"] == {"pipe|coll": {"read": 5, "kept": 3, "duplicates": 1, "rejected": 1}}
    assert set(summary["meters"]) <= {"4/4", "3/4", "6/8"} and sum(summary["meters"].values()) == 3


# --- 16: a file named twice is read once ------------------------------------------------------------
def test_one_file_named_five_ways_is_read_once(tmp_path, capsys, monkeypatch):
    fixture_copy(tmp_path, to="a.abc")
    (tmp_path / "dir").mkdir()
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out")
    spellings = ["a.abc", "./a.abc", str(tmp_path / "a.abc"), "dir/../a.abc", "a.abc"]
    code, stdout, err = ingest(capsys, *spellings, "--out", out)
    assert code == 0, err
    summary = assert_summary_counts_the_shards(out)
    assert (summary["read"], summary["kept"], summary["duplicates"], summary["rejected"]) == (5, 3, 1, 1)
    path = os.path.realpath(tmp_path / "a.abc")
    assert summary["repeated_sources"] == {path: 5}
    assert f"named 5 times, read once: {path}" in stdout
    duplicates = rows_of(out, "duplicates")
    assert all(d["duplicate_of"] != d["id"] for d in duplicates)
    ids = [r["id"] for r in rows_of(out, "tunes") + duplicates + rows_of(out, "rejects")]
    assert len(ids) == len(set(ids)) == 5
    assert {r["source"] for r in rows_of(out, "tunes")} == {path}


def test_a_file_inside_a_folder_given_too_is_read_once(tmp_path, capsys):
    source = fixture_copy(tmp_path, to="folder/a.abc")
    out = str(tmp_path / "out")
    code, _, err = ingest(capsys, os.path.dirname(source), source, str(tmp_path / "folder" / "*.abc"), "--out", out)
    assert code == 0, err
    summary = assert_summary_counts_the_shards(out)
    assert summary["read"] == 5 and summary["repeated_sources"] == {source: 3}


# --- 17: long CSV fields ----------------------------------------------------------------------------
def test_a_csv_field_over_128_kb_is_read_and_the_other_rows_go_on(tmp_path, capsys):
    long_body = "|" + "GABc dedB|" * 20_000  # 200 KB
    path = tmp_path / "long.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tune_id", "setting_id", "name", "type", "meter", "mode", "abc"])
        for number, body in ((1, "|:GABc dedB|dedB dedB:|"), (2, long_body), (3, "|:ABcd edcB|ABcd e2e2:|")):
            row = dump_row(number, body)
            writer.writerow([row[k] for k in ("tune_id", "setting_id", "name", "type", "meter", "mode", "abc")])
    out = str(tmp_path / "out")
    code, _, err = ingest(capsys, str(path), "--out", out)
    assert code == 0, err
    summary = assert_summary_counts_the_shards(out)
    assert (summary["read"], summary["kept"], summary["rejected"]) == (3, 3, 0)
    lengths = sorted(r["length"] for r in rows_of(out, "tunes"))
    assert lengths[-1] > 100_000  # the long tune whole
