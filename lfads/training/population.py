"""Population-based training (AutoLFADS) as one pack in one process (rule `pbt`).

The whole population trains as one pack (`lfads.training.train.fit_pack`): one forward and one
backward pass serve every worker. Between generations, the decisions of `lfads.search.pbt`
(exploit: who copies whom; explore: the new values) are applied to the pack's state: exploit
copies the parent's slot of the weights and of AdamW's moments and step counts into the
worker's slot, with the parent's history (its lineage); explore writes the new values into the
worker's hyperparameters (the model's per-member tensors, the optimiser's per-member learning
rate). A copied worker keeps its own random stream, and its best epoch counts from the copy, so
the final workers are distinct models for an ensemble.

Resumable at any epoch: the pack's `last.ckpt` (rewritten after every epoch) holds the search's
record (every plan and every finished generation's results, and which plan its state trains),
so a killed job replays the same decisions and resumes the generation where it stopped. Each
generation's plan and results are also written for reading, as `plan_gen<g>.json` and
`results_gen<g>.json` in `search_dir` (lfads/README.md, "Files of a PBT search").

A population larger than a pack trains one generation of one pack per process
(`train_generation_of_pack`, rule `pbt_pack`), the workflow planning between generations; the
same `apply_plan` applies a plan in both.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from lfads.formats.checkpoints import (
    TRAINING_STATE,
    load_checkpoint_file,
    read_training_checkpoint,
)
from lfads.formats.metrics import EPOCH, VALID_RECON_SMOOTHED
from lfads.infra.io import atomic_path
from lfads.model.hparams import HParams
from lfads.search.pbt import (
    PBTSettings,
    Plan,
    PlannedWorker,
    WorkerResult,
    describe_plan,
    generation_name,
    history_rows,
    next_plan,
    plan_from_dict,
    plan_to_dict,
    result_from_dict,
    result_to_dict,
    worker_hparams,
    write_curves,
    write_history,
    write_plan,
    write_results,
)
from lfads.training.resume import LAST_CHECKPOINT, RunIdentity, RunPlan, plan_run
from lfads.training.train import Member, deliver, fit_pack, pack_data, resolve_device

log = logging.getLogger("lfads.search.pbt")


def train_population(
    settings: PBTSettings,
    base_hparams: dict[str, Any],
    data_files: list[Path],
    runs: dict[str, Path],
    checkpoint_dir: Path,
    search_dir: Path,
    history: Path,
    curves: Path,
    device: str = "auto",
    rnn_impl: str = "fast",
) -> None:
    """Run the whole search, or resume it, and write its outputs.

    base_hparams: the configfile's `model.hparams`; runs: {worker: its final run folder}, where
    the last generation's workers go (model.ckpt with the weights of each worker's best epoch
    since its last copy, metrics.csv of its lineage, hparams.yaml); history: pbt_history.tsv
    (`lfads.search.pbt.write_history`); curves: every worker's loss per epoch
    (`write_curves`).
    """
    data_files = [Path(path) for path in data_files]
    checkpoint_dir, search_dir = Path(checkpoint_dir), Path(search_dir)
    device = resolve_device(device)
    workers = settings.worker_names
    data = pack_data(data_files, _member_hparams(base_hparams, next_plan(settings, [], [])))
    identity = RunIdentity.of(
        [
            HParams.from_dict(worker_hparams(base_hparams, {}, settings.max_epochs, index))
            for index in range(len(workers))
        ],
        data_files,
        search=dataclasses.asdict(settings),
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    found = plan_run(checkpoint_dir, identity, settings.max_epochs)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)  # (again: a folder set aside was renamed)
    last = checkpoint_dir / LAST_CHECKPOINT
    record = (found.state.search if found.state is not None else None) or {
        "plans": [],
        "results": [],
        "applied": 0,
    }
    plans = [plan_from_dict(plan, last) for plan in record["plans"]]
    results = [[result_from_dict(r, last) for r in generation] for generation in record["results"]]
    if plans:
        log.info(
            "resuming the search: %d generation(s) done, the state trains generation %d",
            len(results),
            record["applied"],
        )
    search_dir.mkdir(parents=True, exist_ok=True)
    while True:
        generation = len(results)
        if len(plans) == generation:
            plans.append(next_plan(settings, plans, results))
            record["plans"] = [plan_to_dict(plan) for plan in plans]
            for line in describe_plan(plans[-1]):
                log.info("%s", line)
        plan = plans[generation]
        if plan.stop:
            break
        members = [
            Member(worker.name, hparams, runs[worker.name])
            for worker, hparams in zip(plan.workers, _member_hparams(base_hparams, plan))
        ]
        write_plan(search_dir / f"plan_gen{generation_name(generation)}.json", plan)
        if generation > 0 and record["applied"] < generation:
            _apply_plan(last, plan, members)
            record["applied"] = generation
        states = _train_generation(members, data, identity, plan, last, record, device, rnn_impl)
        results.append(_results(plan, states))
        record["results"] = [[result_to_dict(r) for r in gen] for gen in results]
        _save_record(last, record)
        name = f"results_gen{generation_name(generation)}.json"
        write_results(search_dir / name, generation, results[-1])
    for generation, plan in enumerate(plans):  # (again: a kill may have lost one)
        write_plan(search_dir / f"plan_gen{generation_name(generation)}.json", plan)
    for generation, generation_results in enumerate(results):
        name = f"results_gen{generation_name(generation)}.json"
        write_results(search_dir / name, generation, generation_results)
    trained = [plan for plan in plans if not plan.stop]
    final = trained[-1]
    members = [
        Member(worker.name, hparams, runs[worker.name])
        for worker, hparams in zip(final.workers, _member_hparams(base_hparams, final))
    ]
    deliver(
        members, read_training_checkpoint(last).members, data.sessions, checkpoint_dir, identity
    )
    write_history(history, history_rows(trained, results))
    write_curves(curves, results)
    log.info("the search stopped: %s", plans[-1].stop_reason)


def train_generation_of_pack(
    settings: PBTSettings,
    base_hparams: dict[str, Any],
    data_files: list[Path],
    plan: Plan,
    pack: list[str],
    packs: dict[str, list[str]],
    previous_states: dict[str, Path],
    out_dir: Path,
    checkpoint_dir: Path,
    device: str = "auto",
    rnn_impl: str = "fast",
) -> list[WorkerResult]:
    """One generation of one pack of a population larger than a pack (rule `pbt_pack`): the
    pack's workers `pack` start from the previous generation's end with the plan applied (a copy
    may come from another pack's state), train to the plan's end epoch, and write into out_dir
    `state.ckpt` (the pack's state at the generation's end), `results.json` (its workers') and
    each worker's `<worker>/` run files.

    packs: {pack name: its workers} of the whole population (a worker keeps its pack);
    previous_states: {pack name: its state.ckpt at the end of the previous generation}, for
    generation >= 1. The pack's checkpoint_dir (one per generation) makes a killed job resume.
    """
    data_files, out_dir = [Path(path) for path in data_files], Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir)
    device = resolve_device(device)
    workers = [plan.worker(name) for name in pack]
    hparams = _member_hparams(base_hparams, plan, workers)
    members = [Member(w.name, hp, out_dir / w.name) for w, hp in zip(workers, hparams)]
    data = pack_data(data_files, hparams)
    search = {"pbt": dataclasses.asdict(settings), "generation": plan.generation}
    identity = RunIdentity.of(hparams, data_files, search=search)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    found = plan_run(checkpoint_dir, identity, plan.end_epoch)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = checkpoint_dir / LAST_CHECKPOINT
    if found.action == "afresh" and plan.generation > 0:
        pack_of = {worker: name for name, group in packs.items() for worker in group}
        own = pack_of[pack[0]]
        states = {own: _previous_state(previous_states[own], plan.generation)}
        checkpoint = copy.deepcopy(states[own])  # (changed below; copies read states[own])
        for worker in workers:
            parent_pack = pack_of[worker.parent]
            if worker.exploited and parent_pack not in states:
                states[parent_pack] = _previous_state(previous_states[parent_pack], plan.generation)
        sources = {
            worker: (states[name], slot)
            for name, group in packs.items()
            if name in states
            for slot, worker in enumerate(group)
        }
        apply_plan(checkpoint, workers, members, sources, plan.generation)
        checkpoint[TRAINING_STATE]["identity"] = identity.to_dict()  # a rerun resumes it
        with atomic_path(last) as tmp:
            torch.save(checkpoint, tmp)
        found = RunPlan("resume", read_training_checkpoint(last), None, last)
    module = fit_pack(members, data, identity, found, checkpoint_dir, device, rnn_impl)
    deliver(members, module.states, data.sessions, checkpoint_dir, identity)
    with atomic_path(out_dir / "state.ckpt") as tmp:
        shutil.copyfile(last, tmp)
    results = _results(plan, module.states, workers)
    write_results(out_dir / "results.json", plan.generation, results)
    for result in results:
        log.info("%s: smoothed valid recon %.6g", result.name, result.valid_recon_smoothed)
    return results


def _previous_state(path: Path, generation: int) -> dict[str, Any]:
    """A pack's state.ckpt at the end of generation - 1 (unreadable: ValueError, what to do)."""
    try:
        return load_checkpoint_file(path)
    except ValueError as error:
        raise ValueError(
            f"generation {generation} starts from the end of generation {generation - 1}, but "
            f"{error}. Delete the folder {Path(path).parent} and rerun the workflow: that pack's "
            f"generation {generation - 1} is written again from its checkpoint, without training"
        ) from None


def _member_hparams(
    base: dict[str, Any], plan: Plan, workers: list[PlannedWorker] | None = None
) -> list[HParams]:
    """Each worker's hyperparameters (workers: those of one pack, default all); worker i of the
    population trains with seed base + i."""
    index = {worker.name: i for i, worker in enumerate(plan.workers)}
    return [
        HParams.from_dict(
            worker_hparams(base, worker.hyperparameters, plan.end_epoch, index[worker.name])
        )
        for worker in workers or plan.workers
    ]


def _train_generation(members, data, identity, plan: Plan, last: Path, record, device, rnn_impl):
    """Train the pack to the plan's end epoch (nothing when its state is there already); returns
    every member's state at the generation's end."""
    if last.exists():
        state = read_training_checkpoint(last)
        done = max(len(member.history) for member in state.members)
        if done >= plan.end_epoch or all(member.finished for member in state.members):
            return state.members
        run = RunPlan("resume", state, None, last)
    else:
        run = RunPlan("afresh")
    module = fit_pack(
        members, data, identity, run, last.parent, device, rnn_impl, search=dict(record)
    )
    return module.states


def _results(plan: Plan, states, workers: list[PlannedWorker] | None = None) -> list[WorkerResult]:
    """Each worker's result of the plan's generation (workers: those of one pack, default all):
    its smoothed valid recon at the last epoch (NaN if it diverged) and its loss at each epoch of
    the generation."""
    results = []
    for worker, state in zip(workers or plan.workers, states):
        curve = tuple(
            (int(row[EPOCH]) + 1, float(row[VALID_RECON_SMOOTHED]))
            for row in state.history
            if plan.start_epoch <= row[EPOCH] < plan.end_epoch
        )
        finished = state.diverged is None and state.history
        loss = float(state.history[-1][VALID_RECON_SMOOTHED]) if finished else math.nan
        results.append(WorkerResult(worker.name, dict(worker.hyperparameters), loss, curve))
    return results


def _apply_plan(last: Path, plan: Plan, members: list[Member]) -> None:
    """Exploit and explore in the one pack's state at the end of the previous generation."""
    checkpoint = load_checkpoint_file(last)
    before = copy.deepcopy(checkpoint)  # what copies read: the state before any copy
    sources = {worker.name: (before, slot) for slot, worker in enumerate(plan.workers)}
    apply_plan(checkpoint, list(plan.workers), members, sources, plan.generation)
    with atomic_path(last) as tmp:
        torch.save(checkpoint, tmp)


def apply_plan(
    checkpoint: dict[str, Any],
    workers: list[PlannedWorker],
    members: list[Member],
    sources: dict[str, tuple[dict[str, Any], int]],
    generation: int,
) -> None:
    """Exploit and explore in a pack's state (`checkpoint`, a last.ckpt's dict, changed in place)
    at the end of the previous generation: each worker that copies another takes the parent's
    slot of every weight, of AdamW's moments and step counts, and its history (a fresh best
    epoch: its own from the copy); every worker takes the plan's values. workers[m] and
    members[m] are slot m; sources: {worker: (the state holding it before any copy, its slot)},
    so copies never chain. A copied worker keeps its own random stream."""
    weights = checkpoint["state_dict"]
    optimizer = checkpoint["optimizer_states"][0]
    state = checkpoint[TRAINING_STATE]
    group = optimizer["param_groups"][0]
    for target, (worker, member) in enumerate(zip(workers, members)):
        if worker.exploited:
            source, parent = sources[worker.parent]
            for name, value in weights.items():
                value[target] = source["state_dict"][name][parent]
            parent_moments = source["optimizer_states"][0]["state"]
            for index, moments in optimizer["state"].items():
                for key, value in moments.items():
                    value[target] = parent_moments[index][key][parent]
            lineage = copy.deepcopy(source[TRAINING_STATE]["members"][parent])
            lineage.update(  # its best epoch counts from the copy
                name=worker.name, best_epoch=0, best_valid_recon_smoothed=math.inf, best_weights={}
            )
            state["members"][target] = lineage
        state["members"][target]["hparams"] = member.hparams.to_dict()
        group["lr"][target] = member.hparams.lr
        group["weight_decay"][target] = member.hparams.weight_decay
    state["search"] = {**(state.get("search") or {}), "applied": generation}
    copies = [f"{w.name} <- {w.parent}" for w in workers if w.exploited]
    log.info(
        "generation %d starts from the end of generation %d%s",
        generation,
        generation - 1,
        f"; copies: {', '.join(copies)}" if copies else "; no copies",
    )


def _save_record(last: Path, record: dict[str, Any]) -> None:
    """Put the search's record into the pack's last.ckpt (atomically)."""
    checkpoint = load_checkpoint_file(last)
    checkpoint[TRAINING_STATE]["search"] = record
    with atomic_path(last) as tmp:
        torch.save(checkpoint, tmp)
