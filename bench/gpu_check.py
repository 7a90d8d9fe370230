"""The GPU check (`make gpu-check`, `python -m bench.gpu_check`): one run on a CUDA machine.

In about 8 minutes of wall time on one modern GPU it
1. checks that the fast, reference and compiled paths give the CPU's loss and gradients on CUDA,
   for the same weights and inputs (`equivalence_results`), and that a training checkpoint made
   on CUDA resumes on the CPU and back (`checkpoint_portability`);
2. trains the benchmark's reference config and an MC_Maze-sized config for a few epochs with each
   path and posterior-samples the trained model (`time_training`, `time_sampling`), and packs of
   --packs members (default 1, 4 and 20) of the MC_Maze-sized model (`pack_results`);
3. prints a table and writes one JSON (default results/gpu_check/gpu_check.json) with the
   machine's facts (`environment`) and every figure.

Each part runs in its own process under a time guard: a part still running at its limit
(--part-seconds, or what is left of --budget-seconds) is killed and recorded as "skipped: over
budget" rather than overrunning. A check that did not finish has not passed.

Exit statuses: 0 every check passed; 1 a check failed, did not finish in time or a part crashed
(the JSON is still written and lists which); 2 bad arguments; 3 no CUDA device visible.
`--device cpu --tiny` runs every part on the CPU against itself at tiny sizes, as the tests do:
it checks the check, not the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import harness
from bench.benchmark import N_SAMPLES, REFERENCE_DATA, REFERENCE_HPARAMS
from bench.harness import (
    emit,
    format_figure_table,
    format_pack_table,
    time_pack,
    time_sampling,
    time_training,
)
from lfads.model.priors import MultivariateNormalPrior, NullPrior, Prior

EXIT_PASSED, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 3  # (and 2, argparse's, for bad arguments)
IMPLS = ("fast", "reference", "compiled")

# -- what is compared -------------------------------------------------------------------------
# The float32 tolerances of tests/test_model_paths.py (fast vs. reference in float32): the loss
# within rtol 1e-5, atol 1e-6; each gradient within rtol 1e-4 plus 1e-5 of its largest element.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
GRADIENT_RTOL, GRADIENT_ATOL_OF_SCALE = 1e-4, 1e-5
# The test models' sizes (tests/test_model_parts.py SMALL).
SMALL_SIZES = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=7, co_dim=3, ic_dim=5, gen_dim=12, fac_dim=4)
# Nothing random but the posterior noise, and that drawn on the CPU (`noise_drawn_on_cpu`):
# no dropout, no augmentations, priors with an analytic KL, past the KL and L2 ramps.
EQUIVALENCE_HPARAMS = dict(
    dropout=0.0,
    train_augmentations=[],
    infer_augmentations=[],
    ic_prior="multivariate_normal",
    co_prior="multivariate_normal",
    kl_increase_epoch=1,
    l2_increase_epoch=1,
    l2_ic_enc_scale=0.5,
    l2_ci_enc_scale=0.5,
    l2_gen_scale=0.5,
    l2_con_scale=0.5,
)
EQUIVALENCE_EPOCH = 3  # the epoch the loss is computed for: both ramps at 1
# case -> (model sizes, (n_heldin, n_heldout, n_obs_bins, n_fwd_bins, ext_input_dim), trials)
EQUIVALENCE_CASES = {
    "small": (SMALL_SIZES, (6, 2, 9, 3, 2), 8),  # the test sizes, with external inputs
    "mc_maze": ({}, (137, 45, 35, 10, 0), 32),  # the mc_maze model sizes and data shape
}
EQUIVALENCE_MODES = ("means", "sampled")  # posterior means; posterior samples with CPU noise
COMPILED_CASES = ("small",)  # torch.compile compiles each shape anew: the small case only

# -- checkpoint portability: deterministic, so that a resumed run differs only by rounding ------
PORTABILITY_DATA = dict(
    n_trials=60, n_obs_bins=10, n_fwd_bins=2, n_heldin=12, n_heldout=4, n_eval=0, seed=0
)
PORTABILITY_HPARAMS = dict(
    SMALL_SIZES,
    batch_size=16,
    dropout=0.0,
    train_augmentations=[],
    variational=False,
    ic_prior="null",
    co_prior="null",
    seed=0,
)
# Allowed relative difference of a resumed run's losses from the uninterrupted run's. Not
# bit-equal: the devices round differently and AdamW's first steps turn a rounding difference
# of a near-zero gradient into a step of the learning rate. On the CPU fast vs. reference
# differ by 1e-7 after 3 epochs.
PORTABILITY_RTOL = 1e-3

# -- timings -----------------------------------------------------------------------------------
# MC_Maze at 20 ms: 35 observed + 10 forward bins, 137 held-in of 182 neurons; its 2,295 trials:
# 1,721 to train and validate on (20 % valid), 574 evaluation trials.
MC_MAZE_DATA = dict(
    n_trials=1721, n_obs_bins=35, n_fwd_bins=10, n_heldin=137, n_heldout=45, n_eval=574, seed=0
)
# config -> (data of write_lorenz_prepared, hyperparameters); both the mc_maze model sizes.
TIMING_CONFIGS = {
    "reference": (REFERENCE_DATA, REFERENCE_HPARAMS),
    "mc_maze": (MC_MAZE_DATA, REFERENCE_HPARAMS),
}
TINY_HPARAMS = dict(SMALL_SIZES, batch_size=16, seed=0)
TINY_CONFIGS = {
    "reference": (
        dict(REFERENCE_DATA, n_trials=40, n_obs_bins=8, n_fwd_bins=2, n_heldin=10, n_heldout=4),
        TINY_HPARAMS,
    ),
    "mc_maze": (
        dict(
            MC_MAZE_DATA,
            n_trials=40,
            n_obs_bins=7,
            n_fwd_bins=2,
            n_heldin=12,
            n_heldout=4,
            n_eval=8,
        ),
        TINY_HPARAMS,
    ),
}
# Every figure of one timed path: (key, label in the table, format).
TIMING_FIGURES = (
    ("epoch_seconds_median", "s per epoch (median)", "{:.3f}"),
    ("epoch_seconds_first", "first epoch s", "{:.2f}"),
    ("compile_seconds_estimate", "compile s (first - median)", "{:.1f}"),
    ("train_trials_per_second", "train trials per s", "{:.0f}"),
    ("train_seconds", "training s in all", "{:.1f}"),
    ("peak_gpu_train_gib", "peak GPU GiB training", "{:.2f}"),
    ("peak_rss_train_gib", "peak RSS GiB training", "{:.2f}"),
    ("sampling_seconds", "posterior sampling s", "{:.2f}"),
    ("sampling_first_seconds", "first sampling pass s", "{:.2f}"),
    ("peak_gpu_sampling_gib", "peak GPU GiB sampling", "{:.2f}"),
    ("peak_rss_sampling_gib", "peak RSS GiB sampling", "{:.2f}"),
)


# -- the machine ---------------------------------------------------------------------------------
def environment(device: str) -> dict:
    """Facts of this machine: device name, driver, torch and CUDA versions, GPU and CPU counts,
    and the float32 matmul settings (TF32 would break the equivalence tolerances)."""
    cuda = torch.cuda.is_available()
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "driver": nvidia_driver_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_threads": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def nvidia_driver_version() -> str:
    """The NVIDIA driver version from nvidia-smi, "unknown" without it."""
    try:
        process = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    versions = sorted(set(process.stdout.split()))
    return ", ".join(versions) if process.returncode == 0 and versions else "unknown"


def no_cuda_line() -> str:
    """The one line printed without a CUDA device."""
    build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"gpu_check: no CUDA device visible (torch {torch.__version__}, {build}); nothing checked. "
        "Run it on a GPU machine (`make install TORCH_SPEC=torch` installs a CUDA build)."
    )


# -- 1a. the paths on the device against the CPU fast path ----------------------------------------
@dataclass
class LossAndGradients:
    loss: float
    gradients: dict[str, torch.Tensor]  # parameter name -> gradient, on the CPU


class NoiseFromCPU(Prior):
    """A Gaussian prior whose standard noise is drawn on the CPU from `generator`, then moved to the
    model's device: the same draws on every device, so that sampled losses can be compared."""

    def __init__(self, prior: Prior, generator: torch.Generator):
        super().__init__()
        self.prior, self.generator = prior, generator

    def standard_noise(self, shape, like: torch.Tensor, random) -> torch.Tensor:
        size = (like.shape[0], *shape)  # (members, ...)
        noise = torch.randn(size, generator=self.generator, dtype=like.dtype)
        return noise.to(like.device)

    def forward(self, mean: torch.Tensor, std: torch.Tensor, random) -> torch.Tensor:
        return self.prior(mean, std, random)


