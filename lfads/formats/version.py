"""The check every reader makes: the file's `format_version` is the one this code reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION_KEY = "format_version"


class FormatVersionError(ValueError):
    """A file written in another format version than this code reads, or with none."""


def check_format_version(path: str | Path, found: Any, expected: int, remedy: str) -> None:
    """Raise FormatVersionError unless `found`, the file's format_version (None: absent), is
    `expected`.

    remedy: what rewrites the file, said to the user, e.g. "rerun the `prepare` rule".
    """
    if found is None:
        raise FormatVersionError(
            f"{path}: no {FORMAT_VERSION_KEY} (this code reads version {expected}); it was written "
            f"by an older version of this code or by another program. {remedy}"
        )
    if found != expected:
        raise FormatVersionError(
            f"{path}: {FORMAT_VERSION_KEY} is {found!r}, but this code reads version {expected}. "
            f"{remedy}"
        )


def plain(value: Any) -> Any:
    """HDF5 attribute -> plain Python value (numpy scalars and bytes are not weights_only-safe)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
