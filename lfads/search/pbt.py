"""Population-based training (AutoLFADS) without Ray: the decisions between generations.

A PBT search trains a population of workers in generations. Generation 0
trains every worker from scratch for `burn_in_epochs` (the KL and L2 ramps
plus one generation); every later generation resumes each worker from a full
training state saved at the end of the previous generation and trains
`generation_epochs` more. Between two generations a small rule reads every
worker's smoothed validation reconstruction loss and calls
`plan_next_generation`, which writes the next generation's plan: who copies
whom (exploit, a binary tournament) and the new hyperparameters (explore, a
random perturbation of the copied values). The plan is a plain JSON file.

The plan of generation n draws its random numbers from
`np.random.default_rng([seed, n])` only, so rerunning the workflow replays
the same decisions. This module decides; it never touches a model or a
checkpoint (no torch, no Lightning, no Snakemake).

Reading order: settings, initial population, exploit and explore, stop rule,
files (plans, worker results, the history table).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lfads.infra.io import write_json, write_text
from lfads.infra.settings import did_you_mean
from lfads.model.hparams import MEMBER_KEYS, HParams

FORMAT_VERSION = 1  # of plan and worker-result files; bump when their keys change
SCALES = ("linear", "log")  # how a hyperparameter's initial values are drawn from its range
PERTURB_SPACES = ("linear", "log")  # how an explore factor is built (see `perturbation_factor`)
MIN_PERTURB_FRACTION = 0.002  # smallest perturbation, as a fraction of perturb_width (lfads-torch)
WHERE = "search.pbt"  # the configfile key, named in every settings error


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchedHyperparameter:
    """One searched field of `HParams`: its allowed range, its start value, how it is drawn."""

    name: str  # an HParams float field, e.g. "lr"
    low: float  # smallest allowed value; explored values are clipped to [low, high]
    high: float  # largest allowed value
    scale: str  # "log": initial values drawn log-uniformly; "linear": uniformly
    init: float | None = None  # every worker of generation 0 starts here; None: drawn

    def __post_init__(self) -> None:
        where = f"{WHERE}.hyperparameters.{self.name}"
        searchable = searchable_hyperparameters()
        if self.name not in searchable:
            raise ValueError(
                f"{where}: {self.name!r} cannot be searched: the population trains as one pack, "
                f"whose members may differ only in {list(searchable)}"
            )
        if self.scale not in SCALES:
            raise ValueError(f"{where}.scale: {self.scale!r} is not one of {list(SCALES)}")
        for value in (self.low, self.high):
            _check_finite(value, f"{where}.range")
        if not self.low < self.high:
            raise ValueError(
                f"{where}.range: low must be below high, got [{self.low}, {self.high}]"
            )
        if self.scale == "log" and self.low <= 0:
            raise ValueError(
                f"{where}.range: a log scale needs low > 0, got [{self.low}, {self.high}]; "
                "raise low or use scale: linear"
            )
        for value in (self.low, self.high):
            try:
                HParams.from_dict({self.name: value})
            except ValueError as error:
                raise ValueError(
                    f"{where}.range: {value} is not a valid {self.name} ({error}); narrow the range"
                ) from None
        if self.init is not None:
            _check_finite(self.init, f"{where}.init")
            if not self.low <= self.init <= self.high:
                raise ValueError(
                    f"{where}.init: {self.init} lies outside the range "
                    f"[{self.low}, {self.high}]; move it inside or widen the range"
                )

    def draw(self, uniform: float) -> float:
        """The value at quantile `uniform` in [0, 1) of the range (log-uniform for scale log)."""
        if self.scale == "log":
            log_low, log_high = math.log(self.low), math.log(self.high)
            return self.clip(math.exp(log_low + uniform * (log_high - log_low)))
        return self.clip(self.low + uniform * (self.high - self.low))

    def clip(self, value: float) -> float:
        """`value` moved into [low, high]."""
        return min(max(float(value), self.low), self.high)


@functools.cache
def searchable_hyperparameters() -> tuple[str, ...]:
    """Names of the HParams fields PBT can search: the float fields that the members of one pack
    may hold apart (MEMBER_KEYS), sorted."""
    hints = typing.get_type_hints(HParams)
    return tuple(sorted(key for key in MEMBER_KEYS if hints[key] is float))


@functools.cache  # built and checked once: the tuple and its items are immutable
def _default_hyperparameters() -> tuple[SearchedHyperparameter, ...]:
    """lfads-torch's run_pbt.py search space (its KL and L2 scales draw log-uniformly)."""
    return (
        SearchedHyperparameter("cd_rate", 0.01, 0.7, "linear", init=0.5),
        SearchedHyperparameter("dropout", 0.0, 0.6, "linear"),
        SearchedHyperparameter("kl_co_scale", 1e-6, 1e-4, "log"),
        SearchedHyperparameter("kl_ic_scale", 1e-6, 1e-3, "log"),
        SearchedHyperparameter("l2_con_scale", 1e-4, 1.0, "log"),
        SearchedHyperparameter("l2_gen_scale", 1e-4, 1.0, "log"),
        SearchedHyperparameter("lr", 1e-5, 5e-3, "log", init=4e-3),
    )


