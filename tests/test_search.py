"""Search-space expansion: names are stable and carry only the searched values."""

import pytest

from lfads.search.space import expand_search, run_name


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
