"""``folkrnn validate`` and ``folkrnn compare`` on small Parquet datasets built here."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from folkrnn.pipeline import compare, validate
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.tables import FINDINGS, GENERATED, TUNES, VALIDATED
from folkrnn.schemas.vocab import encode
from folkrnn.transforms.abc.tokenize import detokenize
from folkrnn.transforms.ingest import process_record
from folkrnn.transforms.records import RawTune
from folkrnn.transforms.validator import validate_tokens
from tests.conftest import folkrnn

REEL = ("M:4/4 K:Cmaj |: c 2 e c g c e c | d 2 f d a d f d | c 2 e c g c e c | B G A B c 4 :| "
        "|: g 2 e g c' g e g | f 2 d f a f d f | g 2 e g c' g e g | f d B d c 4 :|")
JIG = "M:6/8 K:Cmin G |: c 2 d e 2 c | B G G B G G | c 2 d e 2 f | g 3 f 2 e :| g | c' 2 b g 2 f | e d c C 2 :|"
WALTZ = "M:3/4 K:Cdor c 2 e 2 g 2 | c' 4 b 2 | a 2 g 2 f 2 | e 6 |"
SHORT_BAR = "M:4/4 K:Cmix c 8 | d 4 | e 8 |"  # bar_too_short
DANGLING = "M:2/4 K:Cmaj |1 c 4 |"  # unmatched_ending
TUNES_TEXT = [REEL, JIG, WALTZ, SHORT_BAR, DANGLING]


def parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def generated_row(number: int, text: str, truncated: bool = False) -> dict:
    tokens = text.split()
    return {"number": number, "seed": 7, "temperature": 1.0, "prime": "", "checkpoint_id": "ck",
            "meter": tokens[0][2:], "mode": tokens[1][3:], "title": f"Tune {number}", "tokens": tokens,
            "token_ids": encode(tokens), "length": len(tokens), "truncated": truncated, "abc": detokenize(tokens)}


def write_generated(folder: str, shards: list[list[dict]]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, rows in enumerate(shards):
        path = os.path.join(folder, f"part-{i:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=GENERATED), path)
        paths.append(path)
    return paths


@pytest.fixture
def generated(tmp_path) -> str:
    """Two shards of generated tunes (one truncated), and an empty third shard."""
    rows = [generated_row(i, text) for i, text in enumerate(TUNES_TEXT)]
    rows.append(generated_row(5, REEL, truncated=True))
    folder = str(tmp_path / "generated")
    write_generated(folder, [rows[:4], rows[4:], []])
    return folder


def read_bytes(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


# --- folkrnn validate ----------------------------------------------------------------------------
def test_validate_adds_the_findings_to_every_row(generated: str, capsys) -> None:
    before = {p: pq.read_table(os.path.join(generated, p)) for p in sorted(os.listdir(generated))}
    assert validate.run(parse(validate, generated, "--quiet")) == 0
    assert sorted(os.listdir(generated)) == sorted(before)  # no temporary file left behind
    for name, old in before.items():
        new = pq.read_table(os.path.join(generated, name))
        assert new.schema.equals(VALIDATED)
        assert new.num_rows == old.num_rows
        # The generated columns are kept as they were, row for row.
        assert new.select(GENERATED.names).equals(old.select(GENERATED.names))
    rows = [r for name in sorted(before) for r in pq.read_table(os.path.join(generated, name)).to_pylist()]
    assert [r["number"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["valid"] for r in rows] == [True, True, True, False, False, False]
    assert [r["reasons"] for r in rows[3:]] == [["bar_too_short"], ["unmatched_ending"], ["truncated"]]
    assert rows[0]["form"] == "AABB" and rows[0]["bar_count"] == 8 and rows[0]["standard_form"] is False
    assert rows[1]["pickup"] == 1.0 and rows[1]["ends_on_tonic"] is True
    assert rows[3]["bar_lengths_failed"] == [4.0]
    assert rows[3]["problems"][0]["code"] == "bar_too_short" and rows[3]["problems"][0]["bar"] == 1
    assert [s["label"] for s in rows[0]["sections"]] == ["A", "B"]
    # What the validator says of each tune, exactly.
    for row in rows:
        expected = validate_tokens(row["tokens"], row["truncated"]).as_row()
        assert {f.name: row[f.name] for f in FINDINGS if f.name != "bar_lengths_failed"} == {
            f.name: expected[f.name] for f in FINDINGS if f.name != "bar_lengths_failed"}

    out = capsys.readouterr().out
    assert "validate: 6 tunes in 3 shard(s)" in out and "findings written" in out
    assert "valid: 3 (50.0%)" in out
    assert "by meter:" in out and "4/4" in out and "by mode:" in out and "dor" in out
    assert "bar_too_short" in out and "truncated" in out and "AABB" in out


def test_one_findings_converter_for_validate_compile_and_ingest(generated: str) -> None:
    """Issue 14: findings became Arrow in three places (validate, books, ingest), two of them named
    ``with_findings`` with different signatures. Now ``findings_table``/``findings_row`` beside
    FINDINGS are the one way, and all three commands give the same columns for the same tune."""
    from folkrnn.pipeline.books import validated_table
    from folkrnn.schemas.tables import INGEST_TABLES, findings_row, findings_table

    plain = pq.read_table(generated)  # GENERATED only: nothing validated yet
    found = [validate_tokens(t, bool(c)) for t, c in zip(plain.column("tokens").to_pylist(),
                                                         plain.column("truncated").to_pylist())]
    table = findings_table(found)
    assert table.schema.equals(FINDINGS) and table.num_rows == plain.num_rows == 6
    as_rows = [{name: f.as_row()[name] for name in FINDINGS.names} for f in found]
    assert table.to_pylist() == pa.Table.from_pylist(as_rows, schema=FINDINGS).to_pylist()
    assert [findings_row(f) for f in found] == as_rows
    # compile validates on the way; validate writes the findings into the shards: the same columns
    compiled = validated_table(plain).select(FINDINGS.names)
    assert validate.run(parse(validate, generated, "--quiet")) == 0
    assert compiled.equals(pq.read_table(generated).select(FINDINGS.names))
    assert compiled.equals(table)
    # the ingest puts them on each tune row, and its schema is built once, findings included
    row = ingest_rows()[0]
    assert {name: row[name] for name in FINDINGS.names} == findings_row(validate_tokens(row["tokens"]))
    assert INGEST_TABLES["tunes"] is TUNES and TUNES.names[-len(FINDINGS):] == FINDINGS.names


def test_validate_twice_writes_the_same_files(generated: str) -> None:
    validate.run(parse(validate, generated, "--quiet"))
    first = read_bytes(generated)
    validate.run(parse(validate, generated, "--quiet"))
    assert read_bytes(generated) == first


def test_validate_with_two_workers_writes_the_same_files(generated: str, tmp_path) -> None:
    other = str(tmp_path / "copy")
    os.makedirs(other)
    for name, data in read_bytes(generated).items():
        with open(os.path.join(other, name), "wb") as out:
            out.write(data)
    validate.run(parse(validate, generated, "--quiet"))
    validate.run(parse(validate, other, "--quiet", "--workers", "2"))
    assert read_bytes(other) == read_bytes(generated)


def test_summary_only_writes_nothing(generated: str, tmp_path, capsys) -> None:
    before = read_bytes(generated)
    summary_file = str(tmp_path / "summary.json")
    assert validate.run(parse(validate, generated, "--summary-only", "--quiet", "--json", summary_file)) == 0
    assert read_bytes(generated) == before
    out = capsys.readouterr().out
    assert "nothing written (--summary-only)" in out and "valid: 3 (50.0%)" in out
    summary = json.load(open(summary_file))
    assert summary["rows"] == 6 and summary["tunes"] == 6 and summary["valid"] == 3 and not summary["written"]
    assert summary["by_meter"]["6/8"] == {"tunes": 1, "valid": 1, "valid_fraction": 1.0}
    assert summary["reasons"] == {"bar_too_short": 1, "unmatched_ending": 1, "truncated": 1}


def test_a_folder_holding_generated_shards_is_a_dataset(generated: str, tmp_path) -> None:
    run_folder = os.path.dirname(generated)  # what `folkrnn generate --out` made
    assert validate.validate_dataset(run_folder, write=False)["rows"] == 6


def ingest_rows() -> list[dict]:
    """Rows of an ingest's tunes table, made by the ingest's own per-tune function."""
    texts = ["X:1\nT:Reel\nM:C|\nL:1/8\nK:G\n|:GABc dedB|dedB dedB:|\n",
             "X:2\nT:Jig\nM:6/8\nL:1/8\nK:D\nA|:d2e fed|cBA BcA:|\n",
             "X:3\nT:Short\nM:3/4\nL:1/8\nK:Am\nA2B2c2|d4|e6|\n"]
    rows = [process_record(RawTune("mem.abc", "unit", i, text))[1] for i, text in enumerate(texts)]
    assert all("tokens" in row for row in rows)
    return rows


def test_an_ingest_tunes_folder_keeps_its_schema_and_gets_fresh_findings(tmp_path) -> None:
    rows = ingest_rows()
    stale = [dict(row, valid=False, reasons=["old_rule"], form="") for row in rows]
    folder = tmp_path / "tunes"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(stale, schema=TUNES), folder / "part-00000-of-00001.parquet")
    summary = validate.validate_dataset(str(tmp_path))  # the ingest's --out folder
    table = pq.read_table(folder / "part-00000-of-00001.parquet")
    assert table.schema.equals(TUNES)
    assert table.column("id").to_pylist() == [row["id"] for row in rows]
    assert table.column("valid").to_pylist() == [row["valid"] for row in rows] == [True, True, False]
    assert table.column("reasons").to_pylist()[2] == ["bar_too_short"]
    assert summary["valid"] == 2 and summary["forms"]["AA"] == 2


def test_other_tables_with_tokens_get_the_findings_after_their_columns(tmp_path) -> None:
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"name": ["a", "b"], "tokens": [REEL.split(), SHORT_BAR.split()]}), path)
    validate.validate_dataset(str(tmp_path))
    table = pq.read_table(path)
    assert table.column_names == ["name", "tokens", *FINDINGS.names]
    assert table.column("valid").to_pylist() == [True, False]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: str(tmp / "missing"), "no such dataset"),
        (lambda tmp: str(tmp), "holds no part-*.parquet shards"),  # an empty folder
        (lambda tmp: (tmp / "part-0.parquet").write_text("x") and str(tmp / "part-0.parquet"), "is not a folder"),
        (lambda tmp: (tmp / "part-0.parquet").write_bytes(b"not parquet") and str(tmp), "not a readable Parquet"),
        (lambda tmp: pq.write_table(pa.table({"x": [1]}), tmp / "part-0.parquet") or str(tmp), "no tokens column"),
    ],
)
def test_validate_errors_are_usage_errors(tmp_path, make, message: str) -> None:
    dataset = make(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        validate.run(parse(validate, dataset, "--quiet"))


def test_validate_rejects_zero_workers(generated: str) -> None:
    with pytest.raises(UsageError, match="--workers"):
        validate.run(parse(validate, generated, "--workers", "0"))


def test_validate_command_line(generated: str, tmp_path, folkrnn_main) -> None:
    done = folkrnn_main("validate", generated, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "valid: 3 (50.0%)" in done.stdout
    assert pq.read_table(os.path.join(generated, "part-00000.parquet")).schema.equals(VALIDATED)
    missing = folkrnn_main("validate", str(tmp_path / "nothing"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("folkrnn validate: error: no such dataset")
    assert "Traceback" not in missing.stderr


# --- folkrnn compare -----------------------------------------------------------------------------
def test_count_notes() -> None:
    pitches: Counter = Counter()
    durations: Counter = Counter()
    compare.count_notes("M:4/4 K:Cmaj c 2 d [ C 2 E ] 4 z | (3 c d e /2 ^f >".split(), pitches, durations)
    assert pitches == Counter({"c": 2, "d": 2, "C": 1, "E": 1, "e": 1, "^f": 1})
    # c 2, d, the chord 4 (its first note's 2 stays inside), z, c, d, e /2, ^f.
    assert durations == Counter({"1": 5, "2": 1, "4": 1, "/2": 1})


@pytest.fixture
def two_datasets(tmp_path) -> tuple[str, str]:
    """A: an ingest's tunes (with findings); B: generated tunes not validated yet."""
    a = tmp_path / "training" / "tunes"
    a.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ingest_rows(), schema=TUNES), a / "part-00000-of-00001.parquet")
    b = str(tmp_path / "sampled" / "generated")
    write_generated(b, [[generated_row(i, text) for i, text in enumerate(TUNES_TEXT[:4])]])
    return str(a), b