@contextmanager
def noise_drawn_on_cpu(model, seed: int) -> Iterator[None]:
    """While inside: the model's posterior noise comes from a CPU generator seeded with `seed`.

    Every draw of a forward pass goes through `Prior.standard_noise` (the IC sample, then the
    decoder's u_t noise), so wrapping both priors is enough when dropout and augmentations are
    off and the KL is analytic: multivariate_normal priors (or null ones, which draw nothing).
    """
    generator = torch.Generator().manual_seed(seed)
    priors = model.ic_prior, model.co_prior
    wrapped = []
    for prior in priors:
        if isinstance(prior, NullPrior):
            wrapped.append(prior)
        elif isinstance(prior, MultivariateNormalPrior):
            wrapped.append(NoiseFromCPU(prior, generator))
        else:  # its KL or its samples would draw on the device
            raise ValueError(
                f"{type(prior).__name__}: the sampled comparison needs multivariate_normal priors"
            )
    model.ic_prior, model.co_prior = wrapped
    try:
        yield
    finally:
        model.ic_prior, model.co_prior = priors


def loss_and_gradients(model, batch: dict, noise_seed: int | None) -> LossAndGradients:
    """Training loss of one batch and the gradient of every parameter, brought to the CPU.

    noise_seed None: posterior means; else posterior samples with noise drawn on the CPU.
    """
    from lfads.model.augmentations import MemberAugmentations

    parameters = dict(model.named_parameters())  # (names before any prior is wrapped)
    model.train()
    model.zero_grad()
    with noise_drawn_on_cpu(model, noise_seed) if noise_seed is not None else nullcontext():
        outputs = model(batch, sample_posteriors=noise_seed is not None)
        memos = {session: [] for session in batch}
        none = MemberAugmentations([])
        terms = model.loss(batch, outputs, none, memos, EQUIVALENCE_EPOCH, metrics={})
        terms.loss.sum().backward()
    gradients = {
        name: p.grad.detach().cpu().clone() for name, p in parameters.items() if p.grad is not None
    }
    return LossAndGradients(float(terms.loss.sum().detach().cpu()), gradients)