@dataclass(frozen=True)
class PBTSettings:
    """The configfile's `search.pbt`: population, generation lengths (epochs), stop rule, space.

    Defaults follow lfads-torch's run_pbt.py. `min_improvement` is an absolute
    difference of the smoothed validation reconstruction loss (the model's
    units: nats per element with recon_reduce_mean).
    """

    population: int = 20  # workers per generation
    generation_epochs: int = 25  # epochs each worker trains per generation after the first
    burn_in_epochs: int = 105  # epochs of generation 0: the 80-epoch KL/L2 ramps + a generation
    max_epochs: int = 1000  # total epochs of a worker's lineage; the search stops there
    patience_generations: int = 4  # stop when the best loss of this many generations ago ...
    min_improvement: float = 5e-4  # ... is not beaten by at least this much (absolute loss)
    seed: int = 0  # seeds every draw: the initial population and each generation's plan
    perturb_width: float = 0.3  # explore multiplies values by about 1 +- up to this
    perturb_space: str = "linear"  # "linear" (lfads-torch) or "log" (see perturbation_factor)
    hyperparameters: tuple[SearchedHyperparameter, ...] = field(
        default_factory=_default_hyperparameters
    )

    def __post_init__(self) -> None:
        epoch_keys = ("generation_epochs", "burn_in_epochs", "max_epochs", "patience_generations")
        for key in ("population", "seed", *epoch_keys):
            _integer(getattr(self, key), f"{WHERE}.{key}")
        if self.population < 2:
            raise ValueError(
                f"{WHERE}.population: a tournament needs at least 2 workers, got {self.population}"
            )
        for key in epoch_keys:
            if getattr(self, key) < 1:
                raise ValueError(f"{WHERE}.{key}: must be at least 1, got {getattr(self, key)}")
        if self.burn_in_epochs > self.max_epochs:
            raise ValueError(
                f"{WHERE}.burn_in_epochs: {self.burn_in_epochs} exceeds max_epochs "
                f"{self.max_epochs}; lower burn_in_epochs or raise max_epochs"
            )
        if self.seed < 0:
            raise ValueError(f"{WHERE}.seed: must be >= 0, got {self.seed}")
        _check_finite(self.min_improvement, f"{WHERE}.min_improvement")
        if self.min_improvement < 0:
            raise ValueError(f"{WHERE}.min_improvement: must be >= 0, got {self.min_improvement}")
        _check_finite(self.perturb_width, f"{WHERE}.perturb_width")
        if not 0 < self.perturb_width < 1:
            raise ValueError(f"{WHERE}.perturb_width: must be in (0, 1), got {self.perturb_width}")
        if self.perturb_space not in PERTURB_SPACES:
            raise ValueError(
                f"{WHERE}.perturb_space: {self.perturb_space!r} is not one of "
                f"{list(PERTURB_SPACES)}"
            )
        if not self.hyperparameters:
            raise ValueError(f"{WHERE}.hyperparameters: give at least one hyperparameter")
        names = [searched.name for searched in self.hyperparameters]
        if len(set(names)) < len(names):
            raise ValueError(f"{WHERE}.hyperparameters: names repeat in {names}")
        # Sorted by name, so the order of the configfile's mapping never changes a draw.
        object.__setattr__(
            self, "hyperparameters", tuple(sorted(self.hyperparameters, key=lambda s: s.name))
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> PBTSettings:
        """From the configfile's `search.pbt` mapping (as parsed from YAML); omitted keys default.

        A mapping that gives `hyperparameters` replaces the default set entirely.
        Raises ValueError naming the key (`search.pbt.hyperparameters.lr.range: ...`).
        """
        config = {} if config is None else config
        if not isinstance(config, Mapping):
            raise ValueError(f"{WHERE}: expected a mapping, got {config!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(known))
        if unknown:
            hint = did_you_mean(unknown, known) or f"known: {sorted(known)}"
            raise ValueError(f"{WHERE}: unknown key(s) {unknown}; {hint} (config/README.md)")
        values: dict[str, Any] = {}
        for key, value in config.items():
            where = f"{WHERE}.{key}"
            if key == "hyperparameters":
                values[key] = _parse_hyperparameters(value)
            elif key in ("min_improvement", "perturb_width"):
                values[key] = _number(value, where)
            elif key == "perturb_space":
                values[key] = value
            else:
                values[key] = _integer(value, where)
        return cls(**values)

    def epochs_after(self, generation: int) -> int:
        """Total epochs a worker has trained at the end of `generation` (0, 1, ...)."""
        if generation < 0:
            raise ValueError(f"generation must be >= 0, got {generation}")
        return min(self.burn_in_epochs + generation * self.generation_epochs, self.max_epochs)

    @property
    def last_generation(self) -> int:
        """The first generation whose end reaches max_epochs: the search stops after it."""
        remaining_epochs = self.max_epochs - self.burn_in_epochs
        return math.ceil(remaining_epochs / self.generation_epochs)

    @property
    def worker_names(self) -> list[str]:
        """Stable worker names usable as Snakemake wildcards: worker00, worker01, ..."""
        width = max(2, len(str(self.population - 1)))
        return [f"worker{index:0{width}d}" for index in range(self.population)]


def _parse_hyperparameters(value: Any) -> tuple[SearchedHyperparameter, ...]:
    where = f"{WHERE}.hyperparameters"
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"{where}: expected a non-empty mapping name -> {{range, scale, init}}, got {value!r}"
        )
    searched = []
    for name, spec in value.items():
        key = f"{where}.{name}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{key}: expected a mapping with range and scale, got {spec!r}")
        unknown = sorted(set(spec) - {"range", "scale", "init"})
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {unknown}; known: ['init', 'range', 'scale']")
        for required in ("range", "scale"):
            if required not in spec:
                raise ValueError(
                    f"{key}: missing {required!r}; give range: [low, high] and scale: linear or log"
                )
        bounds = spec["range"]
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise ValueError(f"{key}.range: expected [low, high], got {bounds!r}")
        low, high = (_number(bound, f"{key}.range") for bound in bounds)
        init = spec.get("init")
        searched.append(
            SearchedHyperparameter(
                name=str(name),
                low=low,
                high=high,
                scale=spec["scale"],
                init=None if init is None else _number(init, f"{key}.init"),
            )
        )
    return tuple(searched)


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        raise ValueError(
            f"{where}: expected a number, got the string {value!r}; "
            "write 1.0e-5, not 1e-5 (YAML reads 1e-5 without a dot as a string)"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    _check_finite(value, where)
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")


# -- initial population --------------------------------------------------------------------


def initial_population(settings: PBTSettings) -> list[dict[str, float]]:
    """Searched values of each worker of generation 0, in worker order: name -> value.

    A hyperparameter's `init` is used where given; otherwise each worker draws
    from its range (log-uniform for scale log), with
    `np.random.default_rng([seed, 0])`. Every hyperparameter has its column
    of draws even when `init` is given, so adding an `init` to one leaves the
    others' values unchanged.
    """
    rng = np.random.default_rng([settings.seed, 0])
    quantiles = rng.random((settings.population, len(settings.hyperparameters)))
    return [
        {
            searched.name: searched.init if searched.init is not None else searched.draw(u)
            for searched, u in zip(settings.hyperparameters, worker_quantiles)
        }
        for worker_quantiles in quantiles
    ]


# -- exploit and explore -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerResult:
    """One worker at the end of a generation: what it trained with and how well it did."""

    name: str  # e.g. "worker03"
    hyperparameters: Mapping[str, float]  # the searched values it trained this generation with
    # Smoothed validation reconstruction loss at the generation's last epoch, in the model's
    # units (nats per element with recon_reduce_mean); NaN or inf: the worker diverged.
    valid_recon_smoothed: float
    # (epoch from 1, smoothed valid recon) of each epoch it trained in the generation
    curve: tuple[tuple[int, float], ...] = ()

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.valid_recon_smoothed)

    @property
    def loss(self) -> float:
        """The loss the tournament compares: a diverged worker counts as +inf, so it loses."""
        return math.inf if self.diverged else self.valid_recon_smoothed


