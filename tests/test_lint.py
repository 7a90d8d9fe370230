"""Formatting and lint, as `make lint` checks them: ruff format, ruff check and snakefmt."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import BIN, REPO

# The tools installed next to the Python running the tests (the venv's).
CHECKS = [
    ("ruff", "format", "--check", "."),
    ("ruff", "check", "."),
    ("snakefmt", "--check", "workflow/"),
]


@pytest.mark.parametrize("command", CHECKS, ids=lambda command: " ".join(command[:2]))
def test_formatting_and_lint_are_clean(command):
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, (
        f"`{' '.join(command)}` failed (`ruff format .` and `snakefmt workflow/` fix formatting):\n"
        f"{result.stdout}{result.stderr}"
    )


def test_make_lint_runs_the_same_checks():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile: no lint target"
    commands = [line.strip() for line in recipe.group(1).splitlines()]
    for command in CHECKS:
        assert f"$(BIN)/{' '.join(command)}" in commands, (command, commands)
