"""PBT decisions: settings, initial population, exploit and explore, stop rule, files."""

import dataclasses
import math

import numpy as np
import pytest

from lfads.search.pbt import (
    PBTSettings,
    WorkerResult,
    history_rows,
    initial_plan,
    initial_population,
    plan_next_generation,
    read_curves,
    read_history,
    read_plan,
    read_results,
    stop_reason,
    write_curves,
    write_history,
    write_plan,
    write_results,
)

# Ranges wide enough that one perturbation of START never reaches a bound.
WIDE = {
    "lr": {"range": [1.0e-6, 1.0], "scale": "log"},
    "dropout": {"range": [0.0, 0.9], "scale": "linear"},
}
START = {"dropout": 0.3, "lr": 1.0e-3}


def results_for(settings, values, losses):
    """WorkerResults of the whole population: one value mapping (or one per worker) and losses."""
    if isinstance(values, dict):
        values = [values] * settings.population
    return [
        WorkerResult(name, dict(worker_values), float(loss))
        for name, worker_values, loss in zip(settings.worker_names, values, losses)
    ]


# -- settings ------------------------------------------------------------------------------


def test_defaults_are_lfads_torch_run_pbt():
    settings = PBTSettings.from_config({})
    assert settings == PBTSettings()
    assert (settings.population, settings.generation_epochs, settings.burn_in_epochs) == (
        20,
        25,
        105,
    )
    assert (settings.max_epochs, settings.patience_generations, settings.seed) == (1000, 4, 0)
    assert (settings.min_improvement, settings.perturb_width, settings.perturb_space) == (
        5e-4,
        0.3,
        "linear",
    )
    space = {s.name: (s.low, s.high, s.scale, s.init) for s in settings.hyperparameters}
    assert space == {
        "lr": (1e-5, 5e-3, "log", 4e-3),
        "dropout": (0.0, 0.6, "linear", None),
        "cd_rate": (0.01, 0.7, "linear", 0.5),
        "kl_co_scale": (1e-6, 1e-4, "log", None),
        "kl_ic_scale": (1e-6, 1e-3, "log", None),
        "l2_gen_scale": (1e-4, 1.0, "log", None),
        "l2_con_scale": (1e-4, 1.0, "log", None),
    }
    assert settings.worker_names[0] == "worker00" and settings.worker_names[-1] == "worker19"


def test_epochs_after_each_generation_and_last_generation():
    settings = PBTSettings()
    assert [settings.epochs_after(g) for g in (0, 1, 2, 35, 36, 40)] == [
        105,
        130,
        155,
        980,
        1000,
        1000,
    ]
    assert settings.last_generation == 36
    exact = PBTSettings(burn_in_epochs=100, generation_epochs=25, max_epochs=200)
    assert exact.last_generation == 4 and exact.epochs_after(4) == 200
    assert PBTSettings(burn_in_epochs=50, max_epochs=50).last_generation == 0


def test_given_hyperparameters_replace_the_default_set():
    settings = PBTSettings.from_config(
        {"population": 120, "hyperparameters": WIDE, "perturb_space": "log"}
    )
    assert [s.name for s in settings.hyperparameters] == ["dropout", "lr"]  # sorted by name
    assert settings.perturb_space == "log"
    assert settings.worker_names[:2] == ["worker000", "worker001"]
    assert settings.worker_names[-1] == "worker119"
    # The order of the configfile's mapping does not matter.
    reordered = PBTSettings.from_config(
        {"population": 120, "hyperparameters": dict(reversed(WIDE.items())), "perturb_space": "log"}
    )
    assert reordered == settings


