"""The recurrent implementations (rnn_impl fast, reference, compiled) give the same numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_HPARAMS, make_batch

from lfads.model.augmentations import MemberAugmentations
from lfads.model.fused import DecoderLoop, DecoderLoopInputs
from lfads.model.hparams import HParams
from lfads.model.lfads import LFADS, SessionDims
from lfads.model.loops import RNN_IMPLS, recurrent_loops
from lfads.model.members import MemberRandom

CASES = [
    pytest.param({}, 0, id="controller"),
    pytest.param({"co_dim": 0}, 2, id="autonomous-with-external-inputs"),
    pytest.param({"ic_enc_seq_len": 3, "ci_lag": 2}, 3, id="ic-only-bins-lag-2-external-inputs"),
    pytest.param(
        {"variational": False, "ic_prior": "null", "co_prior": "null"}, 0, id="non-variational"
    ),
    pytest.param(
        {"co_prior": "multivariate_student_t", "reconstruction": "gaussian"},
        0,
        id="student-t-gaussian",
    ),
    pytest.param({"ci_enc_dim": TINY_HPARAMS["ic_enc_dim"]}, 0, id="encoders-of-equal-size"),
    pytest.param({"cell_clip": 0.3}, 1, id="states-clipped"),
]


def with_loops(model: LFADS, rnn_impl: str) -> LFADS:
    """The same model (weights, dtype) built with other loops: how a path is switched. Its random
    streams start afresh from the members' seeds."""
    other = LFADS(model.members, model.sessions, rnn_impl=rnn_impl)
    dtype = next(model.parameters()).dtype
    other.to(dtype).load_state_dict(model.state_dict())
    return other.train(model.training)


def loss_and_gradients(model: LFADS, impl: str, batch: dict, seed: int) -> tuple[dict, dict]:
    """Training loss terms and every parameter's gradient of one batch, dropout and sampling on."""
    model = with_loops(model, impl)
    model.train()
    model.zero_grad()
    model.random = MemberRandom([seed] * model.n_members)
    outputs = model(batch, sample_posteriors=True)
    no_augmentations = MemberAugmentations([])
    terms = model.loss(
        batch, outputs, no_augmentations, {s: [] for s in batch}, epoch=3, metrics={}
    )
    terms.loss.sum().backward()
    values = {
        "loss": terms.loss,
        "recon": terms.recon,
        "kl_ic": terms.kl_ic,
        "kl_co": terms.kl_co,
        "factors": outputs[0].factors,
        "gen_states": outputs[0].gen_states,
    }
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach().clone() for k, v in values.items()}, grads


@pytest.mark.parametrize("changes, ext", CASES)
def test_reference_and_fast_paths_give_the_same_loss_and_gradients(changes, ext):
    hp = HParams.from_dict(
        {
            **TINY_HPARAMS,
            "dropout": 0.2,
            "train_augmentations": [],
            "kl_increase_epoch": 1,
            "l2_gen_scale": 0.5,
            "l2_con_scale": 0.5,
            "l2_ic_enc_scale": 0.5,
            "l2_ci_enc_scale": 0.5,
            **changes,
        }
    )
    dims = SessionDims(6, 2, 9, 3, ext)
    torch.manual_seed(0)
    model = LFADS(hp, [dims]).double()
    batch = {0: make_batch(dims, 5)}
    batch[0] = batch[0].replace(
        **{f: getattr(batch[0], f).double() for f in ("encod_data", "recon_data", "ext_input")}
    )
    fast_values, fast_grads = loss_and_gradients(model, "fast", batch, seed=7)
    ref_values, ref_grads = loss_and_gradients(model, "reference", batch, seed=7)
    for name in fast_values:
        torch.testing.assert_close(
            fast_values[name], ref_values[name], rtol=1e-10, atol=1e-12, msg=name
        )
    assert set(fast_grads) == set(ref_grads)
    assert sum(g.abs().sum() for g in fast_grads.values()) > 0
    if model.hparams.cell_clip < 1:  # the clip really acts
        assert (fast_values["gen_states"].abs() == model.hparams.cell_clip).float().mean() > 0.05
    for name in fast_grads:
        torch.testing.assert_close(
            fast_grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name
        )


