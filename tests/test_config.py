"""Configfile validation: every shipped configfile is valid; bad keys and values are named."""

import copy

import pytest
import yaml
from conftest import REPO

from lfads.config import (
    ConfigError,
    check_config,
    check_output_paths,
    load_yaml,
    validate_config,
)
from lfads.data import prepare
from lfads.data.layouts import BIN_WIDTHS_MS, LAYOUTS

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = sorted((REPO / "config").glob("*.yaml"))


def test_one_configfile_per_nlb_dataset_plus_the_demo_its_pbt_search_and_its_seeds():
    expected = [*LAYOUTS, "config", "synthetic_pbt", "synthetic_seeds"]
    assert sorted(path.stem for path in CONFIGS) == sorted(expected)


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
    synthetic["source"]["synthetic"] = {"move_onset_ms": 50}  # area2_bump's window starts -100
    synthetic["nlb_layout"] = "area2_bump"
    with pytest.raises(ConfigError, match="source.synthetic: move_onset_ms=50.*>= 100"):
        check_config(synthetic)
    synthetic["source"]["synthetic"] = {"nlb_layout": "dmfc_rsg"}
    with pytest.raises(ConfigError, match="nlb_layout: set it at the top of the configfile"):
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
    assert len(check_config(config).runs) == config["search"]["random"]["n"]