def _with(name, **spec):
    return {"hyperparameters": {name: spec}}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"populaton": 20}, "search.pbt: unknown key(s) ['populaton']; did you mean 'population'?"),
        ({"population": 1}, "search.pbt.population: a tournament needs at least 2"),
        ({"population": 2.5}, "search.pbt.population: expected an integer"),
        ({"population": True}, "search.pbt.population: expected an integer"),
        ({"generation_epochs": 0}, "search.pbt.generation_epochs: must be at least 1"),
        ({"burn_in_epochs": 0}, "search.pbt.burn_in_epochs: must be at least 1"),
        ({"burn_in_epochs": 2000}, "search.pbt.burn_in_epochs: 2000 exceeds max_epochs 1000"),
        ({"patience_generations": 0}, "search.pbt.patience_generations: must be at least 1"),
        ({"seed": -1}, "search.pbt.seed: must be >= 0"),
        ({"min_improvement": math.nan}, "search.pbt.min_improvement: expected a finite"),
        ({"min_improvement": -1.0}, "search.pbt.min_improvement: must be >= 0"),
        ({"perturb_width": 1.5}, "search.pbt.perturb_width: must be in (0, 1)"),
        ({"perturb_width": "0.3"}, "search.pbt.perturb_width: expected a number, got the string"),
        ({"perturb_space": "cubic"}, "search.pbt.perturb_space: 'cubic' is not one of"),
        ({"hyperparameters": {}}, "search.pbt.hyperparameters: expected a non-empty mapping"),
        (
            _with("lr", range=[5.0e-3, 1.0e-5], scale="log"),
            "search.pbt.hyperparameters.lr.range: low must be below high",
        ),
        (
            _with("lr", range=[0.0, 1.0e-3], scale="log"),
            "search.pbt.hyperparameters.lr.range: a log scale needs low > 0",
        ),
        (
            _with("lr", range=["1e-5", 5.0e-3], scale="log"),
            "search.pbt.hyperparameters.lr.range: expected a number, got the string '1e-5'",
        ),
        (
            _with("lr", range=[1.0e-5, math.inf], scale="log"),
            "search.pbt.hyperparameters.lr.range: expected a finite number",
        ),
        (
            _with("lr", range=[1.0e-5], scale="log"),
            "search.pbt.hyperparameters.lr.range: expected [low, high]",
        ),
        (_with("lr", range=[1.0e-5, 5.0e-3]), "search.pbt.hyperparameters.lr: missing 'scale'"),
        (
            _with("lr", range=[1.0e-5, 5.0e-3], scale="exp"),
            "search.pbt.hyperparameters.lr.scale: 'exp' is not one of",
        ),
        (
            _with("lr", range=[1.0e-5, 5.0e-3], scale="log", step=2),
            "search.pbt.hyperparameters.lr: unknown key(s) ['step']",
        ),
        (
            _with("dropout", range=[0.0, 0.6], scale="linear", init=0.9),
            "search.pbt.hyperparameters.dropout.init: 0.9 lies outside the range [0.0, 0.6]",
        ),
        (
            _with("dropout", range=[0.0, 1.0], scale="linear"),
            "search.pbt.hyperparameters.dropout.range: 1.0 is not a valid dropout",
        ),
        (
            _with("batch_size", range=[16, 256], scale="log"),
            "search.pbt.hyperparameters.batch_size: 'batch_size' cannot be searched",
        ),
        (  # a float the members of one pack share: the population is one pack
            _with("cell_clip", range=[1.0, 10.0], scale="log"),
            "search.pbt.hyperparameters.cell_clip: 'cell_clip' cannot be searched: the "
            "population trains as one pack, whose members may differ only in",
        ),
    ],
)
def test_settings_errors_name_the_key(config, message):
    with pytest.raises(ValueError) as caught:
        PBTSettings.from_config(config)
    assert message in str(caught.value)


# -- initial population --------------------------------------------------------------------


