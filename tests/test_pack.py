"""A pack of members as one model: a member trained in a pack equals the same run trained alone,
members are independent (a member that diverges, a clipped gradient), PBT's exploit copies a
member exactly, and a killed pack resumes exactly."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_HPARAMS, make_batch

from lfads.data.toydata import write_lorenz_prepared
from lfads.formats.checkpoints import load_checkpoint_file, read_model
from lfads.formats.metrics import read_metrics_csv
from lfads.model.batch import SessionBatch
from lfads.model.hparams import HParams
from lfads.model.lfads import LFADS, SessionDims
from lfads.search.pbt import Plan, PlannedWorker
from lfads.training.optimizer import clip_member_gradients, member_gradient_norms
from lfads.training.population import _apply_plan
from lfads.training.step import run_step
from lfads.training.train import Member, train_model, train_pack

# Four members that differ in every kind of member key: seed (weights, draws, batch order),
# dropout, coordinated dropout, KL and L2 scales, learning rate.
MEMBER_VALUES = [
    dict(seed=0, dropout=0.1, cd_rate=0.3, kl_ic_scale=1e-4, l2_gen_scale=0.0, lr=0.01),
    dict(seed=1, dropout=0.0, cd_rate=0.5, kl_ic_scale=1e-6, l2_gen_scale=0.5, lr=0.005),
    dict(seed=7, dropout=0.3, cd_rate=0.1, kl_co_scale=1e-3, l2_con_scale=0.2, lr=0.02),
    dict(seed=3, dropout=0.2, cd_rate=0.0, kl_ic_scale=1e-5, l2_gen_scale=0.1, lr=0.001),
]
SLOT = 2  # the member compared with its run alone: not the first, so slots do not matter


def members(**common) -> list[HParams]:
    return [HParams.from_dict({**TINY_HPARAMS, **common, **values}) for values in MEMBER_VALUES]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def test_one_step_of_a_member_in_a_pack_of_4_equals_the_run_alone_in_float64():
    """The loss and every gradient of one training step (dropout, coordinated dropout and
    posterior noise drawn), each member on its own trials, to 1e-10 relative."""
    dims = SessionDims(6, 2, 9, 3, 1)
    hparams = members(kl_increase_epoch=0, l2_increase_epoch=0)
    trials = [make_batch(dims, 5, seed=m) for m in range(4)]  # each member its own trials

    def step(model: LFADS, batch: SessionBatch) -> tuple[torch.Tensor, dict]:
        model = model.double().train()
        batch = batch.replace(
            **{f: getattr(batch, f).double() for f in ("encod_data", "recon_data", "ext_input")}
        )
        loss = run_step(model, {0: batch}, epoch=2).terms.loss
        loss.sum().backward()
        return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    pack_loss, pack_grads = step(
        LFADS(hparams, [dims]), SessionBatch.stack([t.member(0) for t in trials])
    )
    alone_loss, alone_grads = step(LFADS(hparams[SLOT], [dims]), trials[SLOT])
    assert relative_difference(pack_loss[SLOT], alone_loss[0]) < 1e-10
    assert pack_grads.keys() == alone_grads.keys() and len(alone_grads) > 20
    for name, grad in alone_grads.items():
        assert float(grad.abs().max()) > 0 or name.startswith("readins"), name
        assert relative_difference(pack_grads[name][SLOT], grad[0]) < 1e-10, name
    # and the members differ: another member's gradients are not these
    assert (
        relative_difference(
            pack_grads["decoder.generator.weight_hh"][0],
            alone_grads["decoder.generator.weight_hh"][0],
        )
        > 1e-3
    )


@pytest.fixture(scope="module")
def lorenz(tmp_path_factory) -> Path:
    return write_lorenz_prepared(tmp_path_factory.mktemp("pack") / "prepared.h5", n_trials=100)


def trained_pack(lorenz: Path, folder: Path, hparams: list[HParams]) -> list[Path]:
    return train_pack(
        [Member(f"m{m}", hp, folder / f"m{m}") for m, hp in enumerate(hparams)],
        [lorenz],
        folder / "checkpoints",
        device="cpu",
    )


def numeric_rows(run: Path) -> list[dict[str, float]]:
    table = read_metrics_csv(run / "metrics.csv").drop(columns="epoch_seconds")
    return table.to_dict("records")


@pytest.mark.slow  # about 15 s
def test_five_epochs_of_a_member_in_a_pack_equal_the_run_alone_in_float32(lorenz, tmp_path):
    """Every epoch's losses and metrics to 1e-4 relative: the same seed, batches and draws."""
    hparams = members(max_epochs=5)
    trained_pack(lorenz, tmp_path / "pack", hparams)
    train_model([lorenz], hparams[SLOT], tmp_path / "alone", device="cpu")
    pack, alone = numeric_rows(tmp_path / "pack" / f"m{SLOT}"), numeric_rows(tmp_path / "alone")
    assert len(pack) == len(alone) == 5
    for epoch, (a, b) in enumerate(zip(pack, alone)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-9), (epoch, key)
    # another member trained differently
    assert numeric_rows(tmp_path / "pack" / "m0")[-1]["valid_loss"] != alone[-1]["valid_loss"]