def test_an_empty_grid_is_noted_not_silently_one_run(mc_maze):
    mc_maze["search"] = {"grid": {}}
    search = check_config(validate_config(mc_maze, SCHEMA))
    assert list(search.runs) == ["base"]
    assert search.notes[0] == (
        "search.grid is empty, so it searches nothing: 1 run(s) of model.hparams"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configfiles_are_valid(path):
    config = validate_config(load_yaml(path), SCHEMA, str(path))
    assert config["phase"] in ("val", "test")
    assert config["prepare"]["valid_fraction"] == 0.2
    if path.stem in LAYOUTS:  # `make submission` takes each NLB configfile's dataset from its name
        assert config["dataset"] == config["nlb_layout"] == path.stem


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
    assert "unknown key prepare.valid_fration; did you mean 'valid_fraction'?" in message
    mc_maze["prepare"]["zzz"] = 0.1  # nothing near: the allowed keys are listed
    assert "; allowed here: split_seed, valid_fraction" in _error(mc_maze)


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


def test_two_configfiles_that_both_set_a_search_are_refused_naming_both(
    tmp_path, snakemake_in_process
):
    """Merged key by key, grids of dropout [0.1, 0.2] and cd_rate [0.3, 0.4] would cross into 4
    runs that neither file asks for."""
    first, second, other = (
        tmp_path / "first.yaml",
        tmp_path / "second.yaml",
        tmp_path / "other.yaml",
    )
    first.write_text(yaml.safe_dump({"search": {"grid": {"dropout": [0.1, 0.2]}}}))
    second.write_text(yaml.safe_dump({"search": {"grid": {"cd_rate": [0.3, 0.4]}}}))
    other.write_text(yaml.safe_dump({"ensemble": {"top_k": 2}}))
    demo = str(REPO / "config" / "config.yaml")
    both = snakemake_in_process("-n", "--configfile", demo, str(first), str(second))
    assert both.returncode != 0
    assert f"search: set in 3 configfiles ({demo}, {first}, {second})" in both.stdout
    assert "Building DAG" not in both.stdout
    # one configfile with the search and another without one is fine
    fine = snakemake_in_process("-n", "--configfile", demo, str(other))
    assert fine.returncode == 0, fine.stdout[-3000:]


HOSTILE_ASSET_PATHS = [
    "../../../outside/victim.nwb",
    "/tmp/victim.nwb",
    "sub-A//file.nwb",
    "sub-A/../../file.nwb",
    "./file.nwb",
    ".hidden/file.nwb",
]


@pytest.mark.parametrize("bad", HOSTILE_ASSET_PATHS)
def test_asset_paths_that_could_escape_are_refused_by_schema_and_code(mc_maze, bad):
    """An absolute path or one with `..` was an output of fetch: Snakemake deleted that file."""
    mc_maze["source"]["dandi"]["assets"]["test"]["path"] = bad
    message = _error(mc_maze)
    assert f"source.dandi.assets.test.path: {bad!r} is not valid" in message
    assert "a relative path inside the dandiset ending in .nwb" in message
    config = validate_config(load_yaml(REPO / "config" / "mc_maze.yaml"), SCHEMA)
    config["source"]["dandi"]["assets"]["test"]["path"] = bad  # past the schema: the code refuses
    with pytest.raises(ConfigError, match="source.dandi.assets.test.path: .*(relative|below)"):
        check_config(config)


def test_names_too_long_for_the_file_system_are_refused(mc_maze):
    config = validate_config(copy.deepcopy(mc_maze), SCHEMA)
    long_name = "sub-A/" + "x" * 223 + ".nwb"  # 227 bytes: its set-aside name would be 256
    config["source"]["dandi"]["assets"]["train"]["path"] = long_name
    with pytest.raises(ConfigError, match=r"assets.train.path: .* is 227 bytes long.* 226 bytes"):
        check_config(config)
    config["source"]["dandi"]["assets"]["train"]["path"] = long_name.replace("x", "", 1)
    check_config(config)
    mc_maze["dataset"] = "d" * 101
    assert "dataset: 'ddd" in _error(mc_maze) and "at most 100" in _error(mc_maze)


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", ""])
def test_dataset_names_that_are_not_one_folder_name_are_refused(mc_maze, bad):
    mc_maze["dataset"] = bad
    assert f"dataset: {bad!r} is not valid: expected a name of at most 100" in _error(mc_maze)


def test_output_paths_outside_the_project_are_refused():
    check_output_paths(["resources/data/x", "results/x/val/runs/base"])
    for bad in ("/etc/x", "results/../../x", "elsewhere/x", "results//x"):
        with pytest.raises(ConfigError, match="Outputs go below resources/ and results/"):
            check_output_paths(["results/x", bad])


def test_a_layout_the_dandiset_does_not_hold_is_refused(mc_maze):
    mc_maze["nlb_layout"] = "mc_rtt"
    config = validate_config(mc_maze, SCHEMA)
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    assert str(caught.value) == (
        "nlb_layout: DANDI:000128 (source.dandi.dandiset) holds the mc_maze files, not 'mc_rtt'; "
        "set nlb_layout: mc_maze, or name the dandiset of mc_rtt (DANDI:000129)."
    )


def _hparams_error(mc_maze, **hparams) -> str:
    config = validate_config(copy.deepcopy(mc_maze), SCHEMA)
    config["model"]["hparams"].update(hparams)
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    return str(caught.value)


@pytest.mark.parametrize(
    "hparams, message",
    [
        (
            {"ic_prior": {"name": "multivariate_normal", "variance": -1}},
            "ic_prior.variance: must be > 0, got -1",
        ),
        (
            {"co_prior": {"name": "autoregressive_normal", "tau": -5}},
            "co_prior.tau: must be > 0, got -5",
        ),
        (
            {"co_prior": {"name": "autoregressive_normal", "noise_variance": 0}},
            "co_prior.noise_variance: must be > 0",
        ),
        (
            {"co_prior": {"name": "multivariate_student_t", "df": 0}},
            "co_prior.df: must be > 0, got 0",
        ),
        (
            {"co_prior": {"name": "multivariate_student_t", "scale": -0.1}},
            "co_prior.scale: must be > 0",
        ),
        (
            {"ic_prior": {"name": "multivariate_normal", "varience": 1.0}},
            "ic_prior: prior 'multivariate_normal' has no option 'varience'; "
            "its options are ['mean', 'variance']",
        ),
        (
            {"reconstruction": {"name": "zero_inflated_gamma", "scale_init": 0}},
            "reconstruction.scale_init: must be > 0, got 0",
        ),
        (
            {"reconstruction": {"name": "zero_inflated_gamma", "gamma_loc": -0.1}},
            "reconstruction.gamma_loc: must be >= 0",
        ),
        (
            {"reconstruction": {"name": "zero_inflated_gamma", "scale_penalty": -1}},
            "reconstruction.scale_penalty: must be >= 0",
        ),
        (
            {"reconstruction": {"name": "poisson", "rate": 1}},
            "reconstruction: reconstruction 'poisson' has no option 'rate'; its options are none",
        ),
        (
            {"train_augmentations": [{"name": "temporal_shift", "std": -1}]},
            "train_augmentations[0].std: must be >= 0, got -1",
        ),
        (
            {"train_augmentations": [{"name": "temporal_shift", "max_shift": -2}]},
            "train_augmentations[0].max_shift: must be >= 0, got -2",
        ),
        (
            {"infer_augmentations": [{"name": "spike_jitter", "width": 1.5}]},
            "infer_augmentations[0].width: expected an integer, got 1.5",
        ),
        (
            {"train_augmentations": [{"name": "coordinated_dropout", "rate": 1.0}]},
            "train_augmentations[0].rate: must be in [0, 1), got 1.0",
        ),
        (
            {"train_augmentations": [{"name": "sample_validation", "rate": -0.1}]},
            "train_augmentations[0].rate: must be in [0, 1)",
        ),
        (
            {"train_augmentations": [{"name": "selective_backprop", "fill_value": "one"}]},
            "train_augmentations[0].fill_value: expected a number, got 'one'",
        ),
        (
            {"co_prior": {"name": "autoregressive_normal", "tau": float("inf")}},
            "co_prior.tau: expected a finite number, got inf",
        ),
        (
            {"ic_prior": {"name": "multivariate_normal", "variance": "1e-3"}},
            "YAML reads a number without a dot, like 1e-3, as a string: write 1.0e-3",
        ),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, dict) else None,
)
def test_options_of_built_in_parts_out_of_range_fail_before_any_job(mc_maze, hparams, message):
    """ic_prior variance -1 or co_prior tau -5 passed the start-up check, then every train job died
    with `math domain error`."""
    error = _hparams_error(mc_maze, **hparams)
    assert error.startswith("model.hparams / search (run ") and message in error


def test_the_option_table_lists_every_option_of_every_built_in_part():
    import inspect

    from lfads.model import registry

    for kind in registry.KINDS:
        assert sorted(registry.BUILTIN_OPTIONS[kind]) == sorted(registry._BUILTINS[kind])
        for name, options in registry.BUILTIN_OPTIONS[kind].items():
            parameters = inspect.signature(registry.lookup(kind, name)).parameters
            # the sizes the model supplies
            keywords = set(parameters) - {"dim", "n_neurons", "n_members"}
            assert set(options) == keywords, (kind, name)
            for option, accepted in options.items():  # every default is accepted
                assert accepted.problem(parameters[option].default) is None, (kind, name)


def test_grid_over_null_runs_and_a_grid_over_a_part_is_refused(mc_maze):
    config = validate_config(copy.deepcopy(mc_maze), SCHEMA)
    config["search"] = {"grid": {"readin_dim": [None, 8]}}
    search = check_config(config)
    assert search.runs == {
        "readin_dim~null": {"readin_dim": None},
        "readin_dim~8": {"readin_dim": 8},
    }
    # an architecture key cannot differ inside a pack: two packs, and the check says why
    assert search.packs == {"pack00": ["readin_dim~null"], "pack01": ["readin_dim~8"]}
    (note,) = search.notes
    assert "the 2 runs train in 2 packs, not 1: they differ in ['readin_dim']" in note
    config["search"] = {"grid": {"ic_prior": [{"name": "multivariate_normal", "variance": 0.2}]}}
    with pytest.raises(ConfigError, match=r"search.grid.ic_prior\[0\]: .* is a mapping; a grid"):
        check_config(config)


@pytest.mark.parametrize("nlb_layout", ["mc_maze", "mc_rtt", "area2_bump", "dmfc_rsg"])
def test_the_full_size_configfiles_pass_the_check_at_real_size_and_5_ms(nlb_layout):
    """`make full-size`: the layout's NLB configfile on the synthetic source at real size."""
    from bench.full_size import RUN, full_size_config
    from lfads.data.synthetic import REAL_SIZES, SyntheticSettings

    config = validate_config(full_size_config(nlb_layout, epochs=20), SCHEMA)
    assert list(check_config(config).runs) == [RUN]
    assert config["model"]["bin_width"] == 5 and config["model"]["hparams"]["max_epochs"] == 20
    settings = SyntheticSettings.from_dict(config["source"]["synthetic"], nlb_layout)
    assert settings.n_train_trials == REAL_SIZES[nlb_layout]["n_train_trials"]