@dataclass(frozen=True)
class PlannedWorker:
    """One worker of the planned generation."""

    name: str
    # Worker of the previous generation whose end-of-generation training state this worker
    # resumes: itself when it keeps its own state (and, in generation 0, its fresh start).
    parent: str
    exploited: bool  # True: it lost its tournament, copied parent's state and perturbed values
    hyperparameters: Mapping[str, float]  # the searched values it trains this generation with


@dataclass(frozen=True)
class Plan:
    """The decisions for one generation: every worker's starting state and hyperparameters."""

    generation: int  # the generation these workers train (0, 1, ...)
    start_epoch: int  # epochs trained by the states the workers resume (0 for generation 0)
    end_epoch: int  # epochs trained at the end of this generation; train end - start epochs
    workers: tuple[PlannedWorker, ...]  # in worker order; empty when the search stops
    best_losses: tuple[float, ...]  # lowest loss of each earlier generation, 0 .. generation - 1
    best_worker: str | None  # worker of generation - 1 with the lowest loss; None in generation 0
    stop: bool = False  # True: the search ends after generation - 1; nothing is trained
    stop_reason: str = ""  # why it stops, in words

    def worker(self, name: str) -> PlannedWorker:
        """The planned worker called `name`."""
        for planned in self.workers:
            if planned.name == name:
                return planned
        raise KeyError(
            f"generation {self.generation} plans no worker {name!r}; "
            f"planned: {[planned.name for planned in self.workers]}"
        )