def compare(reference: LossAndGradients, candidate: LossAndGradients) -> dict:
    """How far `candidate` is from `reference`, as shares of the float32 tolerances (<= 1 passes).

    loss: |difference| / (LOSS_ATOL + LOSS_RTOL |reference|); each gradient element:
    |difference| / (GRADIENT_RTOL |reference| + GRADIENT_ATOL_OF_SCALE max |reference|), the
    largest over all elements of all parameters. NaN, a missing gradient or an extra one fails.
    """
    loss_error = abs(candidate.loss - reference.loss)
    loss_used = loss_error / (LOSS_ATOL + LOSS_RTOL * abs(reference.loss))
    missing = sorted(set(reference.gradients) ^ set(candidate.gradients))
    used_by_name = [(0.0, "")]
    for name, expected in reference.gradients.items():
        if name not in candidate.gradients or expected.numel() == 0:
            continue
        expected = expected.double()
        difference = (candidate.gradients[name].double() - expected).abs()
        allowed = GRADIENT_RTOL * expected.abs() + GRADIENT_ATOL_OF_SCALE * expected.abs().max()
        used = torch.where(difference == 0, 0.0, difference / allowed)  # x / 0 = inf: fails
        used_by_name.append((math.nan if used.isnan().any() else float(used.max()), name))
    # the largest share, a NaN before any number
    worst_used, worst_name = max(used_by_name, key=lambda pair: (math.isnan(pair[0]), pair[0]))
    passed = (
        not missing
        and math.isfinite(loss_used)
        and loss_used <= 1
        and math.isfinite(worst_used)
        and worst_used <= 1
    )
    return {
        "loss": reference.loss,
        "loss_error": loss_error,
        "loss_tolerance_used": loss_used,
        "gradient_tolerance_used": worst_used,
        "worst_gradient": worst_name,
        "gradients_compared": len(set(reference.gradients) & set(candidate.gradients)),
        "mismatched_gradient_names": missing,
        "passed": passed,
    }