def test_initial_population_uses_init_and_draws_inside_ranges():
    settings = PBTSettings()
    population = initial_population(settings)
    assert len(population) == 20
    assert population == initial_population(PBTSettings())
    assert population != initial_population(PBTSettings(seed=1))
    for values in population:
        assert values["lr"] == 4e-3 and values["cd_rate"] == 0.5
        for searched in settings.hyperparameters:
            assert searched.low <= values[searched.name] <= searched.high
    assert len({values["dropout"] for values in population}) == 20
    # The plan of generation 0 carries exactly these values, each worker its own fresh start.
    plan = initial_plan(settings)
    assert [worker.hyperparameters for worker in plan.workers] == population
    assert all(worker.parent == worker.name and not worker.exploited for worker in plan.workers)
    assert (plan.start_epoch, plan.end_epoch, plan.best_losses) == (0, 105, ())


def test_initial_draws_are_log_uniform_or_uniform():
    population = initial_population(PBTSettings(population=3000))
    # kl_ic_scale in [1e-6, 1e-3], log: a third of the workers in each decade.
    decades = np.log10([values["kl_ic_scale"] for values in population])
    counts, _ = np.histogram(decades, bins=[-6, -5, -4, -3])
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04), counts
    # dropout in [0, 0.6], linear: a quarter in each quarter of the range.
    counts, _ = np.histogram([values["dropout"] for values in population], bins=4, range=(0, 0.6))
    assert np.all(np.abs(counts / 3000 - 1 / 4) < 0.04), counts


def test_an_init_leaves_the_other_draws_unchanged():
    free = PBTSettings.from_config({"hyperparameters": WIDE})
    pinned = PBTSettings.from_config(
        {"hyperparameters": {**WIDE, "lr": {**WIDE["lr"], "init": 1.0e-3}}}
    )
    free_values, pinned_values = initial_population(free), initial_population(pinned)
    assert [v["dropout"] for v in free_values] == [v["dropout"] for v in pinned_values]
    assert {v["lr"] for v in pinned_values} == {1.0e-3}


# -- exploit and explore -------------------------------------------------------------------


def test_same_inputs_replay_the_same_plan_and_other_seeds_or_generations_differ():
    settings = PBTSettings()
    results = results_for(settings, initial_population(settings), np.linspace(1.0, 2.0, 20))
    plan = plan_next_generation(settings, 0, results, ())
    assert plan == plan_next_generation(settings, 0, results, ())
    other_seed = plan_next_generation(dataclasses.replace(settings, seed=1), 0, results, ())
    assert other_seed.workers != plan.workers
    later = plan_next_generation(settings, 1, results, (2.0,))
    assert later.generation == 2 and later.workers != plan.workers


@pytest.mark.parametrize(
    "space, low_band, high_band",
    [
        ("linear", (1 - 0.3, 1 - 0.002 * 0.3), (1 + 0.002 * 0.3, 1 + 0.3)),
        ("log", (1 / (1 + 0.3), 1 / (1 + 0.002 * 0.3)), (1 + 0.002 * 0.3, 1 + 0.3)),
    ],
)
def test_explore_factors_lie_in_their_bands(space, low_band, high_band):
    settings = PBTSettings.from_config(
        {"population": 400, "hyperparameters": WIDE, "perturb_space": space}
    )
    losses = np.arange(400.0)  # every worker but worker000 can lose
    factors = []
    for generation in range(3):
        plan = plan_next_generation(
            settings, generation, results_for(settings, START, losses), [0.0] * generation
        )
        for worker in plan.workers:
            if worker.exploited:
                factors += [worker.hyperparameters[name] / START[name] for name in START]
    factors = np.array(factors)
    assert len(factors) > 600
    in_low = (factors >= low_band[0] * (1 - 1e-12)) & (factors <= low_band[1] * (1 + 1e-12))
    in_high = (factors >= high_band[0] * (1 - 1e-12)) & (factors <= high_band[1] * (1 + 1e-12))
    assert np.all(in_low | in_high)
    # Both signs occur about equally, and the magnitudes fill their bands.
    assert 0.4 < in_low.mean() < 0.6
    assert factors.min() < low_band[0] * 1.02 and factors.max() > high_band[1] * 0.98
    assert np.any(np.abs(factors - 1) < 0.02)