def test_compare_prints_both_datasets_side_by_side(two_datasets, tmp_path, capsys) -> None:
    a, b = two_datasets
    plot = str(tmp_path / "compare.png")
    stats = str(tmp_path / "compare.json")
    assert compare.run(parse(compare, a, b, "--plot", plot, "--json", stats, "--quiet")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["training/tunes", "sampled/generated"]

    def row(label: str) -> list[str]:
        (line,) = [line for line in lines if line.startswith(label + " ") or line.strip().startswith(label + " ")]
        return line.split()[-2:]

    assert row("tunes") == ["3", "4"]
    assert row("valid") == ["66.7%", "75.0%"]
    assert row("4/4") == ["33.3%", "50.0%"]  # the reel (M:C| is 4/4) / the reel and the short-bar tune
    assert row("dor") == ["0.0%", "25.0%"]
    assert row("AABB") == ["0.0%", "50.0%"] and row("AA") == ["66.7%", "0.0%"]  # the reel and the jig
    assert row("bar_too_short") == ["33.3%", "25.0%"]
    assert row("length (tokens) median")[0] == f"{sorted(len(r['tokens']) for r in ingest_rows())[1]:.1f}"
    assert any(line.startswith("pitches") for line in lines) and any(line.startswith("durations") for line in lines)
    assert f"plot written to {plot}" in lines

    with open(plot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(plot) > 20_000  # nine panels, not an empty canvas
    both = json.load(open(stats))
    assert both["a"]["tunes"] == 3 and both["b"]["tunes"] == 4
    assert both["b"]["meters"] == {"4/4": 0.5, "6/8": 0.25, "3/4": 0.25}
    assert sum(both["a"]["pitches"].values()) == pytest.approx(1.0)
    assert sum(both["b"]["durations"].values()) == pytest.approx(1.0)


def test_compare_uses_stored_findings_unless_told_to_revalidate(two_datasets, capsys) -> None:
    a, b = two_datasets
    path = os.path.join(a, "part-00000-of-00001.parquet")
    table = pq.read_table(path)
    stale = table.set_column(table.schema.get_field_index("valid"), "valid", pa.array([False] * 3))
    pq.write_table(stale, path)
    compare.run(parse(compare, a, b, "--quiet", "--names", "old", "new"))
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("valid")][0].split()[1] == "0.0%"
    compare.run(parse(compare, a, b, "--quiet", "--revalidate"))
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("valid")][0].split()[1] == "66.7%"


def test_compare_names_the_same_folder_twice_apart(two_datasets, capsys) -> None:
    a, _ = two_datasets
    compare.run(parse(compare, a, a, "--quiet"))
    assert capsys.readouterr().out.splitlines()[0].split() == ["training/tunes", "(A)", "training/tunes", "(B)"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--plot", "out.pdf"], "PNG"), (["--top", "0"], "--top")],
)
def test_compare_flag_errors(two_datasets, extra: list[str], message: str) -> None:
    a, b = two_datasets
    with pytest.raises(UsageError, match=message):
        compare.run(parse(compare, a, b, *extra))


def test_compare_missing_dataset(two_datasets, tmp_path) -> None:
    a, _ = two_datasets
    with pytest.raises(UsageError, match="no such dataset"):
        compare.run(parse(compare, a, str(tmp_path / "nope"), "--quiet"))


def test_compare_command_line(two_datasets) -> None:
    """The entry point end to end, in a process of its own."""
    a, b = two_datasets
    done = folkrnn("compare", a, b, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "training/tunes" in done.stdout
