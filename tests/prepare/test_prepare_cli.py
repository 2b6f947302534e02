"""The three preparation commands as a user meets them: help, exit codes, one-line errors."""

from __future__ import annotations

import pytest

from deref.cli.main import main


@pytest.mark.parametrize("command", ["tile", "extract", "mri"])
def test_help_has_examples_and_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"deref {command} " in text
    assert "exit status: 0" in text and "3 finished, but some" in text


def test_anticipated_failures_exit_1_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["tile", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("deref tile: error: no slide files found") and "\n" not in err
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.h5").write_bytes(b"")
    assert main(["extract", "--patches", str(tmp_path / "p"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs pretrained weights: pass --weights FILE" in err and "\n" not in err
    assert (
        main(
            [
                "extract",
                "--patches",
                str(tmp_path / "p"),
                "--out",
                str(tmp_path / "o"),
                "--shard",
                "5/4",
                "--random-weights",
            ]
        )
        == 1
    )
    assert "--shard '5/4'" in capsys.readouterr().err
    assert main(["mri", "--out", str(tmp_path / "o")]) == 1
    assert "give the volumes of one patient" in capsys.readouterr().err


def test_list_backbones(capsys):
    assert main(["extract", "--list-backbones"]) == 0
    out = capsys.readouterr().out
    assert "resnet50_trunc" in out and "1024" in out