def test_explored_values_are_clipped_to_their_ranges():
    settings = PBTSettings.from_config({"population": 200, "hyperparameters": WIDE})
    at_bounds = [
        {"dropout": 0.0 if index % 2 else 0.9, "lr": 1.0e-6 if index % 2 else 1.0}
        for index in range(200)
    ]
    plan = plan_next_generation(settings, 0, results_for(settings, at_bounds, np.arange(200.0)), ())
    lrs = [worker.hyperparameters["lr"] for worker in plan.workers if worker.exploited]
    dropouts = [worker.hyperparameters["dropout"] for worker in plan.workers]
    assert len(lrs) > 50
    assert min(lrs) >= 1.0e-6 and max(lrs) <= 1.0
    assert min(dropouts) >= 0.0 and max(dropouts) <= 0.9
    assert lrs.count(1.0) > 10 and lrs.count(1.0e-6) > 10  # pushed outward, held at the bound
    assert any(1.0e-6 < lr < 1.0 for lr in lrs)  # pushed inward: moved off the bound


def test_winners_and_ties_keep_their_state_and_values():
    settings = PBTSettings()
    values = initial_population(settings)
    losses = np.linspace(1.0, 2.0, 20)[::-1]  # worker19 is the best
    results = results_for(settings, values, losses)
    for generation in range(5):
        plan = plan_next_generation(settings, generation, results, [9.0] * generation)
        by_name = {result.name: result for result in results}
        exploited = [worker for worker in plan.workers if worker.exploited]
        assert 0 < len(exploited) < 20
        assert not plan.worker("worker19").exploited
        for worker in plan.workers:
            if worker.exploited:
                assert worker.parent != worker.name
                assert by_name[worker.parent].loss < by_name[worker.name].loss
                assert worker.hyperparameters != by_name[worker.parent].hyperparameters
            else:
                assert worker.parent == worker.name
                assert worker.hyperparameters == by_name[worker.name].hyperparameters
    tied = plan_next_generation(settings, 0, results_for(settings, values, [1.5] * 20), ())
    assert not any(worker.exploited for worker in tied.workers)


def test_a_diverged_worker_is_always_replaced():
    for seed in range(20):
        settings = PBTSettings(seed=seed)
        losses = np.linspace(1.0, 2.0, 20)
        losses[3], losses[7] = math.nan, math.inf
        losses[10:] = math.nan  # more than half diverged: they never copy each other
        results = results_for(settings, initial_population(settings), losses)
        plan = plan_next_generation(settings, 0, results, ())
        diverged = {result.name for result in results if result.diverged}
        for worker in plan.workers:
            if worker.name in diverged:
                assert worker.exploited and worker.parent not in diverged
    with pytest.raises(ValueError, match="every worker diverged"):
        all_diverged = results_for(settings, initial_population(settings), [math.nan] * 20)
        plan_next_generation(settings, 0, all_diverged, ())


def test_results_must_cover_the_population_with_its_hyperparameters():
    settings = PBTSettings()
    results = results_for(settings, initial_population(settings), np.ones(20))
    with pytest.raises(ValueError, match=r"missing \['worker05'\]"):
        plan_next_generation(settings, 0, results[:5] + results[6:], ())
    with pytest.raises(ValueError, match="worker02: trained with hyperparameters"):
        wrong = dataclasses.replace(results[2], hyperparameters={"lr": 1e-3})
        plan_next_generation(settings, 0, [*results[:2], wrong, *results[3:]], ())
    with pytest.raises(ValueError, match="earlier_best_losses needs"):
        plan_next_generation(settings, 2, results, (1.0,))


