"""The audit trail (deref.audit): atomic lines under concurrent writers, rotation by size,
reading back (rotated files included) and `deref audit`."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from deref.audit import AuditLog, read_audit
from deref.cli.main import main as cli
from deref.errors import DataError


def _writer(path: str, who: str, n: int) -> None:
    log = AuditLog(__import__("pathlib").Path(path), max_bytes=50_000, backups=50)
    for i in range(n):
        log.record(
            "view_patient", user=who, session=f"s-{who}", run="demo", case_id=f"C{i:04d}", pad="x" * 300
        )


def test_concurrent_writers_never_break_a_line_and_rotation_loses_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), who, 150)) for who in ("alice", "bob", "carol")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = AuditLog(path, backups=50).files()
    assert len(files) > 2  # the writers rotated the log several times
    for f in files:
        assert f.stat().st_size <= 50_000
        for line in f.read_text().splitlines():
            json.loads(line)  # every line is one whole event
    frame = read_audit(path)
    assert len(frame) == 450
    for who in ("alice", "bob", "carol"):
        mine = frame[frame["user"] == who]
        assert list(mine["case_id"]) == [f"C{i:04d}" for i in range(150)]  # in order, none lost


def test_rotation_keeps_the_configured_number_of_backups(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl", max_bytes=400, backups=2)
    for i in range(40):
        log.record("export", user="u", case_id=str(i), what="km png")
    assert [p.name for p in log.files()] == ["a.jsonl.2", "a.jsonl.1", "a.jsonl"]
    ids = list(read_audit(tmp_path / "a.jsonl")["case_id"])
    assert ids == [str(i) for i in range(40 - len(ids), 40)]  # the newest, oldest first


def test_read_filters_and_cli_table(tmp_path, capsys):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("open_run", user="alice@example.org", session="1", run="demo")
    log.record(
        "view_patient", user="alice@example.org", session="1", run="demo", case_id="P1", page="patient"
    )
    log.record("view_patient", user="bob@example.org", session="2", run="demo", case_id="P2", page="patient")
    log.record("export", user="bob@example.org", session="2", run="demo", case_id=None, what="km png")
    frame = read_audit(tmp_path / "audit.jsonl", user="bob@example.org")
    assert list(frame["action"]) == ["view_patient", "export"]
    assert list(read_audit(tmp_path / "audit.jsonl", case_id="P1")["user"]) == ["alice@example.org"]
    assert frame["time"].str.endswith("Z").all()
    assert cli(["audit", str(tmp_path / "audit.jsonl"), "--user", "alice@example.org"]) == 0
    out = capsys.readouterr().out
    assert "P1" in out and "bob" not in out and "2 event(s)" in out and "page=patient" in out


def test_a_broken_line_is_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path).record("open_run", run="demo")
    with open(path, "a") as fh:
        fh.write('{"action": "view_pat\n')
    with pytest.raises(DataError, match=r"audit.jsonl, line 2"):
        read_audit(path)
    with pytest.raises(ValueError, match="audit action"):
        AuditLog(path).record("delete_everything")
