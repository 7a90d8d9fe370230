"""Checkpoint folders set aside (`lfads.training.resume.plan_run`: another identity, more epochs
than asked): `set_aside` renames a folder to `<folder>.superseded-<UTC time>` with the reason
inside, so nothing is deleted; `lfads checkpoints` lists them with their size and reason and
`--prune` deletes them, and the workflow says at the end of a run how many there are. Imports
no torch, for the workflow's parsing and the command line.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("lfads.training.resume")

SUPERSEDED = ".superseded-"  # infix of a folder set aside
SET_ASIDE_REASON = "set_aside.txt"  # in a folder set aside: why (one line)


def set_aside(checkpoint_dir: Path, reason: str, warn: bool = False) -> Path:
    """Rename `checkpoint_dir` to `<checkpoint_dir>.superseded-<UTC time>` and log why (one line);
    returns the new path. An empty folder is removed instead."""
    if not any(checkpoint_dir.iterdir()):
        checkpoint_dir.rmdir()
        return checkpoint_dir
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = checkpoint_dir.with_name(f"{checkpoint_dir.name}{SUPERSEDED}{stamp}")
    checkpoint_dir.rename(aside)
    (aside / SET_ASIDE_REASON).write_text(f"{reason}\n")
    (log.warning if warn else log.info)(
        "%s: %s; set aside as %s; training afresh", checkpoint_dir, reason, aside
    )
    return aside


@dataclass(frozen=True)
class SetAside:
    """A checkpoint folder set aside by `set_aside`."""

    path: Path
    bytes: int
    reason: str  # "" for a folder set aside before the reason was recorded


def set_aside_folders(root: Path) -> list[SetAside]:
    """Every folder set aside below `root` (e.g. results/), sorted by path."""
    found = []
    for path in sorted(Path(root).rglob(f"*{SUPERSEDED}*")):
        if not path.is_dir():
            continue
        size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
        why = path / SET_ASIDE_REASON
        found.append(SetAside(path, size, why.read_text().strip() if why.exists() else ""))
    return found


def describe_set_aside(root: Path) -> str | None:
    """One line on the folders set aside below `root`, and how to list and remove them; None
    when there are none (the workflow's log at the end of a run)."""
    found = set_aside_folders(root)
    if not found:
        return None
    total = sum(folder.bytes for folder in found)
    return (
        f"{len(found)} checkpoint folder(s) set aside below {root}/ ({total / 2**20:.1f} MiB): "
        f"list them with `python -m lfads checkpoints {root}`, remove them with `--prune`"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root", nargs="?", type=Path, default=Path("results"), help="folder to search (results)"
    )
    parser.add_argument(
        "--prune", action="store_true", help="delete the folders listed (nothing else)"
    )


def run(args: argparse.Namespace) -> int:
    """`lfads checkpoints`: list the checkpoint folders that training set aside (another
    identity, more epochs than asked), with their size and why; `--prune` deletes them."""
    found = set_aside_folders(args.root)
    for folder in found:
        print(
            f"{folder.bytes / 2**20:8.1f} MiB  {folder.path}  {folder.reason or '(no reason kept)'}"
        )
    total = sum(folder.bytes for folder in found)
    print(f"{len(found)} folder(s) set aside below {args.root}/, {total / 2**20:.1f} MiB")
    if args.prune:
        for folder in found:
            shutil.rmtree(folder.path)
        print(f"removed {len(found)} folder(s), {total / 2**20:.1f} MiB")
    return 0