def simulate(settings, plan, generations):
    """Toy training: a worker's progress grows by 1 per generation when lr >= 1e-5, else 0.

    A worker resumes its parent's progress; its loss is 1 / (1 + progress). Returns the plans,
    the results of each generation and each final worker's lineage root in generation 0.
    """
    plans, all_results = [plan], []
    progress = {}  # (generation, worker) -> progress at the end of that generation
    root = {worker.name: worker.name for worker in plan.workers}
    for generation in range(generations):
        results = []
        for worker in plan.workers:
            start = 0.0 if generation == 0 else progress[generation - 1, worker.parent]
            learns = worker.hyperparameters["lr"] >= 1.0e-5
            progress[generation, worker.name] = start + (1.0 if learns else 0.0)
            results.append(
                WorkerResult(
                    worker.name,
                    worker.hyperparameters,
                    1.0 / (1.0 + progress[generation, worker.name]),
                )
            )
        all_results.append(results)
        plan = plan_next_generation(settings, generation, results, plan.best_losses)
        plans.append(plan)
        root = {worker.name: root[worker.parent] for worker in plan.workers}
    return plans, all_results, root


def test_bad_lineages_die_out_in_a_simulated_search():
    settings = PBTSettings.from_config(
        {
            "burn_in_epochs": 100,
            "max_epochs": 400,
            "hyperparameters": {
                "lr": {"range": [1.0e-7, 1.0e-2], "scale": "log"},
                "dropout": {"range": [0.0, 0.6], "scale": "linear"},
            },
        }
    )
    start = initial_plan(settings)
    bad = set(settings.worker_names[:10])
    start = dataclasses.replace(
        start,
        workers=tuple(
            dataclasses.replace(
                worker,
                hyperparameters={
                    **worker.hyperparameters,
                    "lr": 1.0e-6 if worker.name in bad else 1.0e-3,
                },
            )
            for worker in start.workers
        ),
    )
    plans, results, root = simulate(settings, start, generations=10)
    assert [result.valid_recon_smoothed for result in results[0]] == [1.0] * 10 + [0.5] * 10
    assert not set(root.values()) & bad  # no lineage of a bad start survives
    assert all(worker.hyperparameters["lr"] >= 1.0e-5 for worker in plans[-1].workers)
    # Every worker learned in the last generation, as fast as the good half alone would.
    assert [result.valid_recon_smoothed for result in results[-1]] == [1.0 / 11] * 20
    assert plans[-1].best_losses == tuple(1.0 / (2 + g) for g in range(10))
    assert not plans[-1].stop


# -- stop rule -----------------------------------------------------------------------------


def test_stop_rule_plateau_max_epochs_and_patience():
    settings = PBTSettings(patience_generations=3, min_improvement=0.01)
    flat = [1.0] * 10
    assert [stop_reason(settings, g, flat[: g + 1]) for g in range(3)] == ["", "", ""]
    assert stop_reason(settings, 3, flat[:4]).startswith("plateau")
    # Improving by 0.011 per 3 generations goes on; by 0.009 (or getting worse) stops.
    assert stop_reason(settings, 3, [1.0, 0.5, 0.5, 0.989]) == ""
    assert stop_reason(settings, 3, [1.0, 0.5, 0.5, 0.991]).startswith("plateau")
    assert stop_reason(settings, 3, [1.0, 0.5, 0.5, 1.2]).startswith("plateau")
    improving = [1.0 - 0.1 * g for g in range(40)]
    assert stop_reason(settings, 35, improving[:36]) == ""
    assert stop_reason(settings, 36, improving[:37]).startswith("reached max_epochs")


def test_a_stopped_plan_has_no_workers():
    settings = PBTSettings(burn_in_epochs=100, generation_epochs=50, max_epochs=200)
    results = results_for(settings, initial_population(settings), np.linspace(1.0, 2.0, 20))
    going_on = plan_next_generation(settings, 1, results, (3.0,))
    assert not going_on.stop and (going_on.start_epoch, going_on.end_epoch) == (150, 200)
    stopped = plan_next_generation(settings, 2, results, (3.0, 2.0))
    assert stopped.stop and stopped.workers == ()
    assert stopped.stop_reason == "reached max_epochs: 200 epochs after generation 2"
    assert stopped.best_worker == "worker00" and stopped.best_losses == (3.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="outside 0 .. 2"):
        plan_next_generation(settings, 3, results, (3.0, 2.0, 1.0))


