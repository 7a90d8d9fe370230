"""Configfile validation: every shipped configfile is valid; bad keys and values are named."""

import copy

import pytest
import yaml
from conftest import REPO

from lfads.data import prepare
from lfads.data.layouts import BIN_WIDTHS_MS, LAYOUTS
from lfads.infra.config import ConfigError, check_config, load_yaml, validate_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = sorted((REPO / "config").glob("*.yaml"))


def test_one_configfile_per_nlb_dataset_plus_the_default():
    assert sorted(path.stem for path in CONFIGS) == sorted([*LAYOUTS, "config"])


def test_schema_enums_are_those_of_the_layout_table():
    """The schema's layouts and bin widths are checked here against lfads.data.layouts."""
    properties = load_yaml(SCHEMA)["properties"]
    assert properties["nlb_layout"]["enum"] == list(LAYOUTS)
    assert properties["bin_widths"]["items"]["enum"] == list(BIN_WIDTHS_MS)
    assert properties["bin_widths"]["default"] == list(BIN_WIDTHS_MS)
    assert properties["model"]["properties"]["bin_width"]["enum"] == list(BIN_WIDTHS_MS)


def test_split_defaults_agree_in_schema_function_and_command_line():
    """prepare.valid_fraction and split_seed default alike wherever prepare is called."""
    import argparse
    import inspect

    schema = load_yaml(SCHEMA)["properties"]["prepare"]["properties"]
    defaults = {
        "valid_fraction": prepare.DEFAULT_VALID_FRACTION,
        "split_seed": prepare.DEFAULT_SPLIT_SEED,
    }
    assert {key: schema[key]["default"] for key in defaults} == defaults
    signature = inspect.signature(prepare.prepare).parameters
    assert {key: signature[key].default for key in defaults} == defaults
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    required = ["--train-nwb", "a", "--test-nwb", "b", "--out", "c", "--nlb-layout", "mc_maze"]
    args = parser.parse_args([*required, "--bin-width", "20"])
    assert {key: getattr(args, key) for key in defaults} == defaults


def test_posterior_sample_count_defaults_agree_in_schema_function_and_command_line():
    import argparse
    import inspect

    from lfads.evaluation import infer

    schema = load_yaml(SCHEMA)["properties"]["model"]["properties"]["n_samples"]
    assert schema["default"] == infer.DEFAULT_N_SAMPLES
    signature = inspect.signature(infer.posterior_sample).parameters
    assert signature["n_samples"].default == infer.DEFAULT_N_SAMPLES
    parser = argparse.ArgumentParser()
    infer.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--out", "o"])
    assert args.samples == infer.DEFAULT_N_SAMPLES


def test_values_the_schema_cannot_check_fail_before_any_job(mc_maze):
    """check_config: the synthetic settings, the layout a source can write, hyperparameters."""
    synthetic = validate_config(
        {"dataset": "s", "nlb_layout": "mc_maze", "source": {"synthetic": {"n_helding": 3}}},
        SCHEMA,
    )
    with pytest.raises(ConfigError, match=r"source.synthetic: unknown synthetic setting"):
        check_config(synthetic)
    synthetic["source"]["synthetic"] = {"base_rate_hz": -1.0}
    with pytest.raises(ConfigError, match="source.synthetic: base_rate_hz: must be > 0, got -1.0"):
        check_config(synthetic)
    synthetic["source"]["synthetic"] = {}
    synthetic["nlb_layout"] = "dmfc_rsg"
    with pytest.raises(ConfigError, match="nlb_layout: the synthetic source writes the MC_Maze"):
        check_config(synthetic)
    config = validate_config(copy.deepcopy(mc_maze), SCHEMA)
    config["model"]["hparams"]["lr"] = float("inf")
    with pytest.raises(ConfigError, match=r"run .*lr: expected a finite number, got inf"):
        check_config(config)
    config = validate_config(copy.deepcopy(mc_maze), SCHEMA)
    config["model"]["bin_width"] = 5
    config["bin_widths"] = [20]
    with pytest.raises(ConfigError, match="model.bin_width: 5 is not one of bin_widths"):
        check_config(config)
    config = validate_config(copy.deepcopy(mc_maze), SCHEMA)
    assert len(check_config(config)) == config["search"]["random"]["n"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configfiles_are_valid(path):
    config = validate_config(load_yaml(path), SCHEMA, str(path))
    assert config["phase"] in ("val", "test")
    assert config["prepare"]["valid_fraction"] == 0.2


def test_defaults_are_filled_in():
    config = validate_config(
        {"dataset": "x", "nlb_layout": "mc_rtt", "source": {"synthetic": {}}}, SCHEMA
    )
    assert config["phase"] == "val"
    assert config["bin_widths"] == [5, 20]
    assert config["prepare"] == {"valid_fraction": 0.2, "split_seed": 0}
    assert config["targets"]["mem_mb"] == 8000


@pytest.fixture
def mc_maze():
    return load_yaml(REPO / "config" / "mc_maze.yaml")


def _error(config) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(config, SCHEMA, "my.yaml")
    return str(caught.value)


def test_unknown_key_is_named(mc_maze):
    mc_maze["prepare"]["valid_fration"] = 0.1
    message = _error(mc_maze)
    assert "my.yaml" in message
    assert "prepare.valid_fration" in message
    assert "valid_fraction" in message  # the allowed keys are listed


def test_bad_values_are_named(mc_maze):
    bad = copy.deepcopy(mc_maze)
    bad["bin_widths"] = [5, 10]
    assert "bin_widths.1: 10 is not valid" in _error(bad)
    bad = copy.deepcopy(mc_maze)
    bad["source"]["dandi"]["assets"]["train"]["sha256"] = "abc"
    assert "source.dandi.assets.train.sha256: 'abc'" in _error(bad)
    bad = copy.deepcopy(mc_maze)
    bad["nlb_layout"] = "mc_mazes"
    assert "nlb_layout: 'mc_mazes'" in _error(bad)


def test_two_sources_are_refused(mc_maze):
    mc_maze["source"]["synthetic"] = {"seed": 1}
    assert "source: give exactly one of dandi, local, synthetic" in _error(mc_maze)


def test_missing_key_is_named(mc_maze):
    del mc_maze["dataset"]
    assert "'dataset' is a required property" in _error(mc_maze)


def test_workflow_stops_on_bad_config_before_any_job(tmp_path, mc_maze, snakemake_in_process):
    mc_maze["phase"] = "testing"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mc_maze))
    result = snakemake_in_process("-n", "--configfile", str(bad))
    assert result.returncode != 0
    output = result.stdout
    assert "phase: 'testing' is not valid" in output
    assert "Building DAG" not in output and "rule fetch" not in output