def test_the_paths_agree_in_float32_within_rounding():
    hp = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.1})
    dims = SessionDims(6, 2, 9, 3)
    torch.manual_seed(0)
    model = LFADS(hp, [dims])
    batch = {0: make_batch(dims, 8)}
    fast_values, fast_grads = loss_and_gradients(model, "fast", batch, seed=3)
    ref_values, ref_grads = loss_and_gradients(model, "reference", batch, seed=3)
    torch.testing.assert_close(fast_values["loss"], ref_values["loss"], rtol=1e-5, atol=1e-6)
    for name in fast_grads:  # float32 rounding: relative to each gradient's scale
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(
            fast_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name
        )


def test_one_posterior_sample_is_identical_on_both_paths():
    """With one sample, the fused and the plain loops draw the same noise and give the same
    posterior average."""
    dims = SessionDims(6, 2, 9, 3)
    torch.manual_seed(0)
    model = LFADS(HParams.from_dict(TINY_HPARAMS), [dims]).eval()
    batch = {0: make_batch(dims, 6)}
    results = {}
    for impl in ("fast", "reference"):  # (each model's streams start at the same seed)
        results[impl] = with_loops(model, impl).posterior_average(batch, n_samples=1)[0]
    for name, value in results["fast"].items():
        torch.testing.assert_close(value, results["reference"][name], msg=name)


@pytest.mark.slow
def test_many_posterior_samples_agree_within_monte_carlo_error():
    dims = SessionDims(6, 2, 9, 3)
    torch.manual_seed(0)
    model = LFADS(
        HParams.from_dict(
            {
                **TINY_HPARAMS,
                "co_prior": {"name": "autoregressive_normal", "tau": 10.0, "noise_variance": 0.1},
            }
        ),
        [dims],
    ).eval()
    batch = {0: make_batch(dims, 6)}
    n = 400
    results = {}
    for impl in ("fast", "reference"):
        sampler = with_loops(model, impl)
        sampler.random = MemberRandom([5 if impl == "fast" else 6])  # independent draws
        results[impl] = sampler.posterior_average(batch, n_samples=n)[0]
    torch.testing.assert_close(results["fast"]["ic_mean"], results["reference"]["ic_mean"])
    # the spread of single samples bounds the error of a mean of n of them
    model.random = MemberRandom([8])
    single = torch.stack(
        [model.posterior_average(batch, n_samples=1)[0]["rates"] for _ in range(50)]
    )
    spread = single.std(0)
    assert spread.mean() > 1e-3  # the samples do differ
    difference = (results["fast"]["rates"] - results["reference"]["rates"]).abs()
    # difference of two independent means: std sqrt(2/n) * spread; 5 sigma, floored for tiny
    # spreads. Rates are skewed (exp of a Gaussian), so the spread of 50 samples underestimates a
    # few elements' std: two seeds of one path differed by more than 5 sigma in 2 of 576.
    assert (difference <= 5 * (2 / n) ** 0.5 * spread + 1e-6).float().mean() > 0.99
    assert difference.max() < 10 * (2 / n) ** 0.5 * spread.max()


def autograd_nodes(output: torch.Tensor) -> set[str]:
    """Names of every node of the autograd graph behind `output`."""
    names, stack, seen = set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [next_node for next_node, _ in node.next_functions]
    return names


def test_the_loops_are_chosen_once_when_the_model_is_built():
    dims = SessionDims(6, 2, 9, 3)
    hp = HParams.from_dict(TINY_HPARAMS)
    reference = LFADS(hp, [dims], rnn_impl="reference")
    assert reference.encoder.loops is reference.decoder.loops is RNN_IMPLS["reference"]
    fast = LFADS(hp, [dims])  # the default
    assert fast.encoder.loops is fast.decoder.loops is RNN_IMPLS["fast"]
    # the weights do not depend on the loops: a state dict moves between them unchanged
    fast.load_state_dict(reference.state_dict())
    assert fast.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in fast.state_dict().items())
    # and each model really runs its own loops
    batch = {0: make_batch(dims, 3)}
    fast_nodes = autograd_nodes(fast(batch)[0].params)
    reference_nodes = autograd_nodes(reference(batch)[0].params)
    assert {"DecoderLoopBackward", "StackedGRUSequenceBackward"} <= fast_nodes
    assert not {"DecoderLoopBackward", "StackedGRUSequenceBackward"} & reference_nodes
    with pytest.raises(ValueError, match=r"rnn_impl: must be one of \['fast', 'reference'"):
        LFADS(hp, [dims], rnn_impl="turbo")
    with pytest.raises(ValueError, match="rnn_impl: must be one of"):
        recurrent_loops("turbo")


