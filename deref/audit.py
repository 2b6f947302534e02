"""The audit trail of a shared dashboard: who looked at which patient, slide or export, when.

One JSON object per line (UTC time, user or ``"local"``, session id, action, run, case id and
details), appended to ``audit.jsonl``:

* **atomic lines**: each record is one ``write`` of a complete line on a file opened with
  ``O_APPEND``, under an exclusive ``flock``, so two sessions (or two server processes) writing
  at once never interleave or break a line;
* **rotated by size**: when the log would pass ``max_bytes`` it becomes ``audit.jsonl.1`` (the
  older ones shift to ``.2`` ... ``.backups``, the oldest dropped), under the same lock;
* read back (rotated files included, oldest first) by :func:`read_audit` and ``deref audit LOG
  [--user U] [--case C]``.

Actions the dashboard records: ``open_run``, ``view_patient``, ``view_slide``, ``export``.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deref.errors import DataError

ENV_AUDIT_LOG = "DEREF_AUDIT_LOG"
ACTIONS = ("open_run", "view_patient", "view_slide", "export", "sign_in", "sign_out")
COLUMNS = ("time", "user", "session", "action", "run", "case_id", "detail")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditLog:
    """An append-only JSON-lines log at ``path`` (rotated at ``max_bytes``, ``backups`` kept)."""

    path: Path
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5

    def record(
        self,
        action: str,
        *,
        user: str = "local",
        session: str = "",
        run: str | None = None,
        case_id: str | None = None,
        **detail: Any,
    ) -> dict[str, Any]:
        """Append one event; returns it. ``action`` is one of :data:`ACTIONS`."""
        if action not in ACTIONS:
            raise ValueError(f"audit action {action!r}; expected one of {ACTIONS}")
        event = {
            "time": utc_now(),
            "user": str(user),
            "session": str(session),
            "action": action,
            "run": run,
            "case_id": case_id,
            "detail": detail or {},
        }
        line = (json.dumps(event, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._rotate_if_needed(len(line))
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    view = memoryview(line)
                    while view:  # one write in practice; a short write is finished, never split
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return event

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes or size == 0:
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()

    def files(self) -> list[Path]:
        """The log and its rotated files, oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.backups, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]


def read_audit(path: str | os.PathLike, user: str | None = None, case_id: str | None = None):
    """The events of log ``path`` (and its rotated files), oldest first, as a DataFrame with
    :data:`COLUMNS`; filtered by ``user`` and/or ``case_id``. A line that is not a JSON event is a
    :class:`DataError` naming the file and line (the writer never leaves one)."""
    import pandas as pd

    path = Path(path)
    log = AuditLog(path)
    files = log.files()
    if not files:
        raise DataError(f"{path}: no audit log there")
    rows = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    event = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{f}, line {n}: not a JSON audit event ({exc.msg})") from exc
                if not isinstance(event, dict) or "action" not in event:
                    raise DataError(f"{f}, line {n}: not an audit event (no 'action')")
                rows.append({c: event.get(c) for c in COLUMNS})
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if user is not None:
        frame = frame[frame["user"] == user]
    if case_id is not None:
        frame = frame[frame["case_id"] == case_id]
    return frame.reset_index(drop=True)


__all__ = ["ENV_AUDIT_LOG", "ACTIONS", "COLUMNS", "AuditLog", "read_audit", "utc_now"]
