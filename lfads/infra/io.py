"""Small file helpers shared by every stage: atomic writes, JSON/YAML output, stale temporaries.

Every output of the pipeline is written to a temporary file beside its final path and renamed
into place only when complete, so a killed job never leaves a file that looks finished. The
temporary file's name says which host and process wrote it,
`.<stem>.tmp.<host>@<pid>.<random><suffix>` (e.g. `.inferred.tmp.node7@4242.k2x9_q1a.h5`), so
that a later run can tell the leftovers of a killed writer from a live one
(`remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lfads.infra.paths import MAX_NAME_BYTES

# A temporary file of `atomic_path` (or of the Makefile's report target, which follows it).
TEMPORARY_NAME = re.compile(
    r"^\.(?P<stem>.*)\.tmp\.(?P<host>[A-Za-z0-9.-]+)@(?P<pid>[0-9]+)\.[A-Za-z0-9_]+(\.[^.]*)?$"
)
# Those of versions before the host and process were in the name: `.<stem>.<random>.tmp<suffix>`.
OLD_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")
# A temporary file of another host (or an old one) is left alone this long: its writer may live.
STALE_AFTER_S = 24 * 3600.0


def host_name() -> str:
    """This machine's name as temporary file names carry it (characters outside [A-Za-z0-9.-]
    become "-")."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "unknown-host"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    The temporary file keeps the final suffix (h5py and pynwb look at it), names this host and
    process, and is removed if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = f".tmp.{host_name()}@{os.getpid()}."
    room = MAX_NAME_BYTES - len(f".{writer}12345678{path.suffix}".encode())
    stem = path.stem.encode()[: max(room, 0)].decode(errors="ignore")  # the stem is for humans
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{stem}{writer}", suffix=path.suffix, dir=path.parent
    )
    os.close(handle)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create the file themselves (h5py refuses some existing files)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def open_hdf5(path: str | os.PathLike, remedy: str) -> Iterator[Any]:
    """h5py.File(path, "r"), for the readers of lfads/formats: a file that HDF5 cannot open or
    read (truncated by a full disk or a killed copy, damaged, not HDF5) raises ValueError naming
    it, with `remedy` (the format's, which names the rule that writes it)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. {remedy}")
    try:
        with h5py.File(path, "r") as handle:
            yield handle
    except OSError as error:
        raise ValueError(
            f"{path}: HDF5 cannot read it ({error}): the file is truncated or damaged. {remedy}"
        ) from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _process_exists(pid: int) -> bool:
    """True while process `pid` runs on this host (not a zombie: exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # Linux: the state letter follows the command name in parentheses
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """True for a temporary file of `atomic_path` whose writer is gone.

    Gone: on this host, no process has its id; from another host (or of the old naming, without
    host and process), not modified for `STALE_AFTER_S`. Any other file is not stale.
    """
    match = TEMPORARY_NAME.match(path.name)
    if match is None and OLD_TEMPORARY_NAME.match(path.name) is None:
        return False
    if match is not None and match["host"] == host_name():
        return not _process_exists(int(match["pid"]))
    try:
        age_s = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:  # renamed into place meanwhile
        return False
    return age_s > STALE_AFTER_S


def remove_stale_temporaries(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files of killed writers below `folders`; return their paths.

    Run when the workflow starts: a job killed while writing (Ctrl-C, SIGKILL, a full disk)
    leaves its temporary file behind, and nothing else ever removes it. Files of live writers
    (concurrent runs, other hosts on a shared file system) are left alone (`is_stale_temporary`).
    Symbolic links are neither followed nor removed.
    """
    removed = []
    now = time.time()
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                if not path.is_symlink() and is_stale_temporary(path, now):
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed
