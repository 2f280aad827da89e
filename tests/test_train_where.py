"""Issue 16, section 1: ``folkrnn train --where`` trains on part of an ingest, and checkpoints carry
a human name (``--name``, kept by ``--export``, written by generate into its manifest)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from folkrnn.model.checkpoint import checkpoint_id, read_payload, save_checkpoint
from folkrnn.schemas.tables import TUNES
from folkrnn.schemas.vocab import encode
from tests.conftest import small_model

REEL = ["M:4/4", "K:Cmaj", "|:", "c", "d", "e", "f", "g", "a", "b", "c'", ":|", "|:", "g", "f", "e", "d", "c", "B",
        "A", "G", ":|"]
SONG = ["M:3/4", "K:Cmin", "G", "2", "A", "2", "B", "2", "|", "c", "6", "|"]
# (collection, tunes, of which in valid, of which failed the validator)
COLLECTIONS = {"reels": (12, 2, 3), "songs": (20, 4, 0)}
TINY = ("--layers", "1", "--units", "8", "--max-steps", "2", "--quiet", "--threads", "1")


@pytest.fixture(scope="module")
def ingest(tmp_path_factory) -> str:
    """An ingest's output folder: tunes/part-0.parquet with two collections, each with train and valid
    tunes, some of the reels failed by the validator."""
    rows = []
    for collection, (count, n_valid_split, n_invalid) in COLLECTIONS.items():
        for k in range(count):
            tokens = (REEL if collection == "reels" else SONG) + ["c"] * k  # distinct tunes
            rows.append({"id": f"{collection}/{k}", "source": f"{collection}.abc", "collection": collection,
                         "position": k, "meter": tokens[0][2:], "mode": tokens[1][3:], "tokens": tokens,
                         "token_ids": encode(tokens), "length": len(tokens),
                         "split": "valid" if k < n_valid_split else "train",
                         "valid": k < count - n_invalid})  # the last n_invalid failed the validator
    folder = tmp_path_factory.mktemp("ingest")
    os.makedirs(folder / "tunes")
    pq.write_table(pa.Table.from_pylist(rows, schema=TUNES), folder / "tunes" / "part-0.parquet")
    return str(folder)


def start_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("train: ") and "valid:" in line)


def test_where_trains_only_on_the_chosen_collection(folkrnn_main, ingest, tmp_path):
    out = tmp_path / "run"
    done = folkrnn_main("train", ingest, "--where", "collection = 'reels'", "--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr
    assert start_line(done.stdout).startswith("train: 10 tunes (")  # 12 reels, 2 of them valid
    assert ", valid: 2 tunes;" in start_line(done.stdout)
    assert "tunes where collection = 'reels'" in done.stdout
    payload = read_payload(str(out / "checkpoints" / "last.pt"))
    assert payload["meta"]["where"] == "collection = 'reels'"
    assert payload["train_state"]["train_config"]["where"] == "collection = 'reels'"
    assert payload["train_state"]["data"]["n_train"] == 10 and payload["train_state"]["data"]["n_valid"] == 2


def test_where_with_only_valid_and_the_whole_ingest(folkrnn_main, ingest, tmp_path):
    done = folkrnn_main("train", ingest, "--where", "collection = 'reels'", "--only-valid",
                        "--out", str(tmp_path / "a"), *TINY)
    assert done.returncode == 0, done.stderr
    assert start_line(done.stdout).startswith("train: 7 tunes (")  # 3 of the 10 train reels failed
    done = folkrnn_main("train", ingest, "--out", str(tmp_path / "b"), *TINY)  # no --where: every tune
    assert start_line(done.stdout).startswith("train: 26 tunes (") and ", valid: 6 tunes;" in done.stdout
    assert "where" not in read_payload(str(tmp_path / "b" / "checkpoints" / "last.pt"))["meta"]


def test_resume_keeps_the_condition_and_refuses_another(folkrnn_main, ingest, tmp_path):
    out = str(tmp_path / "run")
    assert folkrnn_main("train", ingest, "--where", "collection = 'songs'", "--out", out, *TINY).returncode == 0
    again = folkrnn_main("train", ingest, "--resume", "--out", out, "--max-steps", "3", "--quiet")
    assert again.returncode == 0, again.stderr
    assert start_line(again.stdout).startswith("train: 16 tunes (")  # the checkpoint's condition
    other = folkrnn_main("train", ingest, "--resume", "--out", out, "--where", "collection = 'reels'")
    assert other.returncode == 2
    assert other.stderr.strip() == ("folkrnn train: error: cannot change on --resume: --where \"collection = "
                                    "'reels'\" (checkpoint: \"collection = 'songs'\"); only --max-epochs, "
                                    "--max-steps, --checkpoint-every, --device, --precision, --name can")
    plain = str(tmp_path / "plain")
    assert folkrnn_main("train", ingest, "--out", plain, *TINY).returncode == 0
    added = folkrnn_main("train", ingest, "--resume", "--out", plain, "--where", "collection = 'reels'")
    assert added.returncode == 2 and "--where \"collection = 'reels'\" (checkpoint: none)" in added.stderr


BAD = [
    ("nonsense = 1", "unknown column 'nonsense' in --where; columns are: id, source, collection"),
    ("collection = 'reels' AND (", "malformed --where"),
    ("   ", "--where is empty"),
    ("collection = 'jigs'", "--where \"collection = 'jigs'\" matches none of the"),
    ("CAST(collection AS INTEGER) = 1", "--where cannot be evaluated: Conversion Error"),
]


@pytest.mark.parametrize("where,message", BAD, ids=[b[0] for b in BAD])
def test_bad_conditions_are_one_line(folkrnn_main, ingest, tmp_path, where, message):
    done = folkrnn_main("train", ingest, "--where", where, "--out", str(tmp_path / "run"), *TINY)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("folkrnn train: error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_where_needs_the_ingest_parquet(folkrnn_main, tmp_path):
    text = tmp_path / "tunes.txt"
    text.write_text("M:4/4\nK:Cmaj\nc d e f |\n")
    done = folkrnn_main("train", str(text), "--where", "meter = '4/4'", "--out", str(tmp_path / "run"), *TINY)
    assert done.returncode == 2 and "--where needs the ingest's Parquet tunes" in done.stderr


def test_name_default_given_exported_and_in_the_generate_manifest(folkrnn_main, ingest, tmp_path):
    plain = tmp_path / "plain"
    assert folkrnn_main("train", ingest, "--out", str(plain), *TINY).returncode == 0
    assert read_payload(str(plain / "checkpoints" / "last.pt"))["meta"]["name"] == "folk-rnn v2-style LSTM 1x8"

    named, export = tmp_path / "named", str(tmp_path / "export" / "dance.pt")
    done = folkrnn_main("train", ingest, "--where", "collection = 'reels'", "--name", "reels 1x8", "--out",
                        str(named), "--export", export, *TINY)
    assert done.returncode == 0, done.stderr
    meta = read_payload(export)["meta"]
    assert meta["name"] == "reels 1x8" and meta["where"] == "collection = 'reels'"
    assert meta["exported_from"] == checkpoint_id(str(named / "checkpoints" / "best.pt"))
    exported = read_payload(export)
    assert exported["optimizer"] is None and exported["train_state"] is None  # sampling only

    run = tmp_path / "generated"
    done = folkrnn_main("generate", export, "--num-tunes", "2", "--max-tokens", "20", "--out", str(run), "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["checkpoint_name"] == "reels 1x8"
    assert manifest["checkpoint"] == export and manifest["settings"]["checkpoint_id"] == checkpoint_id(export)


def test_a_checkpoint_without_a_name_is_named_by_its_sizes(folkrnn_main, tmp_path):
    path = str(tmp_path / "old.pt")
    save_checkpoint(path, small_model(layers=2, units=16, end_bias=8.0))  # as checkpoints were before names
    done = folkrnn_main("generate", path, "--num-tunes", "1", "--max-tokens", "10", "--out", str(tmp_path / "g"),
                        "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["checkpoint_name"] == \
        "folk-rnn v2-style LSTM 2x16"


def test_empty_name_and_a_folder_as_export_are_refused(folkrnn_main, ingest, tmp_path):
    done = folkrnn_main("train", ingest, "--name", " ", "--out", str(tmp_path / "a"), *TINY)
    assert done.returncode == 2 and "--name is empty" in done.stderr
    done = folkrnn_main("train", ingest, "--export", str(tmp_path), "--out", str(tmp_path / "b"), *TINY)
    assert done.returncode == 2 and "--export" in done.stderr and not (tmp_path / "b").exists()


# --- --add-tunes: a dataset of tunes added to the training split (the demo model's last stage) --------
def samples(folder, n: int, with_valid: bool = True) -> str:
    """A generate-like run folder: generated/part-00000.parquet, tunes 1..n, the last two not valid."""
    rows = [{"number": k, "token_ids": encode(REEL + ["c"] * k)} | ({"valid": k <= n - 2} if with_valid else {})
            for k in range(n, 0, -1)]  # written out of order: read in number order
    os.makedirs(folder / "generated")
    pq.write_table(pa.Table.from_pylist(rows), folder / "generated" / "part-00000.parquet")
    return str(folder)


def test_add_tunes_joins_the_training_split_and_is_kept_on_resume(folkrnn_main, ingest, tmp_path):
    added = samples(tmp_path / "samples", 6)
    out = str(tmp_path / "run")
    done = folkrnn_main("train", ingest, "--where", "collection = 'reels'", "--add-tunes", added, "--out", out, *TINY)
    assert done.returncode == 0, done.stderr
    assert start_line(done.stdout).startswith("train: 16 tunes (") and ", valid: 2 tunes;" in done.stdout
    payload = read_payload(os.path.join(out, "checkpoints", "last.pt"))
    assert payload["train_state"]["train_config"]["add_tunes"] == [added]
    again = folkrnn_main("train", ingest, "--resume", "--out", out, "--max-steps", "3", "--quiet")
    assert again.returncode == 0 and start_line(again.stdout).startswith("train: 16 tunes (")
    other = folkrnn_main("train", ingest, "--resume", "--out", out, "--add-tunes", str(tmp_path))
    assert other.returncode == 2 and "cannot change on --resume: --add-tunes" in other.stderr

    valid_only = folkrnn_main("train", ingest, "--only-valid", "--add-tunes", added, "--out", str(tmp_path / "v"),
                              *TINY)
    assert valid_only.returncode == 0, valid_only.stderr
    assert start_line(valid_only.stdout).startswith("train: 27 tunes (")  # 23 of the ingest + 4 valid samples


def test_add_tunes_mistakes_are_one_line(folkrnn_main, ingest, tmp_path):
    unvalidated = samples(tmp_path / "unvalidated", 3, with_valid=False)
    done = folkrnn_main("train", ingest, "--only-valid", "--add-tunes", unvalidated, "--out", str(tmp_path / "a"), *TINY)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"folkrnn train: error: --add-tunes {unvalidated} has no valid column for "
                                   f"--only-valid: run `folkrnn validate {unvalidated}` first")
    missing = folkrnn_main("train", ingest, "--add-tunes", str(tmp_path / "nothing"), "--out", str(tmp_path / "b"), *TINY)
    assert missing.returncode == 2 and "no dataset at" in missing.stderr