@pytest.mark.slow  # about 15 s
def test_a_member_that_diverges_leaves_the_others_as_they_were(lorenz, tmp_path):
    """Member 1 at lr 1000 meets NaN in its first epoch: it is frozen and marked diverged, and
    members 0 and 2 end as in the same pack where member 1 stayed finite (to 1e-7)."""
    finite = members(max_epochs=3)[:3]
    diverging = [finite[0], finite[1].replace(lr=1000.0), finite[2]]
    trained_pack(lorenz, tmp_path / "finite", finite)
    trained_pack(lorenz, tmp_path / "diverging", diverging)
    broken = read_model(tmp_path / "diverging" / "m1" / "model.ckpt")
    assert broken.diverged is not None and broken.diverged.epoch == 1 and broken.epochs == 0
    assert "Try a lower lr" in broken.diverged.reason
    for m in (0, 2):
        a = read_model(tmp_path / "diverging" / f"m{m}" / "model.ckpt")
        b = read_model(tmp_path / "finite" / f"m{m}" / "model.ckpt")
        assert a.diverged is None and a.epochs == b.epochs == 3
        for name, value in b.state_dict.items():
            assert relative_difference(a.state_dict[name], value) <= 1e-7, (m, name)
        for row_a, row_b in zip(
            numeric_rows(tmp_path / "diverging" / f"m{m}"),
            numeric_rows(tmp_path / "finite" / f"m{m}"),
        ):
            for key, value in row_b.items():
                assert row_a[key] == pytest.approx(value, rel=1e-7, abs=1e-12), (m, key)


def test_clipping_one_members_gradient_does_not_change_anothers():
    weight = torch.nn.Parameter(torch.zeros(2, 3, 4))
    bias = torch.nn.Parameter(torch.zeros(2, 3))
    weight.grad = torch.stack([torch.full((3, 4), 100.0), torch.full((3, 4), 0.01)])
    bias.grad = torch.stack([torch.full((3,), 100.0), torch.full((3,), 0.01)])
    before = [weight.grad[1].clone(), bias.grad[1].clone()]
    norms = member_gradient_norms([weight, bias], 2)
    assert norms.tolist() == pytest.approx([100.0 * 15**0.5, 0.01 * 15**0.5])
    clip_member_gradients([weight, bias], torch.tensor([200.0, 200.0], dtype=torch.float64), norms)
    assert member_gradient_norms([weight, bias], 2)[0] == pytest.approx(200.0, rel=1e-6)
    assert torch.equal(weight.grad[1], before[0]) and torch.equal(bias.grad[1], before[1])
    # a member without a clip (gradient_clip 0) is left as it is
    weight.grad[0] = 100.0
    clip_member_gradients([weight], torch.tensor([0.0, 200.0], dtype=torch.float64), norms)
    assert float(weight.grad[0].max()) == 100.0


def test_exploit_copies_weights_and_adamw_state_exactly_and_sets_the_planned_lr(lorenz, tmp_path):
    hparams = members(max_epochs=2)[:3]
    trained_pack(lorenz, tmp_path, hparams)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = load_checkpoint_file(last)
    planned = [
        PlannedWorker("m0", "m0", False, {"lr": 0.003}),
        PlannedWorker("m1", "m1", False, {"lr": 0.004}),
        PlannedWorker("m2", "m0", True, {"lr": 0.0123}),  # m2 copies m0
    ]
    plan = Plan(1, 2, 4, tuple(planned), (1.0,), "m0")
    new = [hp.replace(lr=worker.hyperparameters["lr"]) for hp, worker in zip(hparams, planned)]
    _apply_plan(last, plan, [Member(w.name, hp, tmp_path / w.name) for w, hp in zip(planned, new)])
    after = load_checkpoint_file(last)
    for name, value in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name][2], value[0]), name  # the copy
        assert torch.equal(after["state_dict"][name][1], value[1]), name  # untouched
    moments_before = before["optimizer_states"][0]["state"]
    moments_after = after["optimizer_states"][0]["state"]
    assert len(moments_after) > 20
    for index, moments in moments_before.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments_after[index][key][2], moments[key][0]), (index, key)
            assert torch.equal(moments_after[index][key][1], moments[key][1]), (index, key)
    assert after["optimizer_states"][0]["param_groups"][0]["lr"] == [0.003, 0.004, 0.0123]
    copied, parent = after["lfads"]["members"][2], before["lfads"]["members"][0]
    assert copied["history"] == parent["history"] and copied["name"] == "m2"
    assert copied["best_epoch"] == 0 and copied["best_weights"] == {}  # its own from the copy
    assert copied["hparams"]["lr"] == 0.0123 and copied["hparams"]["seed"] == hparams[2].seed
    states = zip(after["lfads"]["rng"]["states"], before["lfads"]["rng"]["states"])
    assert all(torch.equal(a, b) for a, b in states)  # each keeps its own stream


