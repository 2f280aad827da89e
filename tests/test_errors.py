"""Errors a user can fix: lower layers name settings, the CLI shows them as its flags."""

from __future__ import annotations

import pytest

from folkrnn.model.data import load_tunes, split_by_hash
from folkrnn.pipeline import cli
from folkrnn.schemas.errors import UsageError, setting


def test_a_setting_is_its_parameter_in_python_and_its_flag_on_the_command_line():
    err = UsageError(f"{setting('valid_fraction')} must be in [0, 1), got 2")
    assert str(err) == "valid_fraction must be in [0, 1), got 2"
    assert err.render(lambda name: "--" + name.replace("_", "-")) == "--valid-fraction must be in [0, 1), got 2"


def test_model_errors_name_no_flag_and_the_cli_maps_them(tmp_path, capsys):
    with pytest.raises(UsageError, match=r"^valid_fraction must be in \[0, 1\), got 1.5$"):
        split_by_hash([[1, 2, 3]], 1.5)
    data = tmp_path / "tunes.txt"
    data.write_text("M:4/4\nK:Cmaj\nc d e f |\n\n")
    with pytest.raises(UsageError, match="^only_valid needs the ingest's Parquet"):
        load_tunes(str(data), 0.05, only_valid=True)
    assert cli.main(["train", str(data), "--out", str(tmp_path / "t"), "--only-valid"]) == 2
    assert capsys.readouterr().err == ("folkrnn train: error: --only-valid needs the ingest's Parquet (it has the "
                                       "validator's verdicts)\n")