def initial_plan(settings: PBTSettings) -> Plan:
    """The plan of generation 0: every worker starts fresh with `initial_population`'s values."""
    return Plan(
        generation=0,
        start_epoch=0,
        end_epoch=settings.epochs_after(0),
        workers=tuple(
            PlannedWorker(name, parent=name, exploited=False, hyperparameters=values)
            for name, values in zip(settings.worker_names, initial_population(settings))
        ),
        best_losses=(),
        best_worker=None,
    )


def perturbation_factor(settings: PBTSettings, magnitude: float, sign: float) -> float:
    """The factor explore multiplies a value by, for a magnitude u in [0.002 w, w) and sign +-1.

    perturb_space "linear" (lfads-torch): 1 + sign * u, in [1 - w, 1 - 0.002 w]
    or [1 + 0.002 w, 1 + w]. "log": (1 + u) ** sign, so a step up and a step
    down by the same u cancel (log(value) moves by +-log(1 + u)); in
    [1 / (1 + w), 1 / (1 + 0.002 w)] or [1 + 0.002 w, 1 + w].
    """
    if settings.perturb_space == "log":
        return 1 + magnitude if sign > 0 else 1 / (1 + magnitude)
    return 1 + sign * magnitude


def plan_next_generation(
    settings: PBTSettings,
    generation: int,
    results: Sequence[WorkerResult],
    earlier_best_losses: Sequence[float],
) -> Plan:
    """The plan of generation + 1, from every worker's result at the end of `generation`.

    earlier_best_losses: the lowest loss of generations 0 .. generation - 1, as
    the plan of `generation` lists them (`read_plan(...).best_losses`); the stop
    rule needs them. Returns a Plan whose `best_losses` adds this generation's.

    Exploit, a binary tournament: every worker is paired with another drawn
    uniformly (a diverged worker draws among the workers that did not
    diverge, so it is always replaced). If the other has a strictly lower
    loss, the worker copies the other's training state as it was at the end
    of `generation` (so copies never chain within a generation) and its
    values; explore then multiplies each value by `perturbation_factor` with
    a fresh magnitude and sign, and clips it to its range. A worker that wins
    or ties keeps its state and values unchanged. Every draw comes from
    `np.random.default_rng([seed, generation + 1])`, drawn in fixed shapes
    (one opponent per worker, one magnitude and sign per worker and
    hyperparameter), so a worker's draws never depend on other outcomes.
    """
    if not 0 <= generation <= settings.last_generation:
        raise ValueError(
            f"generation {generation} is outside 0 .. {settings.last_generation}, the last "
            f"generation that {WHERE}.max_epochs ({settings.max_epochs}) allows"
        )
    if len(earlier_best_losses) != generation:
        raise ValueError(
            f"generation {generation}: earlier_best_losses needs the best loss of generations "
            f"0 .. {generation - 1} ({generation} values, from the plan of generation "
            f"{generation}), got {len(earlier_best_losses)}"
        )
    results = _check_results(settings, generation, results)
    if all(result.diverged for result in results):
        raise ValueError(
            f"generation {generation}: every worker diverged (valid loss NaN or inf), so no "
            f"state is left to copy; narrow {WHERE}.hyperparameters (lower lr) and rerun"
        )
    best = best_result(results)
    best_losses = (*map(float, earlier_best_losses), best.loss)
    reason = stop_reason(settings, generation, best_losses)
    common = {
        "generation": generation + 1,
        "best_losses": best_losses,
        "best_worker": best.name,
    }
    if reason:
        epochs = settings.epochs_after(generation)
        return Plan(
            start_epoch=epochs,
            end_epoch=epochs,
            workers=(),
            stop=True,
            stop_reason=reason,
            **common,
        )
    return Plan(
        start_epoch=settings.epochs_after(generation),
        end_epoch=settings.epochs_after(generation + 1),
        workers=_exploit_and_explore(settings, generation, results),
        **common,
    )


