"""Logging set-up shared by the CLI and the workflow's scripts."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.INFO) -> None:
    """Plain timestamped lines on stderr (idempotent)."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)


@contextlib.contextmanager
def log_to_file(path: str | Path) -> Iterator[None]:
    """Send logging, stdout and stderr (e.g. nlb_tools' prints and warnings) to `path`.

    Used by the workflow's scripts, whose Python output Snakemake does not
    redirect to the rule's `log:` by itself. A failure's traceback lands there too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        except BaseException:
            logging.getLogger("lfads").exception("failed; see the traceback above")
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
