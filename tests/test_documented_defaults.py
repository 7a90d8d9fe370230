"""The HParams defaults are the lfads-torch nlb_mc_maze settings that lfads/README.md tabulates."""

from __future__ import annotations

import re

import yaml
from conftest import REPO

from lfads.model.hparams import HParams

TABLE_HEADING = "#### The defaults: lfads-torch's nlb_mc_maze settings"


def documented_defaults() -> dict[str, object]:
    """key -> value of the README's table under TABLE_HEADING (values read as YAML)."""
    text = (REPO / "lfads" / "README.md").read_text()
    assert TABLE_HEADING in text, f"lfads/README.md has no section {TABLE_HEADING!r}"
    section = text.split(TABLE_HEADING, 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, re.M)
    return {key: yaml.safe_load(value) for key, value in rows}


def test_hparams_defaults_equal_the_table_they_cite():
    table = documented_defaults()
    # the sizes, dropout, coordinated dropout, learning rate, ramps, KL, priors and stopping
    assert len(table) >= 30 and {"dropout", "cd_rate", "lr", "kl_increase_epoch"} <= set(table)
    defaults = HParams().to_dict()
    unknown = sorted(set(table) - set(defaults))
    assert unknown == [], f"the table names keys HParams does not have: {unknown}"
    differing = {
        key: (defaults[key], value) for key, value in table.items() if defaults[key] != value
    }
    assert differing == {}, f"HParams default vs lfads-torch's value: {differing}"
    assert table["dropout"] == 0.3 and table["cd_rate"] == 0.3