def _exploit_and_explore(
    settings: PBTSettings, generation: int, results: list[WorkerResult]
) -> tuple[PlannedWorker, ...]:
    """The tournament of `plan_next_generation`: results in worker order -> planned workers."""
    rng = np.random.default_rng([settings.seed, generation + 1])
    n_workers, n_searched = len(results), len(settings.hyperparameters)
    opponent_quantiles = rng.random(n_workers)
    width = settings.perturb_width
    magnitudes = rng.uniform(MIN_PERTURB_FRACTION * width, width, size=(n_workers, n_searched))
    signs = np.where(rng.random((n_workers, n_searched)) < 0.5, -1.0, 1.0)

    workers = []
    for index, result in enumerate(results):
        candidates = [
            other
            for other in results
            if other.name != result.name and not (result.diverged and other.diverged)
        ]
        # int(u * n) < n for u in [0, 1); min() guards against a product rounded up to n.
        pick = min(int(opponent_quantiles[index] * len(candidates)), len(candidates) - 1)
        opponent = candidates[pick]
        if not opponent.loss < result.loss:
            workers.append(
                PlannedWorker(result.name, result.name, False, dict(result.hyperparameters))
            )
            continue
        values = {
            searched.name: searched.clip(
                opponent.hyperparameters[searched.name]
                * perturbation_factor(settings, float(magnitude), float(sign))
            )
            for searched, magnitude, sign in zip(
                settings.hyperparameters, magnitudes[index], signs[index]
            )
        }
        workers.append(PlannedWorker(result.name, opponent.name, True, values))
    return tuple(workers)


def _check_results(
    settings: PBTSettings, generation: int, results: Sequence[WorkerResult]
) -> list[WorkerResult]:
    """`results` in worker order, after checking that they are the whole population's."""
    by_name = {result.name: result for result in results}
    expected = settings.worker_names
    if len(by_name) != len(results) or sorted(by_name) != expected:
        raise ValueError(
            f"generation {generation}: expected one result per worker {expected[0]} .. "
            f"{expected[-1]}; missing {sorted(set(expected) - set(by_name))}, unexpected "
            f"{sorted(set(by_name) - set(expected))}, {len(results)} results for "
            f"{len(by_name)} names"
        )
    searched = {searched.name: searched for searched in settings.hyperparameters}
    for result in results:
        if set(result.hyperparameters) != set(searched):
            raise ValueError(
                f"generation {generation}, {result.name}: trained with hyperparameters "
                f"{sorted(result.hyperparameters)}, but {WHERE}.hyperparameters searches "
                f"{sorted(searched)}; the configfile changed during the search: restore it "
                "or start a new search"
            )
        for name, value in result.hyperparameters.items():
            if not searched[name].low <= value <= searched[name].high:
                raise ValueError(
                    f"generation {generation}, {result.name}: {name} = {value} lies outside "
                    f"{WHERE}.hyperparameters.{name}.range [{searched[name].low}, "
                    f"{searched[name].high}]; the configfile changed during the search"
                )
    return [by_name[name] for name in expected]


def best_result(results: Sequence[WorkerResult]) -> WorkerResult:
    """The worker with the lowest loss (the first in worker order on a tie)."""
    return min(sorted(results, key=lambda result: result.name), key=lambda result: result.loss)


# -- stop rule -----------------------------------------------------------------------------