# -- files ---------------------------------------------------------------------------------


def test_plan_and_result_files_round_trip(tmp_path):
    settings = PBTSettings()
    results = results_for(settings, initial_population(settings), np.linspace(1.0, 2.0, 20))
    results[4] = dataclasses.replace(results[4], valid_recon_smoothed=math.inf)
    for plan in (initial_plan(settings), plan_next_generation(settings, 0, results, ())):
        write_plan(tmp_path / "plan.json", plan)
        assert read_plan(tmp_path / "plan.json") == plan
    results[0] = dataclasses.replace(results[0], curve=((1, 2.5), (2, math.nan)))
    write_results(tmp_path / "results.json", 0, results)
    read = read_results(tmp_path / "results.json")
    assert read[1:4] + read[5:] == results[1:4] + results[5:]
    assert '"valid_recon_smoothed": null' in (tmp_path / "results.json").read_text()
    assert read[4].diverged and math.isnan(read[4].valid_recon_smoothed)  # inf reads back as NaN
    assert read[0].curve[0] == (1, 2.5) and math.isnan(read[0].curve[1][1])


def test_a_plan_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    write_plan(path, initial_plan(PBTSettings()))
    path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 0'))
    with pytest.raises(ValueError, match=r"plan.json: plan format_version 0, but this lfads"):
        read_plan(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="plan.json: not valid JSON"):
        read_plan(path)


def test_history_table_round_trips(tmp_path):
    settings = PBTSettings.from_config({"population": 4, "hyperparameters": WIDE})
    plans, results, _ = simulate(settings, initial_plan(settings), generations=3)
    results[2][1] = dataclasses.replace(results[2][1], valid_recon_smoothed=math.nan)
    rows = history_rows(plans, results)
    assert len(rows) == 12
    assert list(rows[0]) == [
        "generation",
        "worker",
        "parent",
        "exploited",
        "epochs",
        "valid_recon_smoothed",
        "dropout",
        "lr",
    ]
    assert [row["epochs"] for row in rows[::4]] == [105, 130, 155]
    assert rows[5]["parent"] == plans[1].workers[1].parent
    write_history(tmp_path / "pbt_history.tsv", rows)
    header = (tmp_path / "pbt_history.tsv").read_text().splitlines()[0]
    assert (
        header == "generation\tworker\tparent\texploited\tepochs\tvalid_recon_smoothed\tdropout\tlr"
    )
    # repr compares the NaN of the diverged worker too (NaN != NaN).
    assert repr(read_history(tmp_path / "pbt_history.tsv")) == repr(rows)
    mismatched = [list(generation_results) for generation_results in results]
    mismatched[1][0] = dataclasses.replace(mismatched[1][0], hyperparameters=START)
    with pytest.raises(ValueError, match="generation 1, worker00: trained with"):
        history_rows(plans, mismatched)


def test_curves_table_round_trips(tmp_path):
    settings = PBTSettings.from_config({"population": 2, "hyperparameters": WIDE})
    results = [
        [
            WorkerResult("worker00", START, 1.0, ((1, 1.5), (2, 1.0))),
            WorkerResult("worker01", START, math.nan, ((1, 2.0),)),
        ],
        [WorkerResult(name, START, 0.9, ((3, 0.95),)) for name in settings.worker_names],
    ]
    write_curves(tmp_path / "curves.tsv", results)
    curves = read_curves(tmp_path / "curves.tsv")
    assert curves[0, "worker00"] == ([1, 2], [1.5, 1.0]) and curves[1, "worker01"] == ([3], [0.95])
    assert sorted(curves) == [(0, "worker00"), (0, "worker01"), (1, "worker00"), (1, "worker01")]


def test_plan_lookup_names_the_missing_worker():
    plan = initial_plan(PBTSettings(population=3))
    assert plan.worker("worker01").name == "worker01"
    with pytest.raises(KeyError, match="no worker 'worker07'"):
        plan.worker("worker07")