KILLABLE = """
import sys
from pathlib import Path

import torch

from lfads.infra.logs import configure
from lfads.model.hparams import HParams
from lfads.training.train import Member, train_pack

configure()
torch.set_num_threads(1)
folder, data = Path(sys.argv[1]), Path(sys.argv[2])
base = {hparams}
values = [dict(seed=0, dropout=0.1, lr=0.01), dict(seed=5, dropout=0.2, lr=0.005)]
train_pack(
    [
        Member(f"m{{m}}", HParams.from_dict({{**base, **v}}), folder / f"m{{m}}")
        for m, v in enumerate(values)
    ],
    [data],
    folder / "checkpoints",
    device="cpu",
)
"""


@pytest.mark.slow  # about 40 s
def test_a_pack_killed_mid_epoch_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    data = write_lorenz_prepared(tmp_path / "prepared.h5", n_trials=400)
    hparams = {**TINY_HPARAMS, "gen_dim": 64, "lr_scheduler": True, "max_epochs": 8}
    script = tmp_path / "train_pack.py"
    script.write_text(textwrap.dedent(KILLABLE.format(hparams=repr(hparams))))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(folder: Path) -> list[str]:
        return [sys.executable, str(script), str(folder), str(data)]

    subprocess.run(command(tmp_path / "whole"), check=True, env=env, cwd=REPO, capture_output=True)
    process = subprocess.Popen(
        command(tmp_path / "killed"), env=env, cwd=REPO, stderr=subprocess.DEVNULL
    )
    progress = tmp_path / "killed" / "checkpoints" / "m1.metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) > 3:
            time.sleep(0.1)  # into the next epoch: killed mid-epoch
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, "training ended before it could be killed"
    assert not (tmp_path / "killed" / "m0" / "model.ckpt").exists()
    resumed = subprocess.run(
        command(tmp_path / "killed"), check=True, env=env, cwd=REPO, capture_output=True, text=True
    )
    assert "resumed from epoch" in resumed.stderr
    for m in ("m0", "m1"):
        whole, killed = numeric_rows(tmp_path / "whole" / m), numeric_rows(tmp_path / "killed" / m)
        assert len(whole) == len(killed) == 8
        for a, b in zip(whole, killed):
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (m, key)
        assert not math.isnan(whole[-1]["valid_loss"])


def test_a_pbt_worker_that_diverges_in_its_first_epoch_is_replaced_and_the_search_completes(
    lorenz, tmp_path
):
    """Seed 17 draws lr 823 for worker00 (NaN in its first epoch) and 0.013 for worker01: the
    search replaces worker00 by a copy of worker01, and its history, curves and figure complete."""
    import matplotlib

    matplotlib.use("Agg")
    from lfads.evaluation.figures import pbt_progress
    from lfads.search.pbt import PBTSettings, read_curves, read_history
    from lfads.training.population import train_population

    settings = PBTSettings.from_config(
        {
            "population": 2,
            "seed": 17,
            "burn_in_epochs": 2,
            "generation_epochs": 1,
            "max_epochs": 3,
            "hyperparameters": {"lr": {"range": [1.0e-3, 1.0e4], "scale": "log"}},
        }
    )
    runs = {worker: tmp_path / "runs" / worker for worker in settings.worker_names}
    history, curves = tmp_path / "pbt_history.tsv", tmp_path / "pbt" / "curves.tsv"
    train_population(
        settings,
        dict(TINY_HPARAMS),
        [lorenz],
        runs,
        tmp_path / "ck",
        tmp_path / "pbt",
        history,
        curves,
        device="cpu",
    )
    rows = read_history(history)
    first = {row["worker"]: row for row in rows if row["generation"] == 0}
    assert first["worker00"]["lr"] > 100 and math.isnan(first["worker00"]["valid_recon_smoothed"])
    assert math.isfinite(first["worker01"]["valid_recon_smoothed"])
    second = {row["worker"]: row for row in rows if row["generation"] == 1}
    assert second["worker00"]["exploited"] and second["worker00"]["parent"] == "worker01"
    assert all(math.isfinite(row["valid_recon_smoothed"]) for row in second.values())
    found = read_curves(curves)
    assert (0, "worker00") not in found  # no epoch of generation 0 finished
    assert found[1, "worker00"][0] == [3]
    pbt_progress(rows, found, tmp_path / "pbt.png")
    assert (tmp_path / "pbt.png").stat().st_size > 10_000
    copied = read_model(runs["worker00"] / "model.ckpt")
    assert copied.diverged is None and copied.epochs == 3 and copied.best_epoch == 3