def equivalence_model(case: str, seed: int = 0):
    """(LFADS fast path on the CPU, its batch) of an EQUIVALENCE_CASES case; weights seeded."""
    from lfads.model.batch import SessionBatch
    from lfads.model.hparams import HParams
    from lfads.model.lfads import LFADS, SessionDims

    sizes, shape, n_trials = EQUIVALENCE_CASES[case]
    dims = SessionDims(*shape)
    hparams = HParams.from_dict({**sizes, **EQUIVALENCE_HPARAMS})
    model = LFADS(hparams.replace(seed=seed), [dims], rnn_impl="fast")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.poisson(
        torch.full((n_trials, dims.n_recon_bins, dims.n_neurons), 0.5), generator=generator
    )
    batch = SessionBatch(
        encod_data=counts[:, : dims.n_obs_bins, : dims.n_heldin].contiguous(),
        recon_data=counts,
        ext_input=torch.randn(n_trials, dims.n_recon_bins, dims.ext_input_dim, generator=generator),
    )
    return model, {0: batch.expand_members(1)}


def on_device(model, rnn_impl: str, device: str):
    """A copy of `model` (the same weights) built with `rnn_impl`, on `device`."""
    from lfads.model.lfads import LFADS

    copy = LFADS(model.members, model.sessions, rnn_impl=rnn_impl)
    copy.load_state_dict(model.state_dict())
    return copy.to(device)


def equivalence_results(
    device: str, impls: list[str], cases: list[str], seed: int = 0
) -> Iterator[tuple[str, dict]]:
    """("equivalence/<impl>/<case>/<mode>", comparison) for every impl, case and mode: each path
    on `device` against the fast path on the CPU, the same weights, batch and noise (`compare`)."""
    for case in cases:
        cpu_model, batch = equivalence_model(case, seed)
        device_batch = {s: b.to(device) for s, b in batch.items()}
        for mode in EQUIVALENCE_MODES:
            noise_seed = seed + 1 if mode == "sampled" else None
            reference = loss_and_gradients(cpu_model, batch, noise_seed)
            if not any(float(g.abs().sum()) > 0 for g in reference.gradients.values()):
                raise RuntimeError(f"equivalence {case}/{mode}: every CPU gradient is zero")
            for impl in impls:
                model = on_device(cpu_model, impl, device)
                candidate = loss_and_gradients(model, device_batch, noise_seed)
                yield f"equivalence/{impl}/{case}/{mode}", compare(reference, candidate)


