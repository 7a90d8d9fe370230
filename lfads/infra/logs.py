"""Logging set-up shared by the CLI and the workflow's scripts.

Lines read `2026-05-04T13:02:11+0000 INFO lfads.training.train: ...`: ISO 8601 date and time with
the UTC offset, so the lines of a cluster run that spans days (or hosts in other time zones) sort
and compare.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
# Libraries that give their top logger a console handler of their own on import (lightning,
# torchmetrics) while still passing records up to the root: each of their lines would be written
# twice, once without a date.
SELF_HANDLING_LOGGERS = ("lightning", "torchmetrics")


def configure(level: int = logging.INFO) -> None:
    """Plain timestamped lines on stderr (idempotent)."""
    logging.basicConfig(level=level, format=FORMAT, datefmt=DATE_FORMAT, stream=sys.stderr)


def drop_duplicate_handlers() -> None:
    """Remove the console handlers of SELF_HANDLING_LOGGERS while the root logger has handlers
    (their records still reach those). Call it after importing the library (idempotent)."""
    if not logging.getLogger().handlers:
        return
    for name in SELF_HANDLING_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.propagate:
            continue
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)


@contextlib.contextmanager
def log_to_file(path: str | Path) -> Iterator[None]:
    """Send logging, stdout and stderr (e.g. nlb_tools' prints and warnings) to `path`.

    Used by the workflow's scripts, whose Python output Snakemake does not
    redirect to the rule's `log:` by itself. A failure's traceback lands there too, after a
    line that says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt=DATE_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        except BaseException:
            logging.getLogger("lfads").exception("failed; the traceback follows")
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
