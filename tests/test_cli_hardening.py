"""The command line: unknown flags refused, one-line errors everywhere, primes checked (issue 13)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from folkrnn.pipeline import cli
from folkrnn.pipeline.generate import MAX_NUMBERS, build_prime, parse_numbers
from folkrnn.schemas.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "model", "demo.pt")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- 10. unknown flags are refused, with or without --runner ----------------------------------------

@pytest.mark.parametrize("argv", [
    ["generate", DEMO, "--numtunes", "5"],
    ["generate", DEMO, "-n", "5"],
    ["generate", DEMO, "--temprature", "0.5"],
    ["generate", DEMO, "--runner", "DirectRunner", "--numtunes", "5"],
    ["ingest", "--outt", "X"],
    ["ingest", "--runner", "DirectRunner", "--outt", "X"],
])
def test_unknown_flags_are_refused(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2
    assert "unrecognized arguments" in line and argv[-2 if argv[-1] in ("5", "0.5", "X") else -1] in line
    assert f"folkrnn {argv[0]}" in line
    assert os.listdir(tmp_path) == []  # nothing ran: no out/ folder


def test_beam_flags_are_taken_out_with_their_values():
    _, _, parsers = cli.build_parser()
    own, beam = cli.split_beam_flags(
        ["a.abc", "--runner", "DataflowRunner", "--project", "P", "--out", "X", "--region=R",
         "--save_main_session", "--temp_location", "gs://b/tmp"], parsers["ingest"])
    # The values of Beam's flags are no longer taken for SOURCE arguments.
    assert own == ["a.abc", "--out", "X"]
    assert beam == ["--runner", "DataflowRunner", "--project", "P", "--region=R", "--save_main_session",
                    "--temp_location", "gs://b/tmp"]


def test_own_flags_only_do_not_import_beam_option_parsing():
    _, _, parsers = cli.build_parser()
    own, beam = cli.split_beam_flags([DEMO, "--num-tunes", "5", "--out", "x"], parsers["generate"])
    assert beam == [] and own == [DEMO, "--num-tunes", "5", "--out", "x"]


def test_a_real_beam_flag_runs_the_ingest(capsys, tmp_path, fixtures_dir):
    out = tmp_path / "ingest"
    code, stdout, err = run(capsys, "ingest", os.path.join(fixtures_dir, "collection.abc"), "--out", str(out),
                            "--quiet", "--runner", "DirectRunner", "--direct_num_workers", "1")
    assert code == 0, err
    assert (out / "summary.json").exists() and "tunes read" in stdout


# -- 12. usage errors are one line in every command ------------------------------------------------

@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_reports_a_bad_flag_in_one_line(capsys, command):
    code, _, err = run(capsys, command, "--no-such-flag")
    line = one_line(err)
    assert code == 2 and line.startswith(f"folkrnn {command}: error: ") and f"folkrnn {command} --help" in line


@pytest.mark.parametrize("argv", [
    ["generate"],                                  # a required argument missing
    ["generate", DEMO, "--num-tunes", "x"],        # a value of the wrong type
    ["ingest", "--format", "midi"],                # a choice not offered
    ["no-such-command"],
])
def test_argparse_errors_are_one_line(capsys, argv):
    code, _, err = run(capsys, *argv)
    one_line(err)
    assert code == 2


def test_io_failure_is_one_line_naming_the_path(capsys, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, _, err = run(capsys, "generate", DEMO, "--out", str(a_file / "run"), "--num-tunes", "1", "--quiet")
    line = one_line(err)
    assert code == 2 and str(a_file / "run") in line and "Not a directory" in line


def test_unexpected_error_is_one_line(capsys, monkeypatch):
    import folkrnn.pipeline.stats

    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(folkrnn.pipeline.stats, "run", broken)
    monkeypatch.delenv(cli.TRACEBACK_VARIABLE, raising=False)
    code, _, err = run(capsys, "stats", "somewhere")
    line = one_line(err)
    assert code == 1 and "RuntimeError: something broke" in line and cli.TRACEBACK_VARIABLE in line
    monkeypatch.setenv(cli.TRACEBACK_VARIABLE, "1")
    with pytest.raises(RuntimeError):
        cli.main(["stats", "somewhere"])


# -- 11. primes: what is dropped is said, and the meter follows the bars -----------------------------

def test_prime_that_is_not_abc_says_what_was_dropped(capsys):
    tokens = build_prime(None, None, "this is not abc")
    err = capsys.readouterr().err
    assert "dropped" in err and "decorations 9" in err and "a b c" in err
    assert tokens == ["*", "*", "a", "b", "c"]  # no closed bar: the meter stays the model's choice


def test_abc_prime_without_meter_fixes_the_meter_its_bars_imply(capsys):
    # The README's example: without this the model chose 3/4 for a bar of 8 eighths.
    tokens = build_prime(None, None, "|:GABc dedB|")
    assert tokens[:2] == ["M:4/4", "*"] and tokens[2:] == ["|:", "G", "A", "B", "c", "d", "e", "d", "B", "|"]
    assert "M:4/4" in capsys.readouterr().err
    assert build_prime(None, "dor", "|:GABc dedB|")[:2] == ["M:4/4", "K:Cdor"]
    assert build_prime(None, None, "|: G2 A2 | B4 |")[:1] == ["M:2/4"]


def test_prime_whose_bars_do_not_fit_the_meter_is_refused():
    with pytest.raises(UsageError, match=r"bar 1 .* is 8 eighths long, but a bar of M:3/4 is 6 eighths"):
        build_prime("3/4", None, "|:GABc dedB|")
    with pytest.raises(UsageError, match=r"bar 1 .* M:4/4"):
        build_prime(None, None, "M:4/4 K:Cmaj | G A B |")


def test_ambiguous_prime_asks_for_the_meter():
    with pytest.raises(UsageError, match=r"fit M:3/4 and M:6/8: say which with --meter"):
        build_prime(None, None, "|:GAB cde|")
    assert build_prime("6/8", None, "|:GAB cde|")[:1] == ["M:6/8"]


def test_prime_as_long_as_the_length_limit_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "generate", DEMO, "--prime", "M:4/4 K:Cmaj " + "C " * 8, "--max-tokens", "10",
                       "--numbers", "1")
    assert code == 2 and one_line(err).endswith("the prime is 10 tokens and --max-tokens 10 leaves the model "
                                                "nothing to write: shorten the prime or raise --max-tokens")


def test_prime_of_tokens_and_pickups_are_untouched():
    assert build_prime(None, None, "M:6/8 K:Cmaj |: G") == ["M:6/8", "K:Cmaj", "|:", "G"]
    assert build_prime("6/8", "maj", None) == ["M:6/8", "K:Cmaj"]
    assert build_prime(None, None, "G A |") == ["*", "*", "G", "A", "|"]  # a pickup says nothing


# -- 7. ranges are checked before anything is allocated ---------------------------------------------

def test_numbers_ranges_are_checked(capsys):
    with pytest.raises(UsageError, match="at most"):
        parse_numbers("1-1000000000")
    with pytest.raises(UsageError, match="backwards"):
        parse_numbers("5-1")
    with pytest.raises(UsageError, match="start at 1"):
        parse_numbers("0-3")
    assert parse_numbers("1-3,488") == [1, 2, 3, 488]
    assert len(parse_numbers(f"1-{MAX_NUMBERS}")) == MAX_NUMBERS
    code, _, err = run(capsys, "generate", DEMO, "--numbers", "1-1000000000")
    assert code == 2 and "at most" in one_line(err)


# -- 13. --threads on generate and demo --------------------------------------------------------------

def test_generate_threads(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        code, one_thread, err = run(capsys, "generate", DEMO, "--numbers", "3", "--threads", "1")
        assert code == 0, err
        assert torch.get_num_threads() == 1
        # Without --threads the command keeps the process's threads: two here, whatever the test
        # runner gave this process (tests/conftest.py gives each xdist worker one).
        torch.set_num_threads(2)
        code, default, _ = run(capsys, "generate", DEMO, "--numbers", "3")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert code == 0 and default == one_thread  # the thread count never changes a tune
    code, _, err = run(capsys, "generate", DEMO, "--numbers", "3", "--threads", "-1")
    assert code == 2 and "--threads" in one_line(err)


def test_demo_takes_threads(capsys):
    code, _, err = run(capsys, "demo", "--threads", "-1")
    assert code == 2 and "--threads" in one_line(err)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "--threads" in capsys.readouterr().out


# -- 19. the licence is an SPDX string (no setuptools deprecation banner) -------------------------

def test_licence_is_an_spdx_string():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        text = handle.read()  # (tomllib is 3.11+; the project still installs on 3.10)
    assert re.search(r'^license = "MIT"$', text, re.M)
    setuptools = re.search(r'requires = \["setuptools>=(\d+)', text)
    assert setuptools and int(setuptools.group(1)) >= 77  # the first setuptools that takes the SPDX string


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