# -- 1b. a training checkpoint moves between devices ---------------------------------------------
def checkpoint_portability(device: str, work: Path) -> Iterator[tuple[str, dict]]:
    """Train PORTABILITY_HPARAMS 2 epochs on one device and resume on the other for a 3rd, both
    ways; the resumed run's losses against an uninterrupted 3-epoch run on the first device.

    Yields ("portability/device_to_cpu" and "portability/cpu_to_device", result). Passes when
    the epochs continue (0, 1, 2), the history of the first 2 is the checkpoint's (their
    epoch_seconds are the first device's own: a run that started afresh would have new ones),
    every loss is finite and each is within PORTABILITY_RTOL of the uninterrupted run's;
    "problems" says what failed.
    """
    from lfads.data.toydata import write_lorenz_prepared
    from lfads.formats.metrics import EPOCH, EPOCH_SECONDS, TRAIN_LOSS, VALID_LOSS, read_metrics_csv
    from lfads.model.hparams import HParams
    from lfads.training.train import train_model

    work.mkdir(parents=True, exist_ok=True)
    data = write_lorenz_prepared(work / "portability.h5", **PORTABILITY_DATA)
    hparams = HParams.from_dict({**PORTABILITY_HPARAMS, "max_epochs": 3})

    def train(run: str, on: str, epochs: int):
        out = work / run
        train_model(
            [data], hparams, out, checkpoint_dir=out / "checkpoints", device=on, max_epochs=epochs
        )
        return read_metrics_csv(out / "metrics.csv")

    uninterrupted = {on: train(f"{on}-3-epochs", on, 3) for on in dict.fromkeys((device, "cpu"))}
    for key, first, second in (("device_to_cpu", device, "cpu"), ("cpu_to_device", "cpu", device)):
        run = f"{key}-{first}-2-epochs-then-{second}"
        two_epochs = train(run, first, 2)
        resumed = train(run, second, 3)
        expected = uninterrupted[first]
        losses = {
            column: [float(v) for v in resumed[column]] for column in (TRAIN_LOSS, VALID_LOSS)
        }
        difference = max(
            abs(value - float(other)) / abs(float(other))
            for column, values in losses.items()
            for value, other in zip(values, expected[column])
        )
        epochs = [int(e) for e in resumed[EPOCH]]
        problems = []
        if epochs != [0, 1, 2]:
            problems.append(f"epochs {epochs}, expected [0, 1, 2]")
        if list(resumed[EPOCH_SECONDS][:2]) != list(two_epochs[EPOCH_SECONDS]):
            problems.append("the first 2 epochs are not the checkpoint's: it started afresh")
        if not all(math.isfinite(v) for values in losses.values() for v in values):
            problems.append("a loss is not finite")
        if not difference <= PORTABILITY_RTOL:
            problems.append(
                f"losses differ by {difference:.2g} (relative), over {PORTABILITY_RTOL}"
            )
        yield (
            f"portability/{key}",
            {
                "first_device": first,
                "second_device": second,
                "epochs": epochs,
                **losses,
                "uninterrupted_train_loss": [float(v) for v in expected[TRAIN_LOSS]],
                "uninterrupted_valid_loss": [float(v) for v in expected[VALID_LOSS]],
                "largest_relative_difference": difference,
                "allowed_relative_difference": PORTABILITY_RTOL,
                "problems": problems,
                "passed": not problems,
            },
        )


# -- 2. timings ----------------------------------------------------------------------------------
def pack_results(spec: dict, device: str) -> Iterator[tuple[str, dict]]:
    """("packs/<members>", `bench.harness.time_pack`) for each pack size of the spec,
    largest last: packs of the MC_Maze config's model, each member its own seed and dropout."""
    for members in spec["sizes"]:
        yield (
            f"packs/{members}",
            time_pack(
                Path(spec["data"]),
                Path(spec["work"]) / f"pack{members}",
                spec["hparams"],
                members,
                spec["epochs"],
                device,
                n_samples=spec["n_samples"],
            ),
        )


def timing_results(spec: dict, device: str) -> Iterator[tuple[str, dict]]:
    """("timing/<config>/<impl>/train", ...) then (".../sample", ...) of one worker spec."""
    key = f"timing/{spec['config']}/{spec['impl']}"
    data, run_dir = Path(spec["data"]), Path(spec["run_dir"])
    yield (
        f"{key}/train",
        time_training(data, run_dir, spec["hparams"], spec["impl"], spec["epochs"], device),
    )
    yield (
        f"{key}/sample",
        time_sampling(data, run_dir / "model.ckpt", spec["impl"], spec["n_samples"], device)[0],
    )


# -- the parts, each in its own process ----------------------------------------------------------
@dataclass
class Part:
    """One worker process: what it runs (`spec`) and the result keys it should print."""

    name: str  # for messages
    spec: dict  # kind: equivalence, portability or timing, and its arguments
    keys: list[str]
    is_check: bool  # a check must pass; a timing is a measurement
    compiled: bool = False  # of the compiled path (left out by --skip-compiled)