def stop_reason(settings: PBTSettings, generation: int, best_losses: Sequence[float]) -> str:
    """Why the search stops after `generation`, or "" when it goes on.

    best_losses: the lowest loss of generations 0 .. generation. The search
    stops when epochs_after(generation) reaches max_epochs, or when generation
    >= patience_generations and the best loss improved by less than
    min_improvement (an absolute difference of losses) on the best loss of
    `patience_generations` generations earlier.
    """
    if len(best_losses) != generation + 1:
        raise ValueError(
            f"generation {generation}: best_losses needs {generation + 1} values "
            f"(generations 0 .. {generation}), got {len(best_losses)}"
        )
    if settings.epochs_after(generation) >= settings.max_epochs:
        return f"reached max_epochs: {settings.max_epochs} epochs after generation {generation}"
    if generation < settings.patience_generations:
        return ""
    earlier = generation - settings.patience_generations
    improvement = best_losses[earlier] - best_losses[generation]
    if improvement < settings.min_improvement:
        return (
            f"plateau: best loss {best_losses[generation]:.6g} of generation {generation} "
            f"improved by {improvement:.3g} on generation {earlier}'s "
            f"{best_losses[earlier]:.6g}, less than min_improvement {settings.min_improvement}"
        )
    return ""


# -- runs of the workflow ------------------------------------------------------------------

RUN_PREFIX = "pbt-"  # a final worker's run folder: runs/pbt-worker00, ...
# What PBT controls, so the run's own schedule is off: no learning-rate scheduler (PBT sets the
# learning rate) and no early stopping (the stop rule decides when the population stops).
PBT_OVERRIDES = {"lr_scheduler": False, "early_stopping_patience": 0}


def worker_packs(settings: PBTSettings, pack_size: int) -> dict[str, list[str]]:
    """{pack name: its workers}: the population in consecutive packs of at most `pack_size`
    (pack00, pack01, ...); one pack when it fits. A worker keeps its pack in every generation."""
    workers = settings.worker_names
    chunks = [workers[start : start + pack_size] for start in range(0, len(workers), pack_size)]
    return {f"pack{index:02d}": chunk for index, chunk in enumerate(chunks)}


def run_names(settings: PBTSettings) -> dict[str, str]:
    """{run name in runs/: worker name} of the final population."""
    return {f"{RUN_PREFIX}{worker}": worker for worker in settings.worker_names}


def worker_hparams(
    base: Mapping[str, Any], searched: Mapping[str, float], end_epoch: int, worker: int
) -> dict[str, Any]:
    """A worker's plain hyperparameters for one generation: the configfile's `model.hparams`,
    the plan's searched values, PBT_OVERRIDES, max_epochs = the generation's end epoch, and its
    own seed (the base seed plus its index: each worker draws its own weights and noise)."""
    seed = int(base.get("seed", 0)) + worker
    return {**base, **searched, **PBT_OVERRIDES, "max_epochs": end_epoch, "seed": seed}


def generation_name(generation: int) -> str:
    """The generation as it appears in paths: 0 -> "0000"."""
    return f"{generation:04d}"


def plan_generation(
    settings: PBTSettings,
    generation: int,
    previous_plan: str | Path | None = None,
    result_files: Sequence[str | Path] = (),
) -> Plan:
    """The plan of `generation` from files (rule `pbt_plan` of a population in several packs):
    `initial_plan` for 0, else `plan_next_generation` from the plan of generation - 1 and the
    results files of its packs (`write_results`, in any order)."""
    if generation == 0:
        return initial_plan(settings)
    if previous_plan is None:
        raise ValueError(
            f"generation {generation}: the plan of generation {generation - 1} is needed"
        )
    earlier = read_plan(previous_plan)
    results = [result for path in result_files for result in read_results(path)]
    return plan_next_generation(settings, generation - 1, results, earlier.best_losses)


def next_plan(
    settings: PBTSettings, plans: Sequence[Plan], results: Sequence[Sequence[WorkerResult]]
) -> Plan:
    """The plan of generation len(plans): `initial_plan` for 0, else `plan_next_generation`
    from the last plan and its generation's results (results[g]: generation g's)."""
    generation = len(plans)
    if generation == 0:
        return initial_plan(settings)
    if len(results) < generation:
        raise ValueError(
            f"generation {generation}: the results of generation {generation - 1} are needed"
        )
    earlier = plans[generation - 1]
    return plan_next_generation(
        settings, generation - 1, results[generation - 1], earlier.best_losses
    )


def describe_plan(plan: Plan) -> list[str]:
    """The plan in words, one line per decision (for logs)."""
    if plan.stop:
        return [f"generation {plan.generation}: the search stops ({plan.stop_reason})"]
    lines = [
        f"generation {plan.generation}: {len(plan.workers)} workers train epochs "
        f"{plan.start_epoch + 1}..{plan.end_epoch}"
        + (
            f"; best of generation {plan.generation - 1}: {plan.best_worker} "
            f"({plan.best_losses[-1]:.6g})"
            if plan.best_worker
            else ""
        )
    ]
    for worker in plan.workers:
        values = ", ".join(f"{name} {value:.4g}" for name, value in worker.hyperparameters.items())
        how = f"copies {worker.parent}" if worker.exploited else "keeps its state"
        lines.append(f"  {worker.name}: {how}; {values}")
    return lines


