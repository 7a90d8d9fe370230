"""Paths built from a configfile: relative, inside the project's resources/ or results/, short.

Every path the workflow writes is made of fixed parts and three configfile values: the dataset
name, the DANDI asset paths and the run names of the search. Snakemake deletes a job's existing
outputs before it runs the job, so an output path that escaped the project would delete a user's
file. The schema refuses such values; these checks refuse them again in the code (for callers that
skip the schema) and add what a schema cannot say: the length of each name in bytes.
"""

from __future__ import annotations

# Longest file or folder name on the usual file systems (ext4, XFS, btrfs: 255 bytes; APFS, NTFS:
# 255 characters).
MAX_NAME_BYTES = 255
# Longest whole path Linux accepts (PATH_MAX, the terminating NUL included).
MAX_PATH_BYTES = 4096
# The folders of the project that the workflow writes into.
PROJECT_FOLDERS = ("resources", "results")


def check_name(name: str, where: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` if it can be one file or folder name of at most `max_bytes` bytes (UTF-8).

    where: what the name is, for messages ("dataset", "search: run name").
    Raises ValueError naming `where` for "", ".", "..", a "/" or NUL inside, or a long name.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(
            f"{where}: {name!r} cannot be a file or folder name (it must not be empty, '.' or "
            "'..', nor hold '/')"
        )
    size = len(name.encode())
    if size > max_bytes:
        raise ValueError(
            f"{where}: {name[:40]!r}... is {size} bytes long; the file system allows "
            f"{max_bytes} bytes here. Use a shorter name."
        )
    return name


def relative_parts(path: str, where: str, max_name_bytes: int = MAX_NAME_BYTES) -> tuple[str, ...]:
    """The parts of `path`, a relative POSIX path whose parts are all names (`check_name`).

    Raises ValueError naming `where` for an absolute path, an empty part (`a//b`), `.`, `..` or
    a hidden part (`.name`: temporary files are hidden, so real paths are not).
    """
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise ValueError(
            f"{where}: {path!r} must be a relative path (like sub-Jenkins/file.nwb), "
            "not an absolute or empty one"
        )
    parts = tuple(path.split("/"))
    for part in parts:
        if part == "" or part.startswith("."):  # "", ".", ".." and hidden names
            raise ValueError(
                f"{where}: {path!r} must stay below its folder: no '..', '.', empty parts or "
                "parts starting with '.'"
            )
        check_name(part, where, max_name_bytes)
    return parts


def check_inside_project(path: str, where: str) -> str:
    """`path` if it is relative, below resources/ or results/, and short enough; else ValueError."""
    parts = relative_parts(str(path), where)
    if parts[0] not in PROJECT_FOLDERS:
        raise ValueError(
            f"{where}: {path!r} is outside the project's {' and '.join(PROJECT_FOLDERS)} folders"
        )
    if len(path.encode()) >= MAX_PATH_BYTES:
        raise ValueError(f"{where}: {path[:60]!r}... is longer than a path may be; shorten it")
    return path
