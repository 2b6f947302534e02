"""Exceptions raised at the library's boundaries.

Every message names what is wrong (the file, the row, the column, the patient index) and
what was expected, so that a user can fix the input without reading a traceback.
"""

from __future__ import annotations


class DeRefError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(DeRefError, ValueError):
    """A tensor handed to a model does not fit its configuration (shape, dtype, NaN, mask)."""


class DataError(DeRefError, ValueError):
    """A cohort table, bag, split file or other file on disk is malformed or missing."""


class ConfigError(DeRefError, ValueError):
    """A configuration is inconsistent, or does not match a checkpoint or the data."""


class CheckpointError(DeRefError, ValueError):
    """A checkpoint or run directory is missing, corrupt, or from another configuration."""


def one_line(text: object) -> str:
    """``text`` (an exception or a message) as a single line: OpenSlide, libtiff and pandas
    messages sometimes hold newlines; an exception without a message gives its type name."""
    flat = " ".join(str(text).split())
    if not flat and isinstance(text, BaseException):
        return type(text).__name__
    return flat
