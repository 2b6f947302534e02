"""``python -m app.serve [--address A] [--port P] [--open]``: start the dashboard for a team.

Refuses (exit status 2, before any server starts) to listen on a non-loopback address unless
sign-in is configured (an ``[auth]`` section in ``.streamlit/secrets.toml``) or ``--open`` (or
``DEREF_OPEN=1``) says, on purpose, that the dashboard is served open with no sign-in. The app
checks the same at every page (``app.auth``), so ``streamlit run`` with another address is
refused too. ``make serve ADDRESS=0.0.0.0`` calls this.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deref.access import is_loopback  # noqa: E402  (no streamlit: the refusal comes first)


def sign_in_configured(secrets: Path) -> bool:
    """Whether ``secrets`` has an ``[auth]`` (or ``[auth.<provider>]``) table."""
    try:
        text = secrets.read_text(encoding="utf-8")
    except OSError:
        return False
    return re.search(r"^\s*\[\s*auth\s*(\]|\.)", text, flags=re.MULTILINE) is not None


def refusal(address: str, secrets: Path, open_flag: bool) -> str | None:
    if is_loopback(address) or open_flag or sign_in_configured(secrets):
        return None
    return (
        f"refusing to serve DeReF Studio on {address or 'every interface'} without sign-in: add an [auth] "
        f"section to {secrets} (see .streamlit/secrets.toml.example) or pass --open (DEREF_OPEN=1) to serve "
        "it open to the network on purpose"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--open", action="store_true", help="serve with no sign-in on purpose (DEREF_OPEN=1)")
    args, rest = p.parse_known_args(argv)
    secrets = REPO / ".streamlit" / "secrets.toml"
    open_flag = args.open or os.environ.get("DEREF_OPEN") == "1"
    why = refusal(args.address, secrets, open_flag)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    env = dict(os.environ, **({"DEREF_OPEN": "1"} if open_flag else {}))
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py")]
    cmd += ["--server.address", args.address, "--server.port", str(args.port), *rest]
    os.chdir(REPO)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