def plan_parts(args: argparse.Namespace, work: Path, data: dict[str, Path]) -> list[Part]:
    """The parts in the order they run: the checks first, compiled last (it compiles slowly)."""
    plain = [impl for impl in IMPLS if impl != "compiled"]
    cases = ["small"] if args.tiny else list(EQUIVALENCE_CASES)

    def equivalence(impls: list[str], cases: list[str]) -> Part:
        keys = [f"equivalence/{i}/{c}/{m}" for i in impls for c in cases for m in EQUIVALENCE_MODES]
        spec = {"kind": "equivalence", "impls": impls, "cases": cases}
        name = f"equivalence of {', '.join(impls)}"
        return Part(name, spec, keys, is_check=True, compiled="compiled" in impls)

    def timing(config: str, impl: str) -> Part:
        spec = {
            "kind": "timing",
            "config": config,
            "impl": impl,
            "data": str(data[config]),
            "run_dir": str(work / f"run-{config}-{impl}"),
            "hparams": configs(args.tiny)[config][1],
            "epochs": args.epochs,
            "n_samples": args.samples,
        }
        keys = [f"timing/{config}/{impl}/{p}" for p in ("train", "sample")]
        name = f"timing of {impl} on the {config} config"
        return Part(name, spec, keys, is_check=False, compiled=impl == "compiled")

    packs = Part(
        f"timing of packs of {', '.join(map(str, args.packs))}",
        {
            "kind": "packs",
            "sizes": list(args.packs),
            "data": str(data["mc_maze"]),
            "work": str(work / "packs"),
            "hparams": configs(args.tiny)["mc_maze"][1],
            "epochs": args.epochs,
            "n_samples": args.samples,
        },
        [f"packs/{members}" for members in args.packs],
        is_check=False,
    )
    portability = Part(
        "checkpoint portability",
        {"kind": "portability", "work": str(work / "portability")},
        ["portability/device_to_cpu", "portability/cpu_to_device"],
        is_check=True,
    )
    return [
        equivalence(plain, cases),
        portability,
        equivalence(["compiled"], [c for c in cases if c in COMPILED_CASES]),
        *[timing(config, impl) for impl in plain for config in TIMING_CONFIGS],
        packs,
        *[timing(config, "compiled") for config in TIMING_CONFIGS],
    ]


def configs(tiny: bool) -> dict[str, tuple[dict, dict]]:
    return TINY_CONFIGS if tiny else TIMING_CONFIGS


def run_part(part: Part, args: argparse.Namespace, timeout: float) -> tuple[dict, str]:
    """Run `part` in a fresh interpreter for at most `timeout` seconds (bench.harness)."""
    return harness.run_part(
        ["-m", "bench.gpu_check", "--device", args.device, "--threads", str(args.threads)]
        + ["--worker", json.dumps(part.spec)],
        timeout,
    )


def worker(spec: dict, device: str) -> int:
    """Run one part in this process and print each result as it comes."""
    if spec["kind"] == "equivalence":
        results = equivalence_results(device, spec["impls"], spec["cases"])
    elif spec["kind"] == "portability":
        results = checkpoint_portability(device, Path(spec["work"]))
    elif spec["kind"] == "packs":
        results = pack_results(spec, device)
    else:
        results = timing_results(spec, device)
    for key, result in results:
        emit(key, result)
    return 0


# -- the driver ----------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> dict:
    """Every part within the budget -> the report (`build_report`)."""
    from lfads.data.toydata import write_lorenz_prepared

    start = time.monotonic()
    out = Path(args.out)
    work = out.parent / f"{out.stem}_work"
    shutil.rmtree(work, ignore_errors=True)  # checkpoints left there would be resumed
    work.mkdir(parents=True)
    data = {
        config: write_lorenz_prepared(work / f"{config}.h5", **config_data)
        for config, (config_data, _) in configs(args.tiny).items()
    }
    parts = plan_parts(args, work, data)
    results: dict[str, dict] = {}
    problems: dict[str, str] = {}  # result key -> why it has no result
    failures = []
    for part in parts:
        left = args.budget_seconds - (time.monotonic() - start)
        if part.compiled and args.skip_compiled:
            found, problem = {}, "skipped: --skip-compiled"
        elif left < 10:
            found, problem = {}, "skipped: over budget"
        else:
            found, problem = run_part(part, args, min(args.part_seconds, left))
        results.update(found)
        problems.update({key: problem or "missing" for key in part.keys if key not in found})
        if problem.startswith("failed"):
            failures.append(f"{part.name}: {problem}")
        for key in part.keys if part.is_check else ():
            if key in results and not results[key]["passed"]:
                failures.append(f"{key}: {why_failed(results[key])}")
            elif key not in results and not problem.startswith(("failed", "skipped: --skip")):
                failures.append(f"{key}: {problems[key]} (not checked)")
    keys = [key for part in parts for key in part.keys]
    return build_report(args, keys, results, problems, failures, time.monotonic() - start)


