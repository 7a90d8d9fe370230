"""Training, checkpoints, resume, NaN guard, inference and several sessions on small Lorenz data."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_HPARAMS

from lfads.cli import main
from lfads.data.toydata import write_lorenz_prepared
from lfads.formats.checkpoints import load_model, read_model, read_training_checkpoint
from lfads.model.hparams import HParams
from lfads.training.train import train_model

FAC_DIM = TINY_HPARAMS["fac_dim"]


@pytest.fixture(scope="module")
def lorenz_file(tmp_path_factory) -> Path:
    """100 trials (80 train, 20 valid: 2 + 1 batches of TINY_HPARAMS an epoch) and 20 eval."""
    return write_lorenz_prepared(tmp_path_factory.mktemp("lorenz") / "prepared.h5", n_trials=100)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def comparable(rows: list[dict[str, str]]) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in row.items() if k != "epoch_seconds" and v != ""} for row in rows
    ]


def test_train_writes_outputs_and_checkpoints_load_weights_only(lorenz_file, tmp_path):
    hp = HParams.from_dict({**TINY_HPARAMS, "lr_scheduler": True})
    model_path = train_model([lorenz_file], hp, tmp_path / "run", max_epochs=3, device="cpu")
    assert model_path == tmp_path / "run" / "model.ckpt"
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for column in (
        "train_loss",
        "train_recon",
        "train_kl_ic",
        "train_kl_co",
        "train_l2",
        "valid_loss",
        "valid_recon",
        "valid_bps",
        "valid_co_bps",
        "valid_fp_bps",
        "valid_rate_r2",
        "l2_ramp",
        "kl_ramp",
        "lr",
        "valid_recon_smoothed",
        "train_bps",
    ):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    assert [float(r["kl_ramp"]) for r in rows] == [1 / 3, 2 / 3, 1.0]  # kl_increase_epoch 2
    assert HParams.from_yaml(tmp_path / "run" / "hparams.yaml") == hp.replace(max_epochs=3)
    # both checkpoints are plain data
    final = torch.load(model_path, weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["hparams"] == hp.replace(max_epochs=3).to_dict() and final["epochs"] == 3
    assert final["data"][0]["n_heldin"] == 20 and final["sessions"][0]["n_fwd_bins"] == 5
    (member,) = last["lfads"]["members"]  # a pack of one
    assert last["epoch"] == 2 and len(member["history"]) == 3 and member["name"] == "run"
    assert last["lfads"]["rng"]["device"] == "cpu" and len(last["lfads"]["rng"]["states"]) == 1
    assert final["format_version"] == 1 and last["lfads"]["format_version"] == 2
    # model.ckpt holds the weights of the epoch with the lowest smoothed valid recon
    smoothed = [float(r["valid_recon_smoothed"]) for r in rows]
    assert final["best_epoch"] == smoothed.index(min(smoothed)) + 1 == member["best_epoch"]
    assert final["best_valid_recon_smoothed"] == min(smoothed)
    model, _ = load_model(model_path)
    assert model.readin_dim is None  # one session: the encoders read the held-in neurons
    # model.ckpt holds one member's weights, without the member axis
    torch.testing.assert_close(final["state_dict"], member["best_weights"])
    torch.testing.assert_close(model.member_state_dict(0), member["best_weights"])
    if final["best_epoch"] == 3:  # then they are also the final weights
        state = {k.removeprefix("model."): v for k, v in last["state_dict"].items()}
        torch.testing.assert_close(model.state_dict(), state)


def test_the_module_steps_with_the_shared_training_step(lorenz_file):
    from lfads.model.lfads import LFADS
    from lfads.model.members import MemberRandom
    from lfads.training.datamodule import load_session
    from lfads.training.module import LFADSModule
    from lfads.training.step import run_step

    session = load_session(lorenz_file)
    hp = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.1})
    module = LFADSModule(LFADS([hp], [session.dims]), ["run"])
    batch = {0: session.batch("train", np.arange(12), n_members=1)}
    module.model.random = MemberRandom([3])
    expected = run_step(module.model, batch, epoch=0).terms.loss
    module.model.random = MemberRandom([3])
    assert torch.equal(module._step(batch, "train").terms.loss, expected)
    module.model.random = MemberRandom([3])  # without the augmentations (coordinated dropout)
    assert not torch.equal(
        run_step(module.model, batch, epoch=0, training=False).terms.loss, expected
    )


def test_seeded_cpu_run_is_deterministic(lorenz_file, tmp_path):
    hp = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.1})
    train_model([lorenz_file], hp, tmp_path / "a", max_epochs=2, device="cpu")
    train_model([lorenz_file], hp, tmp_path / "b", max_epochs=2, device="cpu")
    assert comparable(read_metrics(tmp_path / "a" / "metrics.csv")) == comparable(
        read_metrics(tmp_path / "b" / "metrics.csv")
    )
    a, b = read_model(tmp_path / "a" / "model.ckpt"), read_model(tmp_path / "b" / "model.ckpt")
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key


def test_resume_in_process_continues_exactly(lorenz_file, tmp_path, caplog):
    hp = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.1, "lr_scheduler": True, "lr_patience": 0})
    train_model([lorenz_file], hp, tmp_path / "whole", max_epochs=4, device="cpu")
    train_model([lorenz_file], hp, tmp_path / "parts", max_epochs=2, device="cpu")
    caplog.set_level("INFO", logger="lfads.training.train")
    train_model([lorenz_file], hp, tmp_path / "parts", max_epochs=4, device="cpu")
    assert "resumed from epoch 2 (" in caplog.text and "continuing at epoch 3 of 4" in caplog.text
    whole, parts = (
        read_metrics(tmp_path / "whole" / "metrics.csv"),
        read_metrics(tmp_path / "parts" / "metrics.csv"),
    )
    assert comparable(whole) == comparable(parts)
    # (another lr trains afresh: tests/test_reruns_and_divergence.py)
    # the recurrent implementation does not change the numbers, so it may change on resume
    caplog.clear()
    train_model(
        [lorenz_file], hp, tmp_path / "parts", max_epochs=5, device="cpu", rnn_impl="reference"
    )
    assert "resumed from epoch 4 (" in caplog.text
    assert "rnn_impl" not in read_model(tmp_path / "parts" / "model.ckpt").hparams.to_dict()
    train_model([lorenz_file], hp, tmp_path / "whole", max_epochs=5, device="cpu")
    fast, reference = (
        comparable(read_metrics(tmp_path / run / "metrics.csv"))[-1] for run in ("whole", "parts")
    )
    assert fast.keys() == reference.keys()
    for key in fast:  # the same numbers up to float32 rounding
        assert fast[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-5), key


def test_nan_guard_names_epoch_and_term_and_keeps_last_checkpoint(
    lorenz_file, tmp_path, caplog, poisson_nan_after
):
    # 2 train batches + 1 valid batch per epoch: the 7th loss evaluation is in the third epoch,
    # which the log counts as epoch 3
    hp = HParams.from_dict(
        {**TINY_HPARAMS, "reconstruction": {"name": poisson_nan_after, "calls": 6}}
    )
    config = tmp_path / "hp.yaml"
    config.write_text(hp.to_yaml())
    arguments = ["--config", str(config), "--out", str(tmp_path / "run"), "--max-epochs", "5"]
    assert main(["train", "--data", str(lorenz_file), *arguments, "--device", "cpu"]) == 3
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("train loss term 'recon' is nan at epoch 3;")
    assert error.endswith("Try a lower lr, a smaller cell_clip or a stronger gradient_clip.")
    (last,) = read_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").members
    assert len(last.history) == 2 and all(math.isfinite(row["train_loss"]) for row in last.history)
    saved = read_model(tmp_path / "run" / "model.ckpt")  # the diverged run's outputs
    assert saved.diverged.epoch == 3 and saved.diverged.reason == error and saved.epochs == 2


def test_early_stopping_waits_for_ramps_and_a_stopped_run_is_only_delivered_when_asked_again(
    lorenz_file, tmp_path, caplog
):
    # lr ~ 0 and no sampling or dropout: the valid loss never improves, so patience 1 stops as soon
    # as it may
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "lr": 1e-30,
            "variational": False,
            "ic_prior": "null",
            "co_prior": "null",
            "kl_increase_epoch": 2,
            "l2_increase_epoch": 0,
            "early_stopping_patience": 1,
            "valid_smoothing": 1.0,
        }
    )
    train_model([lorenz_file], hp, tmp_path / "run", max_epochs=10, device="cpu")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 4  # ramps end at epoch 2 (the first counted); no better loss at epoch 3
    assert "early stopping at epoch 4" in read_model(tmp_path / "run" / "model.ckpt").stop_reason
    caplog.set_level("INFO", logger="lfads.training")
    before = read_model(tmp_path / "run" / "model.ckpt")
    train_model([lorenz_file], hp, tmp_path / "run", max_epochs=10, device="cpu")
    # a finished run is not trained again: asked again (as by --forcerun), it writes its outputs
    assert "writing its outputs without training again" in caplog.text
    assert "training afresh" not in caplog.text and "resumed" not in caplog.text
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 4
    after = read_model(tmp_path / "run" / "model.ckpt")
    assert after.best_epoch == before.best_epoch and after.stop_reason == before.stop_reason
    assert all(torch.equal(after.state_dict[k], v) for k, v in before.state_dict.items())


def test_external_inputs_and_nan_targets(tmp_path):
    from lfads.training.datamodule import load_session

    path = write_lorenz_prepared(tmp_path / "prepared.h5", n_trials=60)
    with h5py.File(path, "a") as file:
        for split in ("train", "valid", "eval"):
            n = file[f"{split}/encod_data"].shape[0]
            file[f"{split}/ext_input"] = np.ones((n, 20, 2), dtype=np.float32)  # observed bins only
        recon = file["train/recon_data"][()]
        recon[:, 3, :4] = np.nan
        file["train/recon_data"][...] = recon
    session = load_session(path)
    assert session.dims.ext_input_dim == 2
    ext = session.splits["train"].ext_input
    assert ext.shape == (48, 25, 2) and ext[:, :20].eq(1).all() and ext[:, 20:].eq(0).all()
    hp = HParams.from_dict(TINY_HPARAMS)
    with pytest.raises(ValueError, match="NaN \\(unobserved\\) targets; add selective_backprop"):
        train_model([path], hp, tmp_path / "run", max_epochs=1, device="cpu")
    hp = hp.replace(
        train_augmentations=["selective_backprop", "coordinated_dropout"],
        infer_augmentations=["selective_backprop"],
    )
    model_path = train_model([path], hp, tmp_path / "run", max_epochs=2, device="cpu")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert all(
        math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["train_bps"])) for r in rows
    )
    model, _ = load_model(model_path)
    assert model.decoder.generator.input_size == 2 + 2  # co_dim + ext_input_dim


def test_cli_train_and_infer(lorenz_file, tmp_path, caplog):
    config = tmp_path / "hp.yaml"
    config.write_text(HParams.from_dict(TINY_HPARAMS).to_yaml())
    assert (
        main(
            [
                "train",
                "--data",
                str(lorenz_file),
                "--config",
                str(config),
                "--out",
                str(tmp_path / "run"),
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
                "--device",
                "cpu",
                "--max-epochs",
                "2",
            ]
        )
        == 0
    )
    assert (tmp_path / "ckpt" / "last.ckpt").exists() and (tmp_path / "run" / "model.ckpt").exists()
    out = tmp_path / "run" / "inferred.h5"
    assert (
        main(
            [
                "infer",
                "--model",
                str(tmp_path / "run" / "model.ckpt"),
                "--data",
                str(lorenz_file),
                "--out",
                str(out),
                "--samples",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with h5py.File(out, "r") as inferred, h5py.File(lorenz_file, "r") as prepared:
        assert inferred.attrs["n_samples"] == 4 and inferred.attrs["bin_width_ms"] == 20
        for split, n in (("train", 80), ("valid", 20), ("eval", 20)):
            group = inferred[split]
            assert group["rates"].shape == (n, 25, 26) and group["rates"].dtype == np.float32
            assert group["factors"].shape == (n, 25, FAC_DIM)
            assert group["gen_states"].shape == (n, 25, 32)
            assert group["ic_mean"].shape == group["ic_std"].shape == (n, 8)
            assert group["co_mean"].shape == group["co_std"].shape == (n, 25, 2)
            assert (group["rates"][()] > 0).all()
            np.testing.assert_array_equal(
                group["nlb_index"][()], prepared[f"{split}/nlb_index"][()]
            )
    bad = tmp_path / "bad.yaml"
    bad.write_text("gen_dimm: 3\n")
    assert (
        main(
            [
                "train",
                "--data",
                str(lorenz_file),
                "--config",
                str(bad),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "bad.yaml: unknown hyperparameter(s) ['gen_dimm']" in caplog.text


def test_posterior_sample_is_seeded_and_averages(lorenz_file, tmp_path):
    from lfads.evaluation.infer import posterior_sample

    model_path = train_model(
        [lorenz_file], HParams.from_dict(TINY_HPARAMS), tmp_path / "run", max_epochs=1, device="cpu"
    )
    outs = [tmp_path / f"{name}.h5" for name in ("a", "b", "c")]
    posterior_sample(
        model_path, [lorenz_file], [outs[0]], n_samples=3, batch_size=7, device="cpu", seed=1
    )
    posterior_sample(
        model_path,
        [lorenz_file],
        [outs[1]],
        n_samples=3,
        batch_size=7,
        device="cpu",
        seed=1,
        mantissa_bits=23,
    )
    posterior_sample(model_path, [lorenz_file], [outs[2]], n_samples=30, device="cpu", seed=2)
    with h5py.File(outs[0]) as a, h5py.File(outs[1]) as b, h5py.File(outs[2]) as c:
        np.testing.assert_array_equal(a["valid/rates"][()], b["valid/rates"][()])
        # latents are kept to 12 mantissa bits by default (relative error <= 2^-13), exactly with 23
        exact, rounded = b["valid/gen_states"][()], a["valid/gen_states"][()]
        assert 0 < np.max(np.abs(rounded - exact) / np.abs(exact)) <= 2**-13
        assert a.attrs["mantissa_bits"] == 12 and b.attrs["mantissa_bits"] == 23
        # deterministic encoder outputs do not depend on samples or batch size
        np.testing.assert_allclose(
            a["valid/ic_mean"][()], c["valid/ic_mean"][()], rtol=1e-5, atol=1e-6
        )
        assert not np.allclose(a["valid/rates"][()], c["valid/rates"][()])


# -- custom parts from outside the package
# -------------------------------------------------------------
LAPLACE_PLUGIN = '''
"""A Laplace prior on the initial condition, registered from outside the lfads package."""
import torch
from torch.distributions import Laplace, Normal

from lfads.model.priors import Prior
from lfads.model.registry import register_prior


@register_prior("laplace")
class LaplacePrior(Prior):
    def __init__(self, *, dim, n_members=1, scale=0.3):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.full((n_members, dim), float(scale)).log())

    def forward(self, mean, std, random):  # mean, std (members, trials, dim)
        u = mean + std * random.randn(mean.shape[1:], mean)  # each member's own draws
        posterior = Normal(mean, std)
        prior = Laplace(torch.zeros_like(mean), self.log_scale.exp()[:, None])
        kl = posterior.log_prob(u) - prior.log_prob(u)
        return kl.sum(dim=2).mean(dim=1)
'''


def test_custom_laplace_prior_from_a_plugin_module(lorenz_file, tmp_path, monkeypatch, request):
    from lfads.model import registry

    # the plugin registers globally: undo it afterwards, so other tests see only the built-in parts
    monkeypatch.setitem(registry._REGISTERED, "prior", dict(registry._REGISTERED["prior"]))
    request.addfinalizer(lambda: sys.modules.pop("my_laplace_prior", None))
    (tmp_path / "my_laplace_prior.py").write_text(textwrap.dedent(LAPLACE_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "plugins": ["my_laplace_prior"],
            "ic_prior": {"name": "laplace", "scale": 0.5},
        }
    )
    model_path = train_model([lorenz_file], hp, tmp_path / "run", max_epochs=2, device="cpu")
    model, checkpoint = load_model(model_path)
    assert type(model.ic_prior).__name__ == "LaplacePrior"
    assert checkpoint.hparams.plugins == ("my_laplace_prior",)
    assert torch.allclose(model.ic_prior.log_scale.exp(), torch.full((1, 8), 0.5), atol=0.1)
    assert all(float(r["train_kl_ic"]) > 0 for r in read_metrics(tmp_path / "run" / "metrics.csv"))


# -- several sessions ----------------------------------------------------------------------
def test_multi_session_batches_pcr_readin_and_inference(tmp_path):
    from lfads.evaluation.infer import posterior_sample
    from lfads.training.module import LFADSDataModule

    files = [
        write_lorenz_prepared(tmp_path / "s0.h5", n_trials=100, n_heldin=20, n_heldout=6, seed=1),
        write_lorenz_prepared(tmp_path / "s1.h5", n_trials=60, n_heldin=12, n_heldout=4, seed=2),
    ]
    data = LFADSDataModule(files, batch_size=40, seeds=[0, 5])
    data.setup()
    batches = list(data.train_dataloader())
    assert all(len(b) == 2 for b in batches)  # every batch holds both sessions' shares
    assert [len(b[0]) + len(b[1]) for b in batches] == [40, 40, 40, 8]
    assert sum(len(s) for b in batches for s in b.values()) == 80 + 48
    # member-major: (members, trials, bins, neurons); each member in its own order
    assert {tuple(b[1].encod_data.shape[2:]) for b in batches} == {(20, 12)}
    assert not torch.equal(batches[0][0].encod_data[0], batches[0][0].encod_data[1])

    hp = HParams.from_dict({**TINY_HPARAMS, "readin_dim": 10})
    model_path = train_model(files, hp, tmp_path / "run", max_epochs=2, device="cpu")
    model, checkpoint = load_model(model_path)
    assert [tuple(r.weight.shape) for r in model.readins] == [(1, 10, 20), (1, 10, 12)]
    assert model.readin_dim == 10
    assert not any(
        p.requires_grad for r in model.readins for p in r.parameters()
    )  # PCR readins stay frozen
    assert [tuple(r.weight.shape) for r in model.readouts] == [(1, 26, FAC_DIM), (1, 16, FAC_DIM)]
    # the frozen readins are still the PCR start after training
    from lfads.model.readin import pcr_readins, session_averages

    averages = [
        session_averages(s.splits["train"].encod_data.numpy(), s.conditions["train"], [0])
        for s in data.sessions
    ]
    for layer, (weight, _bias) in zip(model.readins, pcr_readins(averages, 10, seed=hp.seed)):
        torch.testing.assert_close(layer.weight[0], torch.from_numpy(weight))
    outs = [tmp_path / "i0.h5", tmp_path / "i1.h5"]
    posterior_sample(model_path, files, outs, n_samples=3, device="cpu")
    with h5py.File(outs[1]) as inferred:
        assert inferred["valid/rates"].shape == (12, 25, 16) and inferred.attrs["session"] == 1
    assert len(checkpoint.data) == 2


# -- resume after a real kill ----------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    data = write_lorenz_prepared(tmp_path / "prepared.h5", n_trials=400)
    config = tmp_path / "hp.yaml"
    config.write_text(
        HParams.from_dict(
            {**TINY_HPARAMS, "gen_dim": 64, "dropout": 0.1, "lr_scheduler": True, "max_epochs": 8}
        ).to_yaml()
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lfads",
            "train",
            "--data",
            str(data),
            "--config",
            str(config),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]

    subprocess.run(command(tmp_path / "whole"), check=True, env=env, cwd=REPO, capture_output=True)
    process = subprocess.Popen(
        command(tmp_path / "killed"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    progress = tmp_path / "killed" / "checkpoints" / "killed.metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (
            progress.exists() and len(read_metrics(progress)) >= 3
        ):  # a checkpoint past epoch 3 is on disk
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, "training ended before it could be killed"
    state = read_training_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    done = len(state.members[0].history)
    assert 3 <= done < 8 and not (tmp_path / "killed" / "model.ckpt").exists()
    resumed = subprocess.run(
        command(tmp_path / "killed"), check=True, env=env, cwd=REPO, capture_output=True, text=True
    )
    assert (
        f"resumed from epoch {done} ({tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}); "
        f"continuing at epoch {done + 1} of 8" in resumed.stderr
    )
    whole = comparable(read_metrics(tmp_path / "whole" / "metrics.csv"))
    killed = comparable(read_metrics(tmp_path / "killed" / "metrics.csv"))
    assert len(whole) == len(killed) == 8
    for a, b in zip(whole, killed):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