# -- files ---------------------------------------------------------------------------------


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (what `write_plan` writes and a PBT state keeps)."""
    return {"format_version": FORMAT_VERSION, **dataclasses.asdict(plan)}


def plan_from_dict(data: Mapping[str, Any], where: str | Path) -> Plan:
    """The Plan of `plan_to_dict`'s data; `where` names its file in errors."""
    try:
        return Plan(
            generation=data["generation"],
            start_epoch=data["start_epoch"],
            end_epoch=data["end_epoch"],
            workers=tuple(
                PlannedWorker(
                    worker["name"],
                    worker["parent"],
                    worker["exploited"],
                    {name: float(value) for name, value in worker["hyperparameters"].items()},
                )
                for worker in data["workers"]
            ),
            best_losses=tuple(float(loss) for loss in data["best_losses"]),
            best_worker=data["best_worker"],
            stop=data["stop"],
            stop_reason=data["stop_reason"],
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{where}: not a PBT plan ({type(error).__name__}: {error}); delete it and rerun "
            "the rule that writes it"
        ) from None


def write_plan(path: str | Path, plan: Plan) -> None:
    """Write `plan` as JSON, atomically (see `read_plan`)."""
    write_json(path, plan_to_dict(plan))


def read_plan(path: str | Path) -> Plan:
    """The Plan that `write_plan` wrote to `path`."""
    return plan_from_dict(_read_json(path, "plan", "write_plan"), path)


def result_to_dict(result: WorkerResult) -> dict[str, Any]:
    """One worker's result as plain data; a diverged loss is null."""
    return {
        "name": result.name,
        "hyperparameters": dict(result.hyperparameters),
        "valid_recon_smoothed": None if result.diverged else result.valid_recon_smoothed,
        "curve": [[epoch, None if math.isnan(loss) else loss] for epoch, loss in result.curve],
    }


def result_from_dict(data: Mapping[str, Any], where: str | Path) -> WorkerResult:
    """The WorkerResult of `result_to_dict`'s data (a null loss reads as NaN)."""
    try:
        loss = data["valid_recon_smoothed"]
        return WorkerResult(
            name=data["name"],
            hyperparameters={name: float(value) for name, value in data["hyperparameters"].items()},
            valid_recon_smoothed=math.nan if loss is None else float(loss),
            curve=tuple(
                (int(epoch), math.nan if value is None else float(value))
                for epoch, value in data.get("curve", [])
            ),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{where}: not a PBT worker result ({type(error).__name__}: {error}); delete the "
            "search's checkpoint folder to start the search again"
        ) from None


def write_results(path: str | Path, generation: int, results: Sequence[WorkerResult]) -> None:
    """Every worker's result of one generation, as JSON, atomically (`read_results`)."""
    write_json(
        path,
        {
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "workers": [result_to_dict(result) for result in results],
        },
    )


def read_results(path: str | Path) -> list[WorkerResult]:
    """The results that `write_results` wrote to `path`, in worker order."""
    data = _read_json(path, "results", "write_results")
    return [result_from_dict(worker, path) for worker in data.get("workers", [])]


def _read_json(path: str | Path, what: str, writer: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON ({error}); delete it and rerun the rule that writes it"
        ) from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise ValueError(
            f"{path}: {what} format_version {found!r}, but this lfads reads version "
            f"{FORMAT_VERSION} (written by lfads.search.pbt.{writer}); delete the file and "
            "rerun the rule that writes it"
        )
    return data


HISTORY_COLUMNS = ("generation", "worker", "parent", "exploited", "epochs", "valid_recon_smoothed")


