"""The start of a multi-session model's per-session readins: principal-components regression."""

from __future__ import annotations

import logging

from lfads.model.lfads import LFADS
from lfads.model.readin import pcr_readins, session_averages, shared_conditions
from lfads.training.datamodule import SessionData

log = logging.getLogger("lfads.training.train")  # training's own log, like the module's


def set_pcr_readins(model: LFADS, sessions: list[SessionData]) -> None:
    """Set the readins by PCR on each session's train trials (`readin_init: pcr`); a model
    without per-session readins, or with `readin_init: random`, is left as it is.

    The averages are per condition shared by every session, or over all trials without them.
    """
    if model.readin_dim is None or model.hparams.readin_init != "pcr":
        return
    conditions = shared_conditions([s.conditions.get("train") for s in sessions])
    averages = [
        session_averages(
            s.splits["train"].encod_data.numpy(), s.conditions.get("train"), conditions
        )
        for s in sessions
    ]
    for member, hparams in enumerate(model.members):  # random rows from each member's seed
        model.set_readins(pcr_readins(averages, model.readin_dim, seed=hparams.seed), member)
    log.info(
        "readins of %d sessions set by PCR on %s",
        len(sessions),
        f"{len(conditions)} shared conditions" if conditions else "trial-averaged activity",
    )