def why_failed(result: dict) -> str:
    """A failed check's result in a few words."""
    if "problems" in result:
        return "; ".join(result["problems"])
    names = result["mismatched_gradient_names"]
    return (
        f"loss {result['loss_tolerance_used']:.3g} of its tolerance, gradients "
        f"{result['gradient_tolerance_used']:.3g} (worst: {result['worst_gradient']})"
        + (f"; gradients of only one side: {names}" if names else "")
    )


def build_report(
    args: argparse.Namespace,
    keys: list[str],
    results: dict[str, dict],
    problems: dict[str, str],
    failures: list[str],
    wall_seconds: float,
) -> dict:
    """The JSON's content. Every planned key has an entry; one without a result holds its
    status ("skipped: over budget", "skipped: --skip-compiled", "failed (exit 1): ...")."""
    equivalence: dict[str, dict] = {}
    portability: dict[str, dict] = {}
    timings: dict[str, dict] = {}
    packs: dict[str, dict] = {}
    for key in keys:
        found = results.get(key) or {"status": problems.get(key, "missing"), "passed": False}
        kind, *names = key.split("/")
        if kind == "packs":
            packs[names[0]] = results.get(key, {"status": problems.get(key, "missing")})
        elif kind == "equivalence":
            impl, case, mode = names
            equivalence.setdefault(impl, {})[f"{case}/{mode}"] = found
        elif kind == "portability":
            portability[names[0]] = found
        else:
            config, impl, _ = names
            timings.setdefault(config, {}).setdefault(impl, {}).update(
                results.get(key, {"status": problems.get(key, "missing")})
            )
    for paths in timings.values():
        for impl, found in paths.items():
            found.setdefault("status", "measured")
            paths[impl] = {name: found.get(name) for name, _, _ in TIMING_FIGURES} | found
    return {
        "passed": not failures,
        "failures": failures,
        "environment": environment(args.device),
        "settings": {
            "device": args.device,
            "tiny": args.tiny,
            "epochs": args.epochs,
            "posterior_samples": args.samples,
            "skip_compiled": args.skip_compiled,
            "threads": args.threads or torch.get_num_threads(),
            "budget_seconds": args.budget_seconds,
            "part_seconds": args.part_seconds,
            "packs": list(args.packs),
        },
        "configs": {
            config: {"data": config_data, "hparams": {**hparams, "max_epochs": args.epochs}}
            for config, (config_data, hparams) in configs(args.tiny).items()
        },
        "equivalence": {
            "against": "the fast path on the CPU, same weights, batch and posterior noise",
            "tolerances": {
                "loss_rtol": LOSS_RTOL,
                "loss_atol": LOSS_ATOL,
                "gradient_rtol": GRADIENT_RTOL,
                "gradient_atol_of_largest": GRADIENT_ATOL_OF_SCALE,
            },
            "paths": equivalence,
        },
        "portability": portability,
        "timings": timings,
        "packs": packs,
        "wall_seconds": wall_seconds,
    }


def write_report(path: Path, report: dict) -> None:
    """Write the report as JSON (atomically). Missing figures are null; a NaN or infinite
    number (a failed comparison's) is written as the string "nan", "inf" or "-inf"."""
    from lfads.infra.io import write_text

    def plain(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(plain(report), indent=1, allow_nan=False) + "\n")


