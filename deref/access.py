"""What a shared server may open: data roots, names relative to them, and safe identifiers.

A dashboard shared with a team opens runs, cohort tables, bag and slide folders **only under
configured roots** (``DEREF_DATA_ROOTS``, folders separated by ``os.pathsep``). A deep link or
a form names a run *relative to a root* (``?run=blca-deref``); a path that resolves outside
every root (an absolute path elsewhere, ``..``, a symlink leading out), a name that does not
exist and a folder the server cannot read all get **one and the same message**
(:data:`NOT_AVAILABLE`), so the answer reveals nothing about the server's file system.

Identifiers that become file names (slide ids, bag names) must be single path components:
:func:`check_component` refuses separators, ``..`` and control characters at the cohort's edge.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deref.errors import DataError, DeRefError

ENV_DATA_ROOTS = "DEREF_DATA_ROOTS"
#: The one answer for anything a user may not or cannot open.
NOT_AVAILABLE = "not available on this server (ask the administrator for its name under a shared data root)"


class AccessError(DeRefError, PermissionError):
    """A name outside every data root, missing or unreadable: always :data:`NOT_AVAILABLE`."""

    def __init__(self, what: str = "this item") -> None:
        super().__init__(f"{what}: {NOT_AVAILABLE}")


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class DataRoots:
    """The folders a server shares; every path it opens resolves (symlinks followed) inside one."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, folders: Iterable[str | os.PathLike | None]) -> DataRoots:
        seen: list[Path] = []
        for f in folders:
            if f:
                p = _real(f)
                if p not in seen:
                    seen.append(p)
        return cls(tuple(seen))

    @classmethod
    def from_env(cls, defaults: Iterable[str | os.PathLike | None] = ()) -> DataRoots:
        """``$DEREF_DATA_ROOTS`` when set (only those), else ``defaults``."""
        env = os.environ.get(ENV_DATA_ROOTS, "").strip()
        if env:
            return cls.of(part for part in env.split(os.pathsep) if part.strip())
        return cls.of(defaults)

    def contains(self, path: str | os.PathLike) -> bool:
        real = _real(path)
        return any(_inside(real, r) for r in self.roots)

    def _candidates(self, name: str, bases: Iterable[Path] = ()) -> list[Path]:
        text = str(name).strip()
        if not text or "\x00" in text:
            return []
        p = Path(text)
        if p.is_absolute():
            return [p]
        out = [r / p for r in self.roots]
        head, *rest = p.parts
        out += [r.joinpath(*rest) for r in self.roots if rest and r.name == head]  # "<root>/<name>"
        return out + [Path(b) / p for b in bases]

    def resolve(
        self, name: str, what: str = "this item", *, kind: str = "any", bases: Iterable[Path] = ()
    ) -> Path:
        """The real path ``name`` names: relative to a root (or ``<root folder name>/<name>``, or
        relative to one of ``bases``, or an absolute path), provided it lies inside a root.
        ``kind``: ``"run"`` (a folder holding run.json), ``"file"``, ``"dir"`` or ``"any"``.
        Raises :class:`AccessError` (one message) for anything else."""
        for cand in self._candidates(name, bases):
            real = _real(cand)
            if not any(_inside(real, r) for r in self.roots):
                continue
            if _usable(real, kind):
                return real
        raise AccessError(what)

    def check(self, path: str | os.PathLike, what: str = "this item", *, kind: str = "any") -> Path:
        """``path`` itself (already a path, e.g. from the environment) if it lies inside a root."""
        real = _real(path)
        if any(_inside(real, r) for r in self.roots) and _usable(real, kind):
            return real
        raise AccessError(what)

    def name_of(self, path: str | os.PathLike) -> str:
        """``path`` relative to the first root holding it (the name links and pages show), or
        ``<root folder name>/<relative>`` when the shorter name would resolve to another path."""
        real = _real(path)
        for i, r in enumerate(self.roots):
            if _inside(real, r):
                rel = real.relative_to(r)
                short = str(rel) if str(rel) != "." else r.name
                # the same name under an earlier root would win (whether or not ``path`` exists now)
                taken = any(_usable(_real(other / short), "any") for other in self.roots[:i])
                return str(Path(r.name) / rel) if taken else short
        raise AccessError()


def _usable(path: Path, kind: str) -> bool:
    try:
        if kind == "run":
            return (path / "run.json").is_file() and os.access(path / "run.json", os.R_OK)
        if kind == "file":
            return path.is_file() and os.access(path, os.R_OK)
        if kind == "dir":
            return path.is_dir() and os.access(path, os.R_OK | os.X_OK)
        return path.exists() and os.access(path, os.R_OK)
    except OSError:
        return False


def is_loopback(address: str | None) -> bool:
    """Whether a bind address reaches only this machine (``127.0.0.1``, ``::1``, ``localhost``);
    an empty address is "every interface"."""
    import ipaddress

    text = (address or "").strip().strip("[]")
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def component_problem(value: object) -> str | None:
    """Why ``value`` cannot be a file name inside a folder (a slide id, a bag name), or None."""
    text = str(value)
    if not text.strip():
        return "is empty"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    if text in (".", "..") or text.startswith(".."):
        return "is a relative path ('..')"
    if any(ord(ch) < 32 for ch in text):
        return "contains a control character"
    return None


def check_component(value: object, what: str) -> str:
    """``value`` as a string, or a :class:`~deref.errors.DataError` naming ``what`` and why."""
    problem = component_problem(value)
    if problem:
        raise DataError(f"{what} {str(value)!r} {problem}; expected a plain file name (no folders)")
    return str(value)


__all__ = [
    "ENV_DATA_ROOTS",
    "NOT_AVAILABLE",
    "AccessError",
    "DataRoots",
    "component_problem",
    "is_loopback",
    "check_component",
]
