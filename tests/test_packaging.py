"""The conda env that rules name pins the same packages as pyproject.toml."""

import tomllib

import yaml
from conftest import REPO


def test_conda_env_matches_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    env = yaml.safe_load((REPO / "envs" / "lfads.yaml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    requirements = [line for line in pip_section if not line.startswith("-")]
    assert sorted(requirements) == sorted(pyproject["project"]["dependencies"])
    python = next(
        item for item in env["dependencies"] if isinstance(item, str) and item.startswith("python")
    )
    assert pyproject["project"]["requires-python"].lstrip(">=") in python