def format_report(report: dict) -> str:
    """The printed summary: the machine, the checks, a table of the timings, the verdict."""
    env, settings = report["environment"], report["settings"]
    lines = [
        f"LFADS GPU check on {env['device']}: {env['device_name']} (driver {env['driver']}), "
        f"torch {env['torch']}, CUDA {env['cuda']}, {env['gpu_count']} GPU(s), "
        f"{env['cpu_threads']} CPU threads; {report['wall_seconds']:.0f} s of "
        f"{settings['budget_seconds']:.0f}",
        "",
        "equivalence against the fast path on the CPU (share of the float32 tolerance used):",
        f"{'path':11}{'case':18}{'loss':>8}{'gradients':>11}  {'worst gradient':40}status",
    ]
    for impl, cases in report["equivalence"]["paths"].items():
        for case, found in cases.items():
            if "loss_tolerance_used" not in found:
                lines.append(f"{impl:11}{case:18}{'':19}  {'':40}{found['status']}")
                continue
            lines.append(
                f"{impl:11}{case:18}{found['loss_tolerance_used']:>8.3f}"
                f"{found['gradient_tolerance_used']:>11.3f}  {found['worst_gradient']:40}"
                + ("passed" if found["passed"] else "FAILED")
            )
    lines += ["", "checkpoint portability (2 epochs, then a 3rd resumed on the other device):"]
    for found in report["portability"].values():
        if "epochs" not in found:
            lines.append(f"  {found['status']}")
            continue
        lines.append(
            f"  {found['first_device']} then {found['second_device']}: epochs {found['epochs']}, "
            f"largest relative loss difference {found['largest_relative_difference']:.1e} "
            f"(allowed {found['allowed_relative_difference']:.0e}) "
            + ("passed" if found["passed"] else "FAILED")
        )
    timings = report["timings"]
    columns = [(config, impl) for config in timings for impl in timings[config]]
    lines += [
        "",
        f"timings: {settings['epochs']} epochs, {settings['posterior_samples']} posterior samples",
        *format_figure_table(
            [[config for config, _ in columns], [impl for _, impl in columns]],
            [timings[config][impl] for config, impl in columns],
            TIMING_FIGURES,
        ),
    ]
    for config, impl in columns:
        if timings[config][impl]["status"] != "measured":
            lines.append(f"  {config} {impl}: {timings[config][impl]['status']}")
    lines += ["", "packs of the mc_maze config (each member its own seed and dropout):"]
    lines += format_pack_table({int(size): found for size, found in report["packs"].items()})
    lines.append("")
    if report["passed"]:
        lines.append("PASSED: every check")
    else:
        lines += ["FAILED:"] + [f"  {failure}" for failure in report["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="results/gpu_check/gpu_check.json", help="the JSON")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (tests, smoke runs)")
    parser.add_argument("--epochs", type=int, help="epochs per timed run (default 10; tiny 2)")
    parser.add_argument(
        "--samples", type=int, help=f"posterior samples (default {N_SAMPLES}; tiny 2)"
    )
    parser.add_argument("--skip-compiled", action="store_true", help="leave the compiled path out")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--budget-seconds", type=float, default=480.0, help="wall-clock limit of the whole check"
    )
    parser.add_argument(
        "--part-seconds", type=float, default=150.0, help="wall-clock limit of one part"
    )
    parser.add_argument(
        "--packs",
        type=lambda text: tuple(int(size) for size in text.split(",")),
        default=(1, 4, 20),
        help="pack sizes timed on the mc_maze config (default 1,4,20)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.tiny else 10
    if args.samples is None:
        args.samples = 2 if args.tiny else N_SAMPLES
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first epoch is a warm-up)")
    if args.samples < 1:
        parser.error("--samples: at least 1")
    if args.budget_seconds <= 0 or args.part_seconds <= 0:
        parser.error("--budget-seconds and --part-seconds: must be > 0")
    if args.threads < 0:
        parser.error("--threads: must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(no_cuda_line(), file=sys.stderr)
        return EXIT_NO_CUDA
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker is not None:
        return worker(json.loads(args.worker), args.device)
    report = run_check(args)
    write_report(Path(args.out), report)
    print(format_report(report))
    print(f"\nwritten: {args.out}")
    return EXIT_PASSED if report["passed"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