def history_rows(
    plans: Sequence[Plan], results: Sequence[Sequence[WorkerResult]]
) -> list[dict[str, Any]]:
    """One row per trained generation and worker, for `pbt_history.tsv`.

    plans[g] is the plan of generation g (plans[0] from `initial_plan`) and
    results[g] the workers' results at its end. A row holds HISTORY_COLUMNS
    (epochs: total epochs at the end of the generation; parent and exploited:
    how the worker started it) and one column per searched hyperparameter,
    the value it trained with. Raises ValueError when a result's values
    differ from its plan's.
    """
    if len(plans) < len(results):
        raise ValueError(f"{len(results)} generations of results but only {len(plans)} plans")
    rows = []
    for generation, (plan, generation_results) in enumerate(zip(plans, results)):
        if plan.generation != generation or plan.stop:
            raise ValueError(
                f"plans[{generation}] is the plan of generation {plan.generation} "
                f"(stop: {plan.stop}); pass the plans of generations 0, 1, ... in order"
            )
        by_name = {result.name: result for result in generation_results}
        for planned in plan.workers:
            result = by_name.get(planned.name)
            if result is None:
                raise ValueError(f"generation {generation}: no result for {planned.name}")
            if dict(result.hyperparameters) != dict(planned.hyperparameters):
                raise ValueError(
                    f"generation {generation}, {planned.name}: trained with "
                    f"{dict(result.hyperparameters)}, but the plan says "
                    f"{dict(planned.hyperparameters)}"
                )
            rows.append(
                {
                    "generation": generation,
                    "worker": planned.name,
                    "parent": planned.parent,
                    "exploited": planned.exploited,
                    "epochs": plan.end_epoch,
                    "valid_recon_smoothed": result.valid_recon_smoothed,
                    **{
                        name: planned.hyperparameters[name]
                        for name in sorted(result.hyperparameters)
                    },
                }
            )
    return rows


def write_history(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write `history_rows` as a tab-separated table with a header, atomically.

    Floats are written exactly (Python's repr; a diverged loss is `nan` or
    `inf`), booleans as true/false.
    """
    if not rows:
        raise ValueError(f"{path}: no rows to write; train generation 0 first")
    columns = list(rows[0])
    lines = ["\t".join(columns)]
    for row in rows:
        if list(row) != columns:
            raise ValueError(f"{path}: every row needs the columns {columns}, got {list(row)}")
        lines.append("\t".join(_history_cell(row[column]) for column in columns))
    write_text(path, "\n".join(lines) + "\n")


CURVE_COLUMNS = ("generation", "worker", "epoch", "valid_recon_smoothed")


def write_curves(path: str | Path, results: Sequence[Sequence[WorkerResult]]) -> None:
    """Every worker's smoothed valid recon at every epoch of every generation (results[g]: the
    generation's results) as a tab-separated table, atomically; NaN where it diverged."""
    lines = ["\t".join(CURVE_COLUMNS)]
    for generation, generation_results in enumerate(results):
        for result in generation_results:
            for epoch, loss in result.curve:
                lines.append(f"{generation}\t{result.name}\t{epoch}\t{loss!r}")
    write_text(path, "\n".join(lines) + "\n")


def read_curves(path: str | Path) -> dict[tuple[int, str], tuple[list[int], list[float]]]:
    """{(generation, worker): (epochs, losses)} of `write_curves`'s table."""
    lines = Path(path).read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != CURVE_COLUMNS:
        raise ValueError(f"{path}: not a PBT curves table (columns {list(CURVE_COLUMNS)})")
    curves: dict[tuple[int, str], tuple[list[int], list[float]]] = {}
    for line in lines[1:]:
        generation, worker, epoch, loss = line.split("\t")
        epochs, losses = curves.setdefault((int(generation), worker), ([], []))
        epochs.append(int(epoch))
        losses.append(float(loss))
    return curves


def _history_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def missing_search_files(search_dir: str | Path, history: str | Path) -> list[Path]:
    """The plan and results files of a finished one-pack search (`train_population`: its
    pbt_history.tsv exists) that are not in `search_dir`: plan_gen<g>.json of every trained
    generation and of the one that stopped it, results_gen<g>.json of every trained one."""
    search_dir = Path(search_dir)
    if not Path(history).exists():
        return []
    last = max(row["generation"] for row in read_history(history))
    expected = [f"plan_gen{generation_name(g)}.json" for g in range(last + 2)]
    expected += [f"results_gen{generation_name(g)}.json" for g in range(last + 1)]
    return [search_dir / name for name in expected if not (search_dir / name).exists()]


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The rows `write_history` wrote to `path`, with their types back."""
    lines = Path(path).read_text().splitlines()
    columns = lines[0].split("\t")
    missing = [column for column in HISTORY_COLUMNS if column not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; not a PBT history table")
    parse = {
        "generation": int,
        "epochs": int,
        "worker": str,
        "parent": str,
        "exploited": lambda text: text == "true",
    }
    return [
        {column: parse.get(column, float)(cell) for column, cell in zip(columns, line.split("\t"))}
        for line in lines[1:]
    ]
