"""``deref audit``: print a dashboard's audit trail (who opened which run, patient, slide or export)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  deref audit runs/audit/deref-audit.jsonl
  deref audit runs/audit/deref-audit.jsonl --user alice@example.org
  deref audit runs/audit/deref-audit.jsonl --case TCGA-XX-0001 --csv alice.csv

The log is the JSON-lines file the dashboard appends to (DEREF_AUDIT_LOG, default
<first data root>/audit/deref-audit.jsonl); its rotated files (.1, .2, ...) are read too,
oldest first.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand."""
    p = subparsers.add_parser(
        "audit",
        help="print the dashboard's audit trail as a table",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", metavar="LOG", help="the audit log (audit.jsonl)")
    p.add_argument("--user", help="only this user's events")
    p.add_argument("--case", help="only events about this case id")
    p.add_argument("--csv", help="also write the table to this CSV")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from deref.audit import read_audit

    frame = read_audit(args.log, user=args.user, case_id=args.case)
    shown = frame.assign(detail=[_detail(d) for d in frame["detail"]])
    with pd.option_context("display.width", 160, "display.max_colwidth", 60, "display.max_rows", None):
        print(shown.to_string(index=False) if len(shown) else "no events match")
    print(f"{len(frame)} event(s)")
    if args.csv:
        shown.to_csv(args.csv, index=False)
    return 0


def _detail(d) -> str:
    if not d:
        return ""
    return ", ".join(f"{k}={v}" for k, v in dict(d).items())
