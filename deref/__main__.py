"""``python -m deref`` runs the ``deref`` command line."""

from deref.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
