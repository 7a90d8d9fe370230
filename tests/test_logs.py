"""Logs: ISO dates, one line per Lightning message, the failure line, TensorBoard beside the CSV
(scalars, learning rate, figures), and progress lines while infer samples."""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_HPARAMS, environment

from lfads.infra.logs import log_to_file

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (INFO|WARNING|ERROR) \S+: ")


def test_lines_carry_an_iso_date_and_a_failure_points_at_the_traceback_below(tmp_path):
    path = tmp_path / "job.log"
    with pytest.raises(ZeroDivisionError), log_to_file(path):
        logging.getLogger("lfads.test").info("working")
        1 / 0  # noqa: B018
    lines = path.read_text().splitlines()
    assert ISO_LINE.match(lines[0]) and lines[0].endswith("lfads.test: working"), lines[0]
    (failed,) = [i for i, line in enumerate(lines) if "failed" in line]
    assert ISO_LINE.match(lines[failed]) and "the traceback follows" in lines[failed]
    assert lines[failed + 1] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"


TRAIN_IN_A_JOB = """
import sys
from pathlib import Path

from lfads.infra.logs import log_to_file

folder = Path(sys.argv[1])
with log_to_file(folder / "train.log"):
    from lfads.data.toydata import write_lorenz_prepared
    from lfads.model.hparams import HParams
    from lfads.training.train import train_model

    data = write_lorenz_prepared(folder / "prepared.h5", n_trials=60)
    hparams = HParams.from_dict({HPARAMS})
    train_model([data], hparams, folder / "run", max_epochs=2, device="cpu")
"""


@pytest.fixture(scope="module")
def trained_in_a_job(tmp_path_factory) -> Path:
    """A 2-epoch run trained as a workflow script trains (inside log_to_file), in a new process
    (Lightning's loggers are set up on its first import)."""
    folder = tmp_path_factory.mktemp("job")
    script = folder / "train_job.py"
    script.write_text(TRAIN_IN_A_JOB.replace("{HPARAMS}", repr(TINY_HPARAMS)))
    done = subprocess.run(
        [sys.executable, str(script), str(folder)],
        env=environment({"PYTHONPATH": str(REPO)}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr + (folder / "train.log").read_text()
    return folder


@pytest.mark.slow
def test_a_training_job_log_has_each_line_once_with_its_date(trained_in_a_job):
    lines = (trained_in_a_job / "train.log").read_text().splitlines()
    gpu_lines = [line for line in lines if "GPU available" in line]
    assert len(gpu_lines) == 1, gpu_lines  # Lightning's own handler wrote a second, undated one
    assert len([line for line in lines if "epoch 2/2" in line]) == 1
    logged = [line for line in lines if " INFO " in line or " WARNING " in line]
    assert logged and all(ISO_LINE.match(line) for line in logged), logged


@pytest.mark.slow
def test_tensorboard_holds_the_csv_columns_the_learning_rate_and_figures(trained_in_a_job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lfads.training.lightning_trainer import FIGURE_TAG

    events = trained_in_a_job / "run" / "tensorboard"  # the run's own log, one per member
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    with open(trained_in_a_job / "run" / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2
    assert {"lr", "valid/loss", "train/loss", "valid/co_bps"} <= scalars
    lr = accumulator.Scalars("lr")
    assert [event.value for event in lr] == pytest.approx([float(row["lr"]) for row in rows])
    valid_loss = [event.value for event in accumulator.Scalars("valid/loss")]
    assert valid_loss == pytest.approx([float(row["valid_loss"]) for row in rows], rel=1e-6)
    assert [event.step for event in lr] == [1, 2]  # by epoch
    (image,) = accumulator.Images(FIGURE_TAG)  # epoch 1 only: the next is at epoch 101
    assert image.step == 1 and image.width > 300 and image.encoded_image_string[:4] == b"\x89PNG"
    # the HPARAMS tab: the run's hyperparameters with what chose its epoch
    (best,) = accumulator.Scalars("hparam/best_valid_recon_smoothed")
    smoothed = [float(row["valid_recon_smoothed"]) for row in rows]
    assert best.value == pytest.approx(min(smoothed), rel=1e-6)
    assert "_hparams_/session_start_info" in accumulator.PluginTagToContent("hparams")


@pytest.mark.slow
def test_the_figures_change_no_number(tmp_path, monkeypatch):
    """Metrics and weights with TensorBoard's figures equal those of a run without them."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from lfads.data.toydata import write_lorenz_prepared
    from lfads.formats.checkpoints import read_model
    from lfads.model.hparams import HParams
    from lfads.training import lightning_trainer
    from lfads.training.train import train_model

    data = write_lorenz_prepared(tmp_path / "prepared.h5", n_trials=60)
    hparams = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.2})
    monkeypatch.setattr(lightning_trainer, "FIGURE_EVERY_EPOCHS", 1)
    train_model([data], hparams, tmp_path / "figures", max_epochs=2, device="cpu")
    monkeypatch.setattr(lightning_trainer, "_tensorboard", lambda out_dirs: Callback())
    train_model([data], hparams, tmp_path / "plain", max_epochs=2, device="cpu")

    def columns(run):
        with open(tmp_path / run / "metrics.csv") as stream:
            return [
                {k: v for k, v in row.items() if k != "epoch_seconds"}
                for row in csv.DictReader(stream)
            ]

    assert columns("figures") == columns("plain")
    with_figures, plain = (
        read_model(tmp_path / run / "model.ckpt") for run in ("figures", "plain")
    )
    for key, value in with_figures.state_dict.items():
        assert torch.equal(value, plain.state_dict[key]), key


@pytest.mark.slow
def test_infer_logs_progress_per_split(trained_in_a_job, tmp_path, caplog, monkeypatch):
    from lfads.evaluation import infer

    monkeypatch.setattr(infer, "PROGRESS_SECONDS", 0.0)  # a line after every batch
    caplog.set_level(logging.INFO, logger="lfads.evaluation.infer")
    infer.posterior_sample(
        trained_in_a_job / "run" / "model.ckpt",
        [trained_in_a_job / "prepared.h5"],
        [tmp_path / "inferred.h5"],
        n_samples=2,
        batch_size=16,
        device="cpu",
    )
    messages = [record.getMessage() for record in caplog.records]
    eval_lines = [m for m in messages if m.startswith("eval:")]
    assert eval_lines[0].startswith("eval: sampling")
    assert [m.split(" in ")[0] for m in eval_lines[1:]] == [
        f"eval: {done}/{total} trials ({100 * done / total:.0f}%)"
        for total in [int(eval_lines[0].split()[2])]
        for done in [*range(16, total, 16), total]
    ]
    assert any(m.startswith("train: sampling") for m in messages)
