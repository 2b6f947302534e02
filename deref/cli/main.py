"""Entry point of the ``deref`` console script.

Each subcommand lives in ``deref/cli/<name>.py`` and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` (a callable ``(args) -> int``). Failures the library
anticipates (``DeRefError``) end with a one-line reason on stderr and exit status 1; usage
errors exit with 2 (argparse's convention); success is 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deref import __version__
from deref.errors import DeRefError

#: Subcommand modules, in the order ``deref --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "demo",
    "validate",
    "train",
    "predict",
    "evaluate",
    "compare",
    "ablate",
    "tile",
    "extract",
    "mri",
    "genomics",
    "explain",
    "precompute",
    "figures",
    "audit",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deref",
        description="DeReF Studio: prepare data, train and evaluate DeReF survival models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deref {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"deref.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DeRefError as exc:
        print(f"deref {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"deref {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