@pytest.mark.parametrize("controller", [True, False])
def test_decoder_loop_gradients_by_name_match_finite_differences(controller):
    """The hand-written backward, input by input, against torch.autograd.gradcheck (float64), for
    a pack of two members."""
    g = torch.Generator().manual_seed(0)
    p, batch, n_bins, gen, fac, con, co = 2, 2, 3, 3, 2, 2, 1

    def tensor(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)

    def mask(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) > 0.3) / 0.7

    inputs = DecoderLoopInputs(
        con_zr=tensor(p, batch, n_bins, 2 * con) if controller else None,
        con_n=tensor(p, batch, n_bins, con) if controller else None,
        gen_zr=tensor(p, batch, n_bins, 2 * gen),
        gen_n=tensor(p, batch, n_bins, gen),
        gen_init=tensor(p, batch, gen),
        con_h0=tensor(p, batch, con) if controller else None,
        w_fac_zr=tensor(p, fac, 2 * con) if controller else None,
        w_fac_n=tensor(p, fac, con) if controller else None,
        uc_zr=tensor(p, con, 2 * con) if controller else None,
        uc_n=tensor(p, con, con) if controller else None,
        w_co=tensor(p, con, 2 * co) if controller else None,
        b_co=tensor(p, 2 * co) if controller else None,
        w_u_zr=tensor(p, co if controller else 0, 2 * gen),
        w_u_n=tensor(p, co if controller else 0, gen),
        ug_zr=tensor(p, gen, 2 * gen),
        ug_n=tensor(p, gen, gen),
        w_factor=tensor(p, gen, fac),
        eps=tensor(n_bins, p, batch, co, grad=False) if controller else None,
        factor_masks=mask(n_bins, p, batch, fac) if controller else None,
        gen_masks=mask(n_bins + 1, p, batch, gen),
        clip=float("inf"),
    )
    with_grad = [
        name for name, x in inputs._asdict().items() if torch.is_tensor(x) and x.requires_grad
    ]
    assert len(with_grad) == (17 if controller else 8)

    def loop(*tensors):
        return DecoderLoop.apply(*inputs._replace(**dict(zip(with_grad, tensors))))

    assert torch.autograd.gradcheck(loop, [getattr(inputs, name) for name in with_grad])


@pytest.mark.slow
def test_compiled_path_gives_the_numbers_of_eager():
    """rnn_impl "compiled" (torch.compile of the plain loops; CUDA graphs on a GPU) vs. eager."""
    hp = HParams.from_dict({**TINY_HPARAMS, "dropout": 0.2, "train_augmentations": []})
    # 2 observed bins and 1 forward bin: inductor's compile time grows with the unrolled steps
    # (5 + 2 bins took 205 s on 2 cores, 2 + 1 take 125 s), the paths' numbers do not need more
    dims = SessionDims(6, 2, 2, 1)
    torch.manual_seed(0)
    model = LFADS(hp, [dims])
    batch = {0: make_batch(dims, 8)}
    compiled_values, compiled_grads = loss_and_gradients(model, "compiled", batch, seed=3)
    eager_values, eager_grads = loss_and_gradients(model, "reference", batch, seed=3)
    for name in eager_values:
        torch.testing.assert_close(
            compiled_values[name], eager_values[name], rtol=1e-5, atol=1e-6, msg=name
        )
    assert set(compiled_grads) == set(eager_grads)
    for name in eager_grads:  # float32 rounding: relative to each gradient's scale
        scale = float(eager_grads[name].abs().max())
        torch.testing.assert_close(
            compiled_grads[name], eager_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name
        )
    model.eval()
    averaged = {}
    with torch.no_grad():
        for impl in ("compiled", "fast"):
            averaged[impl] = with_loops(model, impl).posterior_average(batch, n_samples=3)[0][
                "rates"
            ]
    torch.testing.assert_close(averaged["compiled"], averaged["fast"], rtol=1e-5, atol=1e-6)
