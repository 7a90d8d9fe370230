"""Search-space expansion: names are stable and carry only the searched values."""

import pytest

from lfads.search.space import MAX_RUN_NAME_BYTES, expand_search, run_name


def test_grid_is_crossed_with_stable_names():
    runs = expand_search({"grid": {"lr": [0.004, 0.001], "dropout": [0.1, 0.3]}})
    assert [run.name for run in runs] == [
        "dropout~0.1_lr~0.004",
        "dropout~0.1_lr~0.001",
        "dropout~0.3_lr~0.004",
        "dropout~0.3_lr~0.001",
    ]
    assert runs[1].params == {"dropout": 0.1, "lr": 0.001}


def test_changing_one_value_renames_only_its_runs():
    before = {
        run.name for run in expand_search({"grid": {"lr": [0.004, 0.001], "dropout": [0.1, 0.3]}})
    }
    after = {
        run.name for run in expand_search({"grid": {"lr": [0.004, 0.002], "dropout": [0.1, 0.3]}})
    }
    assert before & after == {"dropout~0.1_lr~0.004", "dropout~0.3_lr~0.004"}


def test_random_search_is_seeded_and_within_range():
    search = {
        "random": {
            "n": 5,
            "seed": 7,
            "log_uniform": {"kl_co_scale": [1e-6, 1e-4]},
            "uniform": {"dropout": [0.0, 0.6]},
        }
    }
    runs = expand_search(search)
    assert runs == expand_search(search)
    assert len({run.name for run in runs}) == 5
    for run in runs:
        assert 1e-6 <= run.params["kl_co_scale"] <= 1e-4
        assert 0 <= run.params["dropout"] <= 0.6
        assert run.name == run_name(run.params)
    other_seed = expand_search({**search, "random": {**search["random"], "seed": 8}})
    assert {run.name for run in other_seed}.isdisjoint({run.name for run in runs})


def test_grid_crossed_with_random_points():
    runs = expand_search(
        {"grid": {"lr": [0.01, 0.001]}, "random": {"n": 3, "uniform": {"dropout": [0, 1]}}}
    )
    assert len(runs) == 6


def test_no_search_is_one_base_run():
    (run,) = expand_search(None)
    assert run.name == "base" and run.params == {}


def test_a_key_in_grid_and_random_is_refused():
    with pytest.raises(ValueError, match="dropout"):
        expand_search(
            {"grid": {"dropout": [0.1]}, "random": {"n": 2, "uniform": {"dropout": [0, 1]}}}
        )


def test_null_grid_values_are_runs_named_null():
    """`readin_dim: [null, 8]` failed with TypeError ... not 'NoneType' when runs were named."""
    runs = expand_search({"grid": {"readin_dim": [None, 8]}})
    assert [(run.name, run.params) for run in runs] == [
        ("readin_dim~null", {"readin_dim": None}),
        ("readin_dim~8", {"readin_dim": 8}),
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ({"name": "multivariate_normal"}, r"search.grid.ic_prior\[1\]: .* is a mapping"),
        (["a", "b"], r"search.grid.ic_prior\[1\]: .* is a list"),
        ("../../escape", r"search.grid.ic_prior\[1\]: '../../escape' cannot be part of a run"),
        ("a b", r"cannot be part of a run's folder name"),
    ],
)
def test_grid_values_that_cannot_name_a_run_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        expand_search({"grid": {"ic_prior": ["poisson", value]}})


def test_searched_keys_must_be_hyperparameter_names():
    with pytest.raises(ValueError, match=r"search.grid: '\.\./x' is not a hyperparameter name"):
        expand_search({"grid": {"../x": [1]}})
    with pytest.raises(ValueError, match="search.random.uniform: 'a/b' is not a hyperparameter"):
        expand_search({"random": {"n": 1, "uniform": {"a/b": [0, 1]}}})


def test_random_ranges_are_checked():
    """A log-uniform range from 0 failed with a bare `math domain error`."""
    with pytest.raises(ValueError, match=r"log_uniform.lr: .* 0 < low <= high, got \[0, 0.1\]"):
        expand_search({"random": {"n": 2, "log_uniform": {"lr": [0, 0.1]}}})
    with pytest.raises(ValueError, match=r"uniform.dropout: .*low <= high.*got \[0.5, 0.1\]"):
        expand_search({"random": {"n": 2, "uniform": {"dropout": [0.5, 0.1]}}})


def test_a_run_name_too_long_for_a_folder_is_refused():
    """A run name over 255 bytes used to fail only when its train job made its folder."""
    value = "x" * (MAX_RUN_NAME_BYTES - len("readin_init~") + 1)
    with pytest.raises(ValueError, match=rf"is {MAX_RUN_NAME_BYTES + 1} bytes long.*allow 251"):
        expand_search({"grid": {"readin_init": [value]}})
    (run,) = expand_search({"grid": {"readin_init": [value[:-1]]}})
    assert len(run.name.encode()) == MAX_RUN_NAME_BYTES == 251
